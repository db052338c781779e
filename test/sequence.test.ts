// Sequence semantics: forward over T steps equals T calls of step(); sequenceLength behaves like TF's
// dynamic_rnn; inference (chunked) and training forwards agree.
import t from 'tap';
import { Random, WeightNormLSTMCell } from '../lib/index';
import { assertClose, randomArray } from './helpers';

const F32 = { rtol: 1e-5, atol: 1e-6 };

for (const options of [{}, { usePeepholes: true, cellClip: 0.4, numProj: 5, projClip: 0.3 }]) {
  t.test(`forward over T steps equals T calls of step ${JSON.stringify(options)}`, async (t) => {
    const I = 6, H = 11, T = 7, B = 3;
    const cell = new WeightNormLSTMCell(H, { inputSize: I, seed: 1, ...options });
    const rng = new Random(2);
    const x = randomArray(rng, T * B * I, 1, Float32Array);
    const init = { c: randomArray(rng, B * H, 0.5, Float32Array), h: randomArray(rng, B * cell.outputSize, 0.5, Float32Array) };
    const f = cell.forward(x, { batchSize: B, initialState: init });
    let state = init;
    for (let s = 0; s < T; s++) {
      state = cell.step(x.subarray(s * B * I, (s + 1) * B * I), state);
      assertClose(t, f.outputs.subarray(s * B * cell.outputSize, (s + 1) * B * cell.outputSize), state.h, F32, `output of step ${s}`);
    }
    assertClose(t, f.state.c, state.c, F32, 'final c');
    assertClose(t, f.state.h, state.h, F32, 'final h');
  });
}

t.test('sequenceLength: zero outputs past each length, final state at the last valid step', async (t) => {
  const I = 4, H = 6, T = 5, B = 4;
  const lengths = [5, 3, 0, 1];
  const cell = new WeightNormLSTMCell(H, { inputSize: I, seed: 3, usePeepholes: true });
  const rng = new Random(4);
  const x = randomArray(rng, T * B * I, 1, Float32Array);
  const c0 = randomArray(rng, B * H, 0.5, Float32Array), h0 = randomArray(rng, B * H, 0.5, Float32Array);
  const f = cell.forward(x, { batchSize: B, initialState: { c: c0, h: h0 }, sequenceLength: lengths });
  for (let b = 0; b < B; b++) {
    const len = lengths[b];
    const row = (a: Float32Array, width: number, s: number) => a.slice((s * B + b) * width, (s * B + b + 1) * width);
    if (len === 0) {
      assertClose(t, f.state.c.slice(b * H, (b + 1) * H), c0.slice(b * H, (b + 1) * H), F32, `row ${b}: empty sequence keeps c0`);
    } else {
      // The same row alone, run for exactly its length.
      const xs = new Float32Array(len * I);
      for (let s = 0; s < len; s++) xs.set(row(x, I, s), s * I);
      const alone = cell.forward(xs, { batchSize: 1, initialState: { c: c0.slice(b * H, (b + 1) * H), h: h0.slice(b * H, (b + 1) * H) } });
      for (let s = 0; s < len; s++) assertClose(t, row(f.outputs, H, s), alone.outputs.slice(s * H, (s + 1) * H), F32, `row ${b} step ${s}`);
      assertClose(t, f.state.c.slice(b * H, (b + 1) * H), alone.state.c, F32, `row ${b}: final c`);
      assertClose(t, f.state.h.slice(b * H, (b + 1) * H), alone.state.h, F32, `row ${b}: final h`);
    }
    for (let s = len; s < T; s++) t.ok(row(f.outputs, H, s).every((v) => v === 0), `row ${b} step ${s} outputs zeros`);
  }
});

t.test('inference in chunks of steps equals the training forward', async (t) => {
  // 1100 steps x 1 x 4H = 1100 x 1024 values: more than one inference chunk (2^20 values).
  const I = 3, H = 256, T = 1100, B = 1;
  const cell = new WeightNormLSTMCell(H, { inputSize: I, seed: 5 });
  const x = randomArray(new Random(6), T * B * I, 1, Float32Array);
  const a = cell.forward(x, { batchSize: B, training: true });
  const b = cell.forward(x, { batchSize: B, training: false });
  assertClose(t, b.outputs, a.outputs, { rtol: 0, atol: 0 }, 'outputs identical');
  assertClose(t, b.state.c, a.state.c, { rtol: 0, atol: 0 }, 'final c identical');
});

t.test('step() between forward() and backward() does not disturb the saved activations', async (t) => {
  const cell = new WeightNormLSTMCell(5, { inputSize: 3, seed: 8 });
  const rng = new Random(9);
  const x = randomArray(rng, 4 * 2 * 3, 1, Float32Array), dy = randomArray(rng, 4 * 2 * 5, 1, Float32Array);
  cell.forward(x, { batchSize: 2 });
  const before = cell.backward(dy);
  cell.forward(x, { batchSize: 2 });
  cell.step(randomArray(rng, 3 * 7, 1, Float32Array));
  const after = cell.backward(dy);
  assertClose(t, after.grads.kernel, before.grads.kernel, { rtol: 0, atol: 0 }, 'same kernel gradient');
  assertClose(t, after.dInputs, before.dInputs, { rtol: 0, atol: 0 }, 'same input gradient');
});

t.test('default init: gains equal the initial column norms, so the weight-norm cell starts equal to LSTMCell', async (t) => {
  const wn = new WeightNormLSTMCell(7, { inputSize: 5, seed: 42, numProj: 4 });
  const plain = new WeightNormLSTMCell(7, { inputSize: 5, seed: 42, numProj: 4, norm: false });
  const w = wn.getWeights();
  assertClose(t, plain.getWeights().kernel, w.kernel, { rtol: 0, atol: 0 }, 'same kernel from the same seed');
  const norm0 = new Float64Array(28);
  for (let r = 0; r < 5; r++) for (let j = 0; j < 28; j++) norm0[j] += w.kernel[r * 28 + j] ** 2;
  assertClose(t, w.norm_0, norm0.map(Math.sqrt), { rtol: 1e-6, atol: 0 }, 'norm_0 = column norms of the input block');
  const x = randomArray(new Random(1), 3 * 2 * 5, 1, Float32Array);
  assertClose(t, wn.forward(x, { batchSize: 2 }).outputs, plain.forward(x, { batchSize: 2 }).outputs, F32, 'same outputs');
  t.ok(w.bias.every((v) => v === 0), 'bias starts at 0');
  const again = new WeightNormLSTMCell(7, { inputSize: 5, seed: 42, numProj: 4 }).getWeights();
  for (const name of Object.keys(w)) assertClose(t, again[name], w[name], { rtol: 0, atol: 0 }, `seed reproduces ${name}`);
  const other = new WeightNormLSTMCell(7, { inputSize: 5, seed: 43, numProj: 4 }).getWeights();
  t.notOk(other.kernel.every((v, i) => v === w.kernel[i]), 'another seed gives another kernel');
  const limit = Math.sqrt(6 / (5 + 4 + 28));
  t.ok(w.kernel.every((v) => Math.abs(v) <= limit) && w.kernel.some((v) => Math.abs(v) > limit / 2), 'kernel is glorot-uniform');
});

t.test('TF initializer semantics: kernel, gains, peepholes and projection from the initializer; bias 0', async (t) => {
  const cell = new WeightNormLSTMCell(3, { inputSize: 2, usePeepholes: true, numProj: 2, initializer: { kind: 'uniform', min: 0.1, max: 0.2 }, seed: 1 });
  const w = cell.getWeights();
  for (const name of ['kernel', 'norm_0', 'norm_1', 'w_i_diag', 'w_f_diag', 'w_o_diag', 'projection/kernel', 'projection/norm_0']) {
    t.ok(w[name].every((v) => v >= 0.1 && v < 0.2 + 1e-7), `${name} drawn from the initializer`);
  }
  t.ok(w.bias.every((v) => v === 0), 'bias is 0');
  const f = new WeightNormLSTMCell(3, { inputSize: 2, initializer: (shape, name) => new Array(shape.reduce((a, b) => a * b, 1)).fill(name === 'kernel' ? 0.25 : 2) }).getWeights();
  t.ok(f.kernel.every((v) => v === 0.25) && f.norm_1.every((v) => v === 2), 'a function initializer gets each shape and name');
});
