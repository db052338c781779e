// The model runtime (native/include/wnlstm/model.h): the language model's weights, gradients and
// optimizer state in one backend arena each, and its whole training step in one native call. Gradients
// with dropout on against central differences (float64); the fused arena update against the per-block
// update; async steps; the cells reading the arena; bad input refused with a code and nothing changed.
import t from 'tap';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Adagrad, Adam, AdamW, ArrayParams, LanguageModel, Optimizer, ParamBlock, Random, RMSProp, SGD, WeightNormLSTMCell } from '../lib/index';
import { addon } from '../lib/core/native';
import { nativeCellOf } from '../lib/nn/cell';
import { ModelRuntime } from '../lib/nn/runtime';
import { assertClose } from './helpers';

const small = (o: Partial<ConstructorParameters<typeof LanguageModel>[0]> = {}) =>
  new LanguageModel({ vocabSize: 7, embeddingSize: 3, hiddenSize: 4, layers: 2, norm: true, initScale: 0.5, seed: 5, dtype: 'float64', ...o });
const ids = (rng: Random, n: number, V: number) => Int32Array.from({ length: n }, () => Math.floor(rng.uniform() * V));
const snapshotOf = (lm: LanguageModel) => ({
  values: lm.parameters().map((b) => Array.from(b.getValues())),
  grads: lm.parameters().map((b) => Array.from(b.grad)),
  rng: lm.rngState,
});

t.test('with dropout on, the gradient of a training step equals central differences (float64, masks held fixed)', async (t) => {
  for (const norm of [true, false]) {
    const lm = small({ norm, dropout: 0.3 });
    const rng = new Random(1), B = 2, T = 3, inputs = ids(rng, T * B, 7), targets = ids(rng, T * B, 7);
    targets[4] = -1; // a row without loss
    const state = lm.zeroState(B).map((s) => ({ c: s.c.map(() => 0.1), h: s.h.map(() => -0.2) }));
    const start = lm.rngState;
    const blocks = lm.parameters();
    blocks.forEach((b) => b.zeroGrad());
    const loss = lm.step(inputs, targets, B, state, true).loss;
    const grads = blocks.map((b) => b.grad);
    // The same masks for every evaluation: each one starts from the same random state.
    const lossAt = () => { lm.rngState = start; return lm.step(inputs, targets, B, state, true).loss; };
    t.equal(lossAt(), loss, 'a random state replays the same masks');
    const eps = 1e-6;
    blocks.forEach((b, k) => {
      const values = b.getValues(), fd = new Float64Array(b.size);
      for (let i = 0; i < b.size; i++) {
        const v = values[i];
        values[i] = v + eps; b.setValues(values); const up = lossAt();
        values[i] = v - eps; b.setValues(values); const down = lossAt();
        values[i] = v; b.setValues(values);
        fd[i] = (up - down) / (2 * eps);
      }
      assertClose(t, grads[k], fd, { rtol: 1e-5, atol: 1e-9 }, `norm=${norm}, dropout 0.3: d${b.name} (${b.size} values)`);
    });
    lm.dispose();
  }
});

t.test("the first layer's projected table gives what projecting each step's row gives (float64: losses, outputs, states, every gradient)", async (t) => {
  const rng = new Random(3);
  for (const [kind, perStep, bidirectional] of [['language model', true, false], ['bidirectional tagger', true, true], ['bidirectional classifier', false, true]] as const) {
    const T = 5, B = 3, V = 6;
    const inputs = ids(rng, T * B, V), lengths = bidirectional ? Int32Array.from([5, 2, 4]) : undefined;
    const labels = perStep ? ids(rng, T * B, 4) : ids(rng, B, 4);
    const make = (embeddingProjection: 'table' | 'rows') => new ModelRuntime({ vocabSize: V, inputSize: 3, hiddenSize: 4, layers: 2, outputSize: 4,
      perStep, loss: 'crossEntropy', dropout: 0, bidirectional, norm: true, seed: 2, dtype: 'float64', embeddingProjection,
      cellInitializer: { kind: 'uniform', min: -0.5, max: 0.5 }, embeddingScale: 0.5, headScale: 0.5 });
    const [table, rows] = [make('table'), make('rows')];
    const batch = { steps: T, batchSize: B, ids: inputs, lengths, labels, outputs: true };
    const runs = [table, rows].map((m) => {
      for (const b of m.blocks) b.zeroGrad();
      const train = m.step(batch, true), evaluation = m.step(batch, false);
      return { train, evaluation, grads: m.blocks.map((b) => b.grad) };
    });
    assertClose(t, [runs[0].train.loss, runs[0].evaluation.loss], [runs[1].train.loss, runs[1].evaluation.loss], { rtol: 1e-13, atol: 0 }, `${kind}: training and evaluation losses`);
    assertClose(t, runs[0].evaluation.outputs!, runs[1].evaluation.outputs!, { rtol: 1e-12, atol: 1e-15 }, `${kind}: outputs`);
    assertClose(t, runs[0].train.states.flatMap((s) => [...s.c, ...s.h]), runs[1].train.states.flatMap((s) => [...s.c, ...s.h]), { rtol: 1e-12, atol: 1e-15 }, `${kind}: final states`);
    table.blocks.forEach((b, k) => assertClose(t, runs[0].grads[k], runs[1].grads[k], { rtol: 1e-11, atol: 1e-15 }, `${kind}: d${b.name}`));
    table.dispose(); rows.dispose();
  }
  // A model's step runs its cells' passes and keeps their inputs itself: a cell's own backward() then has no
  // inputs of its own to differentiate, and says so.
  const lm = small({ dropout: 0 });
  lm.step(ids(rng, 6, 7), ids(rng, 6, 7), 2, null, true);
  t.throws(() => lm.stack.cells[0].backward(new Float64Array(6 * 4)), { code: 'ERR_WNLSTM_NO_FORWARD' }, "a cell's backward() after the model's step is refused");
  lm.dispose();
  t.throws(() => new ModelRuntime({ vocabSize: 5, inputSize: 3, hiddenSize: 4, layers: 1, outputSize: 5, perStep: true, loss: 'crossEntropy', dropout: 0,
    norm: true, seed: 1, dtype: 'float64', embeddingProjection: 'sometimes' as never, cellInitializer: { kind: 'uniform', min: -0.1, max: 0.1 },
    embeddingScale: 0.1, headScale: 0.1 }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown embeddingProjection is refused');
});

t.test('the fused update of an arena equals the per-block update, for every optimizer (float32, clipped)', async (t) => {
  const makers: [string, (p: ParamBlock[] | LanguageModel) => Optimizer][] = [
    ['SGD', (p) => new SGD(p, { learningRate: 0.1, weightDecay: 0.01, clipNorm: 0.5 })],
    ['SGD momentum', (p) => new SGD(p, { learningRate: 0.1, momentum: 0.9, clipNorm: 0.5 })],
    ['SGD Nesterov', (p) => new SGD(p, { learningRate: 0.1, momentum: 0.9, nesterov: true })],
    ['Adam', (p) => new Adam(p, { learningRate: 0.01, weightDecay: 0.001, clipNorm: 0.5 })],
    ['AdamW', (p) => new AdamW(p, { learningRate: 0.01 })],
    ['RMSProp momentum', (p) => new RMSProp(p, { learningRate: 0.01, momentum: 0.5, clipNorm: 0.5 })],
    ['Adagrad', (p) => new Adagrad(p, { learningRate: 0.1 })],
  ];
  const rng = new Random(2), B = 3, T = 4, inputs = ids(rng, T * B, 7), targets = ids(rng, T * B, 7);
  for (const [name, make] of makers) {
    const lm = small({ dtype: 'float32', dropout: 0.2 });
    // The same blocks as JS arrays, updated one by one with the same gradients.
    const loose = lm.parameters().map((b) => new ArrayParams(b.name, b.getValues()));
    const fused = make(lm), alone = make(loose);
    for (let k = 0; k < 3; k++) {
      fused.zeroGrad();
      lm.step(inputs, targets, B, null, true);
      lm.parameters().forEach((b, i) => loose[i].grad.set(b.grad));
      const n1 = fused.step(), n2 = alone.step();
      t.equal(n1, n2, `${name}, step ${k + 1}: the same global norm (${n1.toFixed(4)})`);
    }
    const same = lm.parameters().every((b, i) => b.getValues().every((v, j) => v === loose[i].values[j]));
    t.ok(same, `${name}: after 3 steps every parameter is bit for bit the per-block result`);
    const st = fused.getState(), st2 = alone.getState();
    t.ok(Object.keys(st.buffers).every((n) => st.buffers[n].every((s, k) => (s === null) === (st2.buffers[n][k] === null) &&
      (s === null || s.every((v, j) => v === st2.buffers[n][k]![j])))), `${name}: the same optimizer state`);
    lm.dispose();
  }
});

t.test('optimizer state round trip through the arena, and a partial optimizer refused', async (t) => {
  const rng = new Random(3), B = 2, T = 3, inputs = ids(rng, T * B, 7), targets = ids(rng, T * B, 7);
  const run = (restoreAt?: number) => {
    const lm = small({ dropout: 0 });
    let opt: Optimizer = new Adam(lm, { learningRate: 0.05 });
    for (let k = 0; k < 4; k++) {
      if (k === restoreAt) { const s = opt.getState(); opt = new Adam(lm, { learningRate: 0.5 }); opt.setState(s); }
      opt.zeroGrad();
      lm.step(inputs, targets, B, null, true);
      opt.step();
    }
    const values = lm.parameters().map((b) => Array.from(b.getValues()));
    lm.dispose();
    return values.flat();
  };
  assertClose(t, run(2), run(), { rtol: 0, atol: 0 }, 'an Adam restored mid-run continues exactly');
  const lm = small();
  t.throws(() => new SGD(lm.parameters().slice(1)), { code: 'ERR_WNLSTM_CONFIG', message: /missing: embedding/ }, 'part of a model');
  const opt = new Adam(lm);
  const st = opt.getState();
  t.ok(Object.values(st.buffers).every(([a, b]) => a === null && b === null), 'no moments before the first step');
  t.throws(() => opt.setState({ ...st, buffers: { ...st.buffers, dense: [new Float32Array(lm.parameters()[3].size), null] } }),
    { code: 'ERR_WNLSTM_TYPE' }, 'moments of the wrong dtype');
  lm.dispose();
});

t.test("the cells read and write the model's arena", async (t) => {
  const lm = small();
  const cell = lm.stack.cells[1], block = lm.parameters().find((b) => b.name === 'lstm_1')!;
  const bias = Float64Array.from({ length: 16 }, (_, i) => i / 10);
  cell.setWeights({ bias });
  const offset = 8 * 16; // the bias follows the kernel [I + H, 4H]
  t.same(Array.from(block.getValues().slice(offset, offset + 16)), Array.from(bias), "a cell's setWeights is the arena's value");
  const values = block.getValues();
  values[0] = 0.75;
  block.setValues(values);
  t.equal(cell.getWeights().kernel[0], 0.75, "the arena's value is the cell's weight");
  // A step with the cells as a user would call them gives the model's step (no dropout, eval).
  const rng = new Random(4), B = 2, inputs = ids(rng, 2 * B, 7), targets = ids(rng, 2 * B, 7);
  const viaModel = lm.step(inputs, targets, B, null, false);
  let x = lm.embed(inputs);
  for (const c of lm.stack.cells) x = c.forward(x, { batchSize: B, training: false }).outputs;
  const logits = lm.logits(x, 2 * B);
  let total = 0;
  for (let r = 0; r < 2 * B; r++) {
    const z = Array.from(logits.subarray(r * 7, r * 7 + 7)), max = Math.max(...z);
    total += Math.log(z.reduce((s, v) => s + Math.exp(v - max), 0)) + max - z[targets[r]];
  }
  t.ok(Math.abs(total / (2 * B) - viaModel.loss) < 1e-12, `the model's loss = the cells' and layers' (${viaModel.loss.toFixed(6)})`);
  lm.dispose();
});

t.test('a cell outlives its dropped model: the arena stays while the cell holds it', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  let lm: LanguageModel | null = small();
  const cell = lm.stack.cells[0], before = cell.getWeights().kernel;
  lm = null;
  for (let i = 0; i < 5; i++) { gc(); await new Promise((r) => setImmediate(r)); }
  t.same(Array.from(cell.getWeights().kernel), Array.from(before), 'the weights are still there');
  t.equal(cell.forward(new Float64Array(2 * 3).fill(0.5), { batchSize: 2, training: false }).outputs.length, 8, 'the cell still runs');
});

t.test('stepAsync equals step; the model and its cells are busy meanwhile', async (t) => {
  const rng = new Random(6), B = 8, T = 20;
  const make = () => new LanguageModel({ vocabSize: 50, embeddingSize: 32, hiddenSize: 64, layers: 2, norm: true, dropout: 0.1, seed: 9 });
  const a = make(), b = make(), inputs = ids(rng, T * B, 50), targets = ids(rng, T * B, 50);
  const state = a.zeroState(B).map((s) => ({ c: s.c.map(() => 0.05), h: s.h.map(() => -0.05) }));
  const want = a.step(inputs, targets, B, state, true);
  const copy = Int32Array.from(inputs);
  const pending = b.stepAsync(copy, targets, B, state, true);
  copy.fill(0); // taken at the call
  t.throws(() => b.step(inputs, targets, B, null, true), { code: 'ERR_WNLSTM_BUSY' }, 'a sync step meanwhile');
  t.throws(() => b.stack.cells[0].forward(new Float32Array(32 * B), { batchSize: B }), { code: 'ERR_WNLSTM_BUSY' }, 'its cells are busy too');
  await t.rejects(b.stepAsync(inputs, targets, B, null, true), { code: 'ERR_WNLSTM_BUSY' }, 'a second async step');
  const got = await pending;
  t.equal(got.loss, want.loss, `the same loss (${want.loss.toFixed(5)})`);
  t.ok(got.state.every((s, l) => s.c.every((v, i) => v === want.state[l].c[i]) && s.h.every((v, i) => v === want.state[l].h[i])), 'the same final state');
  t.ok(a.parameters().every((blk, i) => blk.grad.every((v, j) => v === b.parameters()[i].grad[j])), 'the same gradients');
  a.dispose();
  b.dispose();
});

t.test('bad input to the model is a coded error and changes nothing', async (t) => {
  const lm = small({ dropout: 0.2 });
  const B = 2, good = Int32Array.of(0, 1, 2, 3), state = lm.zeroState(B);
  lm.step(good, good, B, state, true); // gradients, moments and random state to keep
  const opt = new Adam(lm);
  opt.step();
  const before = snapshotOf(lm);
  const nan = lm.zeroState(B);
  nan[1].h[3] = NaN;
  const cases: [string, () => unknown, string][] = [
    ['float ids', () => lm.step(new Float32Array(4) as never, good, B, state, true), 'ERR_WNLSTM_TYPE'],
    ['an id past the vocabulary', () => lm.step(Int32Array.of(0, 1, 7, 3), good, B, state, true), 'ERR_WNLSTM_RANGE'],
    ['a negative id', () => lm.step(Int32Array.of(0, -1, 2, 3), good, B, state, true), 'ERR_WNLSTM_RANGE'],
    ['a target past the vocabulary', () => lm.step(good, Int32Array.of(0, 1, 2, 99), B, state, true), 'ERR_WNLSTM_RANGE'],
    ['targets of another length', () => lm.step(good, Int32Array.of(0, 1), B, state, true), 'ERR_WNLSTM_SHAPE'],
    ['ids not a multiple of the batch', () => lm.step(Int32Array.of(0, 1, 2), Int32Array.of(0, 1, 2), B, state, true), 'ERR_WNLSTM_SHAPE'],
    ['no ids', () => lm.step(new Int32Array(0), new Int32Array(0), B, state, true), 'ERR_WNLSTM_SHAPE'],
    ['batch 0', () => lm.step(good, good, 0, state, true), 'ERR_WNLSTM_RANGE'],
    ['batch 1.5', () => lm.step(good, good, 1.5, state, true), 'ERR_WNLSTM_RANGE'],
    ['one state for two layers', () => lm.step(good, good, B, state.slice(1), true), 'ERR_WNLSTM_TYPE'],
    ['a state of the wrong length', () => lm.step(good, good, B, [state[0], { c: new Float64Array(3), h: state[1].h }], true), 'ERR_WNLSTM_SHAPE'],
    ['a float32 state in a float64 model', () => lm.step(good, good, B, [state[0], { c: new Float32Array(8), h: state[1].h }], true), 'ERR_WNLSTM_TYPE'],
    ['a NaN in the state', () => lm.step(good, good, B, nan, true), 'ERR_WNLSTM_NOT_FINITE'],
    ['an unknown block', () => lm.parameters()[0].arena!.getMoments('nope'), 'ERR_WNLSTM_UNKNOWN_WEIGHT'],
    ['values of the wrong length', () => lm.parameters()[0].setValues(new Float64Array(3)), 'ERR_WNLSTM_SHAPE'],
    ['NaN values', () => lm.parameters()[3].setValues(new Float64Array(lm.parameters()[3].size).fill(NaN)), 'ERR_WNLSTM_NOT_FINITE'],
    ['an unknown optimizer kind', () => lm.parameters()[0].arena!.update({ kind: 'lion' } as never), 'ERR_WNLSTM_CONFIG'],
    ['a random state of 3 words', () => { lm.rngState = { model: [1, 2, 3], stack: [1, 2, 3, 4] }; }, 'ERR_WNLSTM_TYPE'],
    ['embedding an id past the vocabulary', () => lm.embed(Int32Array.of(9)), 'ERR_WNLSTM_RANGE'],
    ['logits of a short h', () => lm.logits(new Float64Array(3), 1), 'ERR_WNLSTM_SHAPE'],
  ];
  for (const [what, call, code] of cases) t.throws(call, { code }, what);
  const wide = small({ vocabSize: 1000 }), many = new Int32Array(2 ** 22);
  t.throws(() => wide.step(many, many, 1, null, true), { code: 'ERR_WNLSTM_SIZE' }, 'a window whose logits would pass 2^31 values');
  wide.dispose();
  t.same(snapshotOf(lm), before, 'weights, gradients and random state unchanged by every failed call');
  await t.rejects(lm.stepAsync(good, Int32Array.of(0, 1, 2, 99), B, state, true), { code: 'ERR_WNLSTM_RANGE' }, 'async: a bad target');
  t.same(snapshotOf(lm), before, 'and by the failed async call');
  lm.dispose();
  t.throws(() => lm.step(good, good, B, state, true), { code: 'ERR_WNLSTM_DISPOSED' }, 'a disposed model');
  t.throws(() => lm.parameters()[0].getValues(), { code: 'ERR_WNLSTM_DISPOSED' }, "a disposed model's block");
  t.throws(() => lm.stack.cells[0].getWeights(), { code: 'ERR_WNLSTM_DISPOSED' }, 'its cells are disposed with it');
});

t.test('a new optimizer over a model starts from zeros, not from the last one\'s moments', async (t) => {
  const lm = small({ dtype: 'float32' }), B = 2, ids = Int32Array.of(0, 1, 2, 3, 4, 5);
  const steps = (opt: Optimizer, n: number) => { for (let k = 0; k < n; k++) { opt.zeroGrad(); lm.step(ids, ids, B, null, true); opt.step(); } };
  steps(new Adam(lm, { learningRate: 0.05 }), 5); // Adam's first moments are signed: RMSProp reading them would take sqrt of < 0
  const rms = new RMSProp(lm, { learningRate: 0.01 });
  t.ok(Object.values(rms.getState().buffers).every(([a, b]) => a === null && b === null), 'no moments before its first step');
  steps(rms, 3);
  t.ok(lm.parameters().every((b) => b.getValues().every(Number.isFinite)), 'the weights stay finite');
  lm.dispose();
});

t.test('the runtime refuses what would break it: oversized windows, shared cells, getters that start a step', async (t) => {
  const wide = new LanguageModel({ vocabSize: 8, embeddingSize: 8, hiddenSize: 1024, layers: 1, norm: false, dropout: 0.5 });
  const rng = wide.rngState, many = new Int32Array(2 ** 20);
  t.throws(() => wide.step(many, many, 1, null, true), { code: 'ERR_WNLSTM_SIZE' }, 'a window whose gates would pass 2^31 values');
  t.same(wide.rngState, rng, 'refused before any dropout mask was drawn');
  wide.dispose();

  const lm = small(), cells = lm.stack.cells.map(nativeCellOf);
  const config = { vocabSize: 7, inputSize: 3, hiddenSize: 4, layers: 2, outputSize: 7, perStep: true, loss: 'crossEntropy' as const, dropout: 0 }, seeds = { model: [1, 2, 3, 4], stack: [5, 6, 7, 8] };
  t.throws(() => new addon.NativeModel(config, 'float64', cells, seeds), { code: 'ERR_WNLSTM_CONFIG' }, 'cells of another model');
  const other = new LanguageModel({ vocabSize: 7, embeddingSize: 4, hiddenSize: 4, layers: 2, norm: true, dtype: 'float64' });
  const free = new WeightNormLSTMCell(4, { inputSize: 4, dtype: 'float64' });
  t.throws(() => new addon.NativeModel({ ...config, inputSize: 4 }, 'float64', [nativeCellOf(free), nativeCellOf(free)], seeds),
    { code: 'ERR_WNLSTM_CONFIG' }, 'one cell for two layers');
  other.dispose();
  free.dispose();

  const B = 2, good = Int32Array.of(0, 1, 2, 3), state = lm.zeroState(B);
  let pending: Promise<unknown> | undefined;
  const tricky = [{ c: state[0].c, get h() { pending ??= lm.stepAsync(good, good, B, null, true); return state[0].h; } }, state[1]];
  t.throws(() => lm.step(good, good, B, tricky, true), { code: 'ERR_WNLSTM_BUSY' }, 'a state getter that starts an async step');
  await t.resolves(pending!, 'and that step runs alone');
  lm.dispose();
});
