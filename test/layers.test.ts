// The JS layers (lib/nn/layers.ts) over the native ops: Embedding, Dense, dropout and a stack with dropout,
// against float64 references written here and central differences; bad input refused with a code.
import t from 'tap';
import { Dense, dropout, Embedding, Random, StackedLSTM, WeightNormLSTMCell } from '../lib/index';
import { applyMask } from '../lib/nn/layers';
import { assertClose, centralDifferences, randomArray } from './helpers';

t.test('Embedding: rows of the table; backward adds into the rows, repeated ids add up', async (t) => {
  const emb = new Embedding(6, 3, { seed: 2, dtype: 'float64' }), table = emb.params.values;
  const ids = Int32Array.of(4, 0, 4, 5);
  const out = emb.forward(ids);
  t.same(Array.from(out), Array.from(ids).flatMap((id) => Array.from(table.subarray(id * 3, id * 3 + 3))), 'forward = the rows');
  const dy = Float64Array.from({ length: 12 }, (_, i) => i + 1);
  emb.backward(dy);
  const want = new Float64Array(18);
  ids.forEach((id, r) => { for (let k = 0; k < 3; k++) want[id * 3 + k] += dy[r * 3 + k]; });
  t.same(Array.from(emb.params.grad), Array.from(want), 'backward = the scatter-add');
  t.throws(() => emb.forward(Int32Array.of(1, 6)), { code: 'ERR_WNLSTM_RANGE' }, 'an id past the table');
  t.throws(() => emb.forward(Int32Array.of(-1)), { code: 'ERR_WNLSTM_RANGE' }, 'a negative id');
  t.throws(() => emb.forward(Float64Array.of(1) as never), { code: 'ERR_WNLSTM_TYPE' }, 'float ids');
  t.throws(() => new Embedding(3, 2).backward(new Float32Array(2)), { code: 'ERR_WNLSTM_NO_FORWARD' }, 'backward before forward');
  t.throws(() => emb.backward(new Float64Array(5)), { code: 'ERR_WNLSTM_SHAPE' }, 'dy of the wrong length');
});

t.test('Dense: y = x W + b; gradients of W, b and x by central differences (float64)', async (t) => {
  const rng = new Random(3), rows = 4, I = 5, O = 3;
  const dense = new Dense(I, O, { seed: 4, dtype: 'float64' });
  dense.bias.set(randomArray(rng, O));
  const x = randomArray(rng, rows * I), w = randomArray(rng, rows * O); // loss = sum(y * w)
  const reference = (values: Float64Array, input: Float64Array) => {
    let loss = 0;
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < O; j++) {
        let y = values[I * O + j];
        for (let k = 0; k < I; k++) y += input[r * I + k] * values[k * O + j];
        loss += y * w[r * O + j];
      }
    return loss;
  };
  const params = Float64Array.from(dense.params.values);
  const y = dense.forward(x, rows);
  t.ok(Math.abs(Array.from(y).reduce((s, v, i) => s + v * w[i], 0) - reference(params, x)) < 1e-12, 'forward = the reference');
  const dx = dense.backward(w);
  assertClose(t, dense.params.grad, centralDifferences((p) => reference(p, x), params), { rtol: 1e-7, atol: 1e-10 }, 'dW and db');
  assertClose(t, dx, centralDifferences((input) => reference(params, input), x), { rtol: 1e-7, atol: 1e-10 }, 'dx');
});

t.test('dropout: the masks of the generator, drawn natively, bit for bit', async (t) => {
  for (const Type of [Float32Array, Float64Array]) {
    const x = Type.from({ length: 1000 }, (_, i) => i / 100), rate = 0.3;
    const mine = new Random(7), reference = new Random(7);
    const copy = x.slice(), mask = dropout(x, rate, mine)!;
    // The reference: one uniform() per element, kept with probability 1 - rate and scaled by 1/(1 - rate).
    const want = Type.from(copy, () => (reference.uniform() < 1 - rate ? 1 / (1 - rate) : 0));
    t.same(Array.from(mask), Array.from(want), `${Type.name}: the mask`);
    t.same(Array.from(x), Array.from(copy, (v, i) => Type.of(v * want[i])[0]), `${Type.name}: x scaled in place`);
    t.same(mine.getState().map((v) => v >>> 0), reference.getState().map((v) => v >>> 0), `${Type.name}: the generator moved on as the reference`);
    const dx = Type.from({ length: 1000 }, () => 1);
    t.same(Array.from(applyMask(dx, mask)), Array.from(want), `${Type.name}: applyMask`);
  }
  t.equal(dropout(new Float32Array(3), 0, new Random(1)), null, 'rate 0: no mask');
  t.throws(() => dropout(new Float32Array(3), 1, new Random(1)), { code: 'ERR_WNLSTM_RANGE' }, 'rate 1');
  t.throws(() => dropout(Float32Array.of(NaN), 0.5, new Random(1)), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'NaN input');
});

t.test('a stack with dropout between layers: input gradient by central differences (float64, masks fixed)', async (t) => {
  const rng = new Random(5), T = 3, B = 2, I = 3;
  const cells = [new WeightNormLSTMCell(4, { inputSize: I, seed: 1, dtype: 'float64' }), new WeightNormLSTMCell(3, { inputSize: 4, seed: 2, dtype: 'float64' })];
  const stack = new StackedLSTM(cells, { dropout: 0.4, seed: 9 });
  const x = randomArray(rng, T * B * I), w = randomArray(rng, T * B * 3);
  const start = stack.rng.getState();
  const loss = (input: Float64Array) => {
    stack.rng.setState(start); // the same masks for every evaluation
    const y = stack.forward(input, { batchSize: B }).outputs;
    return Array.from(y).reduce((s, v, i) => s + v * w[i], 0);
  };
  loss(x);
  const dx = stack.backward(w);
  assertClose(t, dx, centralDifferences(loss, x), { rtol: 1e-5, atol: 1e-9 }, 'd inputs through two layers and a dropout mask');
  cells.forEach((c) => c.dispose());
});
