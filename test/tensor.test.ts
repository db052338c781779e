// Tensors (lib/core/tensor.ts): data kept in the backend between calls. A cell and a stack on tensors give
// exactly what they give on typed arrays (the same native code on the same data), tensors between the
// layers of a stack stay inside the backend and are freed, and bad input is a coded error.
import t from 'tap';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { backendInfo, Dense, Embedding, Random, StackedLSTM, StreamingSession, synchronize, Tensor, tensor, tensorMemory, WeightNormLSTMCell, zeros } from '../lib/index';
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

t.test('Embedding and Dense on tensors: the same rows, outputs and gradients as on typed arrays; a whole model chain', async (t) => {
  const before = tensorMemory().tensors;
  for (const dtype of ['float32', 'float64'] as const) {
    const rng = new Random(8), Array = dtype === 'float64' ? Float64Array : Float32Array;
    const V = 11, E = 5, H = 6, O = 7, T = 4, B = 3;
    const ids = Int32Array.from({ length: T * B }, () => Math.floor(rng.uniform() * V));
    const make = () => {
      const emb = new Embedding(V, E, { seed: 2, dtype }), dense = new Dense(H, O, { seed: 3, dtype });
      dense.bias.set(randomArray(new Random(5), O, 0.3));
      const cells = [0, 1].map((l) => new WeightNormLSTMCell(H, { inputSize: l ? H : E, seed: 4 + l, dtype }));
      return { emb, dense, stack: new StackedLSTM(cells, { dropout: 0.2, seed: 6 }), cells };
    };
    const a = make(), b = make();
    const dLogits = new Array(randomArray(new Random(9), T * B * O));
    // Typed arrays, as before.
    const ya = a.dense.forward(a.stack.forward(a.emb.forward(ids), { batchSize: B }).outputs, T * B);
    a.emb.backward(a.stack.backward(a.dense.backward(dLogits)));
    // Tensors from the embedding's rows on: the activations stay in the backend.
    const rows = b.emb.forward(ids, { backend: 'cpu' });
    t.same(rows.shape, [T * B, E]);
    t.equal(rows.dtype, dtype);
    const steps = rows.reshape([T, B, E]);
    const { outputs, states } = b.stack.forward(steps);
    const yb = b.dense.forward(outputs);
    t.same(yb.shape, [T * B, O], `${dtype}: Dense gives [rows, outSize]`);
    exact(t, yb.read(), ya, `${dtype}: Embedding -> StackedLSTM -> Dense on tensors = on typed arrays`);
    const dy = tensor(dLogits, [T * B, O]);
    const dh = b.dense.backward(dy);
    const dSteps = dh.reshape([T, B, H]);
    const dRows = b.stack.backward(dSteps);
    b.emb.backward(dRows);
    for (const [name, la, lb] of [['embedding', a.emb, b.emb], ['dense', a.dense, b.dense]] as const) {
      exact(t, lb.params.grad, la.params.grad, `${dtype}: the ${name}'s gradient`);
    }
    a.cells.forEach((cell, l) => exact(t, b.cells[l].parameters()[0].grad, cell.parameters()[0].grad, `${dtype}: cell ${l}'s gradient`));
    for (const x of [rows, steps, outputs, yb, dy, dh, dSteps, dRows, ...states.flatMap((s) => [s.c, s.h])]) x.dispose();
    for (const m of [a, b]) m.cells.forEach((c) => c.dispose());
  }
  // Each stack keeps its dropout mask (one, between its two layers) until its next forward.
  t.equal(tensorMemory().tensors, before + 2, 'every tensor freed but the two stacks\' dropout masks');
});

t.test('bad tensors given to Embedding and Dense are coded errors, and change nothing', async (t) => {
  const emb = new Embedding(5, 3), dense = new Dense(3, 2);
  const ids = Int32Array.of(1, 4);
  t.throws(() => emb.forward(ids, { backend: 'tpu' as never }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown backend');
  t.throws(() => emb.forward(ids, { backend: 'cpu', device: 2 }), { code: 'ERR_WNLSTM_CONFIG' }, 'a CPU device other than 0');
  t.throws(() => emb.forward(ids, 'yes' as never), { code: 'ERR_WNLSTM_TYPE' }, 'options that are neither keep nor an object');
  t.throws(() => emb.forward(Int32Array.of(1, 5), { backend: 'cpu' }), { code: 'ERR_WNLSTM_RANGE' }, 'an id outside the vocabulary');
  const rows = emb.forward(ids, { backend: 'cpu' });
  t.throws(() => emb.backward(zeros([3, 3])), { code: 'ERR_WNLSTM_SHAPE' }, 'a gradient of other rows');
  t.throws(() => emb.backward(zeros([2, 3], { dtype: 'float64' })), { code: 'ERR_WNLSTM_TYPE' }, 'a gradient of another dtype');
  t.throws(() => dense.forward(zeros([2, 4])), { code: 'ERR_WNLSTM_SHAPE' }, 'inputs that are not rows of inSize');
  t.throws(() => dense.forward(zeros([2, 3], { dtype: 'float64' })), { code: 'ERR_WNLSTM_TYPE' }, 'inputs of another dtype');
  const y = dense.forward(rows);
  t.throws(() => dense.backward(new Float32Array(4)), { code: 'ERR_WNLSTM_TYPE' }, 'a typed-array gradient after a forward on a tensor');
  t.throws(() => dense.backward(zeros([3, 2])), { code: 'ERR_WNLSTM_SHAPE' }, 'a gradient of other rows');
  const gone = zeros([2, 2]);
  gone.dispose();
  t.throws(() => dense.backward(gone), { code: 'ERR_WNLSTM_DISPOSED' }, 'a disposed gradient');
  t.ok([...emb.params.grad, ...dense.params.grad].every((g) => g === 0), 'no gradient changed by a failed call');
  for (const x of [rows, y]) x.dispose();
});

t.test('reshape() shares the data without a copy; each tensor lives on its own', async (t) => {
  const a = tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  const before = tensorMemory();
  const b = a.reshape([3, 2]);
  t.same(b.toArray(), [[1, 2], [3, 4], [5, 6]], 'the values in the new shape');
  t.same(tensorMemory(), before, 'no new data');
  b.write(Float32Array.of(6, 5, 4, 3, 2, 1));
  exact(t, a.read(), [6, 5, 4, 3, 2, 1], 'one data: a write through either shows in both');
  a.dispose();
  exact(t, b.read(), [6, 5, 4, 3, 2, 1], 'disposing one leaves the other');
  t.throws(() => b.reshape([4, 2]), { code: 'ERR_WNLSTM_SHAPE' }, 'another number of elements');
  b.dispose();
  t.equal(tensorMemory().tensors, before.tensors - 1, 'the data freed with the last handle');
});

t.test('a streaming session on tensors: the state stays in the backend, the steps equal those on typed arrays', async (t) => {
  const before = tensorMemory().tensors;
  const cells = [0, 1].map((l) => new WeightNormLSTMCell(6, { inputSize: l ? 6 : 4, usePeepholes: true, seed: 3 + l }));
  const B = 3, rng = new Random(2);
  const xs = Array.from({ length: 5 }, () => Float32Array.from(randomArray(rng, B * 4)));
  const arrays = new StreamingSession(cells, B), tensors = new StreamingSession(cells, B);
  for (const [k, x] of xs.entries()) {
    const ha = arrays.step(x);
    const xb = tensor(x, [B, 4]), hb = tensors.step(xb);
    t.same(hb.shape, [B, 6]);
    exact(t, hb.read(), ha, `step ${k + 1}: h`);
    xb.dispose(), hb.dispose();
    if (k === 2) {
      exact(t, tensors.state.flatMap((s) => [...s.c, ...s.h]), arrays.state.flatMap((s) => [...s.c, ...s.h]), 'the state, read back mid-stream');
      tensors.reset(1), arrays.reset(1);
    }
  }
  exact(t, tensors.step(xs[0]), arrays.step(xs[0]), 'a typed-array step after steps on tensors goes on from the same state');
  const wrong = zeros([B, 5]), wide = zeros([B, 4], { dtype: 'float64' });
  t.throws(() => tensors.step(wrong), { code: 'ERR_WNLSTM_SHAPE' }, 'a tensor of the wrong shape');
  t.throws(() => tensors.step(wide), { code: 'ERR_WNLSTM_TYPE' }, 'a tensor of another dtype than the cells\'');
  // A step that fails in a layer above the first leaves every layer's state as it was.
  const x = tensor(xs[1], [B, 4]), expected = tensors.state;
  const pending = cells[1].forwardAsync(new Float32Array(B * 6), { batchSize: B });
  t.throws(() => tensors.step(x), { code: 'ERR_WNLSTM_BUSY' }, 'the second cell busy: the step fails');
  await pending;
  exact(t, tensors.state.flatMap((s) => [...s.c, ...s.h]), expected.flatMap((s) => [...s.c, ...s.h]), 'and no layer moved on');
  const h = tensors.step(x);
  exact(t, h.read(), arrays.step(xs[1]), 'the session goes on as if the failed steps had not been asked for');
  for (const t of [wrong, wide, x, h]) t.dispose();
  t.equal(tensorMemory().tensors, before + 4, 'no tensor left behind (the state: 2 layers x c, h)');
  cells.forEach((c) => c.dispose());
});
