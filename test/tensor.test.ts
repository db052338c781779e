// Tensors (lib/core/tensor.ts): data kept in the backend between calls. A cell and a stack on tensors give
// exactly what they give on typed arrays (the same native code on the same data), tensors between the
// layers of a stack stay inside the backend and are freed, and bad input is a coded error.
import t from 'tap';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { backendInfo, Random, StackedLSTM, synchronize, Tensor, tensor, tensorMemory, WeightNormLSTMCell, zeros } from '../lib/index';
import { addon } from '../lib/core/native';
import { randomArray } from './helpers';

const exact = (t: Tap.Test, actual: ArrayLike<number>, expected: ArrayLike<number>, what: string) =>
  t.same(Array.from(actual), Array.from(expected), what);

t.test('a tensor holds a copy of its values until read, in its dtype and shape', async (t) => {
  const a = tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  t.equal(a.dtype, 'float32');
  t.same(a.shape, [2, 3]);
  t.equal(a.size, 6);
  t.equal(a.deviceName, 'cpu');
  t.ok(a.read() instanceof Float32Array, 'read() gives a typed array of the dtype');
  exact(t, a.read(), [1, 2, 3, 4, 5, 6], 'read() gives the values');
  t.same(a.toArray(), [[1, 2, 3], [4, 5, 6]], 'toArray() nests by the shape');
  const source = Float64Array.of(0.1, 0.2);
  const b = tensor(source, [2]);
  t.equal(b.dtype, 'float64', 'a Float64Array gives a float64 tensor');
  source[0] = 9;
  t.equal(b.read()[0], 0.1, 'the tensor copied its values');
  b.write(Float64Array.of(3, 4));
  exact(t, b.read(), [3, 4], 'write() replaces the values');
  exact(t, zeros([2, 2], { dtype: 'float64' }).read(), [0, 0, 0, 0], 'zeros()');
  t.same(tensor([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]).toArray(), [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], 'three dimensions');
});

t.test('bad input to tensors is a coded error', async (t) => {
  t.throws(() => tensor([1, NaN], [2]), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'NaN');
  t.throws(() => tensor([1, 2, 3], [2, 2]), { code: 'ERR_WNLSTM_SHAPE' }, 'values that do not fill the shape');
  t.throws(() => tensor([1, 2], [2, 0]), { code: 'ERR_WNLSTM_SHAPE' }, 'a zero dimension');
  t.throws(() => tensor([1, 2], [1.5]), { code: 'ERR_WNLSTM_SHAPE' }, 'a fractional dimension');
  t.throws(() => zeros([2 ** 20, 2 ** 20]), { code: 'ERR_WNLSTM_SIZE' }, 'an absurd size');
  t.throws(() => tensor('12' as never, [2]), { code: 'ERR_WNLSTM_TYPE' }, 'values that are not numbers');
  t.throws(() => zeros([2], { dtype: 'int8' as never }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown dtype');
  t.throws(() => zeros([2], { backend: 'tpu' as never }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown backend');
  t.throws(() => zeros([2], { device: 1 }), { code: 'ERR_WNLSTM_CONFIG' }, 'a CPU device other than 0');
  if (!backendInfo().cuda.available) {
    t.throws(() => zeros([2], { backend: 'cuda' }), { code: 'ERR_WNLSTM_BACKEND_UNAVAILABLE' }, 'CUDA without a device');
    t.throws(() => synchronize({ backend: 'cuda' }), { code: 'ERR_WNLSTM_BACKEND_UNAVAILABLE' }, 'synchronize() on CUDA without a device');
  }
  synchronize();  // the CPU: nothing to wait for
  t.throws(() => synchronize({ device: -1 }), { code: 'ERR_WNLSTM_CONFIG' }, 'synchronize() on a bad device');
  const a = zeros([2]);
  t.throws(() => a.write(Float64Array.of(1, 2)), { code: 'ERR_WNLSTM_TYPE' }, 'write() of another dtype');
  t.throws(() => a.write(Float32Array.of(1, 2, 3)), { code: 'ERR_WNLSTM_SHAPE' }, 'write() of another length');
  t.throws(() => a.write(Float32Array.of(1, Infinity)), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'write() of infinity');
  exact(t, a.read(), [0, 0], 'failed writes changed nothing');
  a.dispose();
  t.ok(a.disposed);
  t.throws(() => a.read(), { code: 'ERR_WNLSTM_DISPOSED' }, 'read() after dispose()');
  a.dispose(); // twice is fine
});

t.test('a cell on tensors gives exactly what it gives on typed arrays: forward, state, backward, gradients', async (t) => {
  for (const dtype of ['float64', 'float32'] as const) {
    const Arr = dtype === 'float64' ? Float64Array : Float32Array;
    const H = 5, I = 3, P = 4, T = 4, B = 3;
    const make = () => new WeightNormLSTMCell(H, { inputSize: I, numProj: P, usePeepholes: true, cellClip: 2, seed: 7, dtype });
    const arrays = make(), tensors = make();
    const rng = new Random(3);
    const x = randomArray(rng, T * B * I, 1, Arr), c0 = randomArray(rng, B * H, 0.5, Arr), h0 = randomArray(rng, B * P, 0.5, Arr);
    const dy = randomArray(rng, T * B * P, 1, Arr), dc = randomArray(rng, B * H, 0.5, Arr);
    const sequenceLength = Int32Array.of(4, 2, 0);
    const a = arrays.forward(x, { batchSize: B, initialState: { c: c0, h: h0 }, sequenceLength });
    const b = tensors.forward(tensor(x, [T, B, I]), { initialState: { c: tensor(c0, [B, H]), h: tensor(h0, [B, P]) }, sequenceLength });
    t.same(b.outputs.shape, [T, B, P], `${dtype}: outputs [steps, batch, outputSize]`);
    exact(t, b.outputs.read(), a.outputs, `${dtype}: outputs`);
    exact(t, b.state.c.read(), a.state.c, `${dtype}: final c`);
    exact(t, b.state.h.read(), a.state.h, `${dtype}: final h`);
    const ga = arrays.backward(dy, { c: dc });
    const gb = tensors.backward(tensor(dy, [T, B, P]), { c: tensor(dc, [B, H]) });
    t.same(gb.dInputs.shape, [T, B, I]);
    exact(t, gb.dInputs.read(), ga.dInputs, `${dtype}: d inputs`);
    exact(t, gb.dInitialState.c.read(), ga.dInitialState.c, `${dtype}: d initial c`);
    exact(t, gb.dInitialState.h.read(), ga.dInitialState.h, `${dtype}: d initial h`);
    for (const name of Object.keys(ga.grads)) exact(t, gb.grads[name], ga.grads[name], `${dtype}: d ${name}`);
    exact(t, tensors.parameters()[0].grad, arrays.parameters()[0].grad, `${dtype}: the accumulated gradient the optimizers see`);

    const c = await tensors.forwardAsync(tensor(x, [T, B, I]), { initialState: { c: tensor(c0, [B, H]), h: tensor(h0, [B, P]) }, sequenceLength });
    exact(t, c.outputs.read(), a.outputs, `${dtype}: forwardAsync on tensors`);
    const gc = await tensors.backwardAsync(tensor(dy, [T, B, P]), { c: tensor(dc, [B, H]) });
    exact(t, gc.dInputs.read(), ga.dInputs, `${dtype}: backwardAsync on tensors`);
    const inference = tensors.forward(tensor(x, [T, B, I]), { initialState: { c: tensor(c0, [B, H]), h: tensor(h0, [B, P]) }, sequenceLength, training: false });
    exact(t, inference.outputs.read(), a.outputs, `${dtype}: inference`);
    arrays.dispose();
    tensors.dispose();
  }
});

t.test('bad tensors given to a cell are coded errors, and the cell stays usable', async (t) => {
  const cell = new WeightNormLSTMCell(4, { inputSize: 3, seed: 1 });
  const x = zeros([2, 2, 3]);
  t.throws(() => cell.forward(zeros([4, 3])), { code: 'ERR_WNLSTM_SHAPE' }, 'inputs not [steps, batch, inputSize]');
  t.throws(() => cell.forward(zeros([2, 2, 5])), { code: 'ERR_WNLSTM_SHAPE' }, 'inputs of another width');
  t.throws(() => cell.forward(zeros([2, 2, 3], { dtype: 'float64' })), { code: 'ERR_WNLSTM_TYPE' }, 'another dtype');
  t.throws(() => cell.forward(x, { initialState: { c: zeros([3, 4]), h: zeros([2, 4]) } }), { code: 'ERR_WNLSTM_SHAPE' }, 'a state of another batch');
  t.throws(() => cell.forward(x, { initialState: { c: new Float32Array(8) as never, h: zeros([2, 4]) } }), { code: 'ERR_WNLSTM_TYPE' }, 'a state that is not a tensor');
  t.throws(() => cell.forward(x, { sequenceLength: [3, 1] }), { code: 'ERR_WNLSTM_RANGE' }, 'a length past the steps');
  const gone = zeros([2, 2, 3]);
  gone.dispose();
  t.throws(() => cell.forward(gone), { code: 'ERR_WNLSTM_DISPOSED' }, 'a disposed tensor');
  const r = cell.forward(x);
  t.throws(() => cell.backward(zeros([2, 2, 3])), { code: 'ERR_WNLSTM_SHAPE' }, 'dOutputs of another size');
  await t.rejects(cell.forwardAsync(zeros([2, 2, 5])), { code: 'ERR_WNLSTM_SHAPE' }, 'the async form rejects');
  t.equal(cell.backward(zeros([2, 2, 4])).dInputs.size, 12, 'the cell still works');
  // A tensor an async call reads cannot be overwritten meanwhile.
  const pending = cell.forwardAsync(x);
  const busy = tensor(new Float32Array(12), [2, 2, 3]);
  const reading = new WeightNormLSTMCell(4, { inputSize: 3, seed: 1 }).forwardAsync(busy);
  t.throws(() => busy.write(new Float32Array(12)), { code: 'ERR_WNLSTM_BUSY' }, 'write() while an async call reads it');
  await Promise.all([pending, reading]);
  busy.write(new Float32Array(12));
  t.same(r.outputs.shape, [2, 2, 4]);
});

t.test('a stack on tensors: the same outputs, states and gradients as on typed arrays (dropout between layers)', async (t) => {
  const make = () => new StackedLSTM([4, 5, 3].map((H, l) => new WeightNormLSTMCell(H, { inputSize: l === 0 ? 2 : [4, 5][l - 1], seed: 10 + l, dtype: 'float64' })),
    { dropout: 0.4, seed: 9 });
  const arrays = make(), tensors = make();
  const T = 3, B = 2, rng = new Random(5);
  const x = randomArray(rng, T * B * 2, 1), dy = randomArray(rng, T * B * 3, 1);
  for (const round of [1, 2]) {  // the second round: the masks of the first are replaced
    const a = arrays.forward(x, { batchSize: B });
    const b = tensors.forward(tensor(x, [T, B, 2]));
    exact(t, b.outputs.read(), a.outputs, `round ${round}: outputs`);
    b.states.forEach((s, l) => exact(t, s.h.read(), a.states[l].h, `round ${round}: layer ${l}'s final h`));
    const da = arrays.backward(dy);
    const db = tensors.backward(tensor(dy, [T, B, 3]));
    exact(t, db.read(), da, `round ${round}: d inputs (through the masks)`);
  }
  arrays.parameters().forEach((p, i) => exact(t, tensors.parameters()[i].grad, p.grad, `gradient of ${p.name} (accumulated over both rounds)`));
  const c = await tensors.forwardAsync(tensor(x, [T, B, 2]));
  const a = arrays.forward(x, { batchSize: B });
  exact(t, c.outputs.read(), a.outputs, 'forwardAsync on tensors');
  exact(t, (await tensors.backwardAsync(tensor(dy, [T, B, 3]))).read(), arrays.backward(dy), 'backwardAsync on tensors');
});

t.test('tensors free their memory: on dispose(), and the layers between a stack\'s cells at once', async (t) => {
  const before = addon.externalMemory();
  const many: Tensor[] = [];
  for (let i = 0; i < 20; i++) many.push(zeros([256, 1024]));
  t.ok(addon.externalMemory() - before >= 20 * 1024 * 1024, 'their bytes are reported to V8 (so that dropped ones are collected)');
  many.forEach((m) => m.dispose());
  t.ok(addon.externalMemory() - before < 1024 * 1024, 'and released by dispose()');
  const stack = new StackedLSTM([64, 64, 64].map((H, l) => new WeightNormLSTMCell(H, { inputSize: l === 0 ? 8 : 64, seed: l })), { dropout: 0.2 });
  const x = zeros([20, 16, 8]), dy = zeros([20, 16, 64]);
  const settle = () => { const r = stack.forward(x); const d = stack.backward(dy); r.outputs.dispose(); r.states.forEach((s) => { s.c.dispose(); s.h.dispose(); }); d.dispose(); };
  // The gradients come back as typed arrays (V8 counts them too until they are collected): collect first.
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const collected = async () => {
    for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setImmediate(r)); }
    return addon.externalMemory();
  };
  settle();
  await collected();  // the tensors earlier tests dropped without dispose()
  const live = tensorMemory();
  let counts = '';
  for (let i = 0; i < 5; i++) { settle(); counts += ` ${tensorMemory().tensors}`; }
  t.equal(counts, ` ${live.tensors}`.repeat(5), `a round leaves no tensor alive (the inputs and the 2 masks: ${live.tensors} tensors)`);
  const steady = await collected();
  for (let i = 0; i < 30; i++) settle();
  const grown = (await collected()) - steady;
  t.ok(grown < 64 * 1024, `30 more forward/backward rounds hold no more memory (${grown} bytes more)`);
  t.equal(tensorMemory().bytes, live.bytes, 'tensorMemory() counts the same bytes');
});
