// The losses for layer-built models (lib/nn/losses.ts over the native ops): values against a float64
// reference written here, gradients against central differences, and bad input refused with a code.
import t from 'tap';
import { meanSquaredError, Random, softmaxCrossEntropy } from '../lib/index';
import { assertClose, centralDifferences, randomArray } from './helpers';

const rng = new Random(11);

t.test('softmax cross-entropy: value and gradient (float64), rows without loss', async (t) => {
  const rows = 5, C = 7, logits = randomArray(rng, rows * C, 3), targets = [3, 0, -1, 6, 2];
  const reference = (z: ArrayLike<number>) => {
    let total = 0;
    for (let r = 0; r < rows; r++) {
      if (targets[r] < 0) continue;
      const row = Array.from({ length: C }, (_, c) => z[r * C + c]), max = Math.max(...row);
      total += Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max - row[targets[r]];
    }
    return total / rows;
  };
  const before = logits.slice();
  const { loss, grad } = softmaxCrossEntropy(logits, targets, C);
  t.ok(Math.abs(loss - reference(logits)) < 1e-12, `loss ${loss.toFixed(6)} = the reference`);
  assertClose(t, grad, centralDifferences(reference, logits), { rtol: 1e-6, atol: 1e-10 }, 'gradient = central differences');
  t.ok(grad.subarray(2 * C, 3 * C).every((v) => v === 0), 'a row without loss has no gradient');
  t.same(Array.from(logits), Array.from(before), 'the logits are left as they were');
  const f32 = softmaxCrossEntropy(Float32Array.from(logits), Int32Array.from(targets), C);
  t.ok(Math.abs(f32.loss - loss) < 1e-5, `float32 within 1e-5 (${f32.loss.toFixed(6)})`);
});

t.test('mean squared error: value and gradient (float64 and float32)', async (t) => {
  const p = randomArray(rng, 12, 2), y = randomArray(rng, 12, 2);
  const reference = (q: ArrayLike<number>) => Array.from(q).reduce((s, v, i) => s + (v - y[i]) ** 2, 0) / q.length;
  const { loss, grad } = meanSquaredError(p, y);
  t.ok(Math.abs(loss - reference(p)) < 1e-14, `loss ${loss.toFixed(6)} = the reference`);
  assertClose(t, grad, centralDifferences(reference, p), { rtol: 1e-7, atol: 1e-10 }, 'gradient = central differences');
  const f32 = meanSquaredError(Float32Array.from(p), Float32Array.from(y));
  t.ok(f32.grad instanceof Float32Array && Math.abs(f32.loss - loss) < 1e-6, 'float32 in, float32 gradient out');
});

t.test('bad input to the losses is a coded error', async (t) => {
  const z = new Float64Array(6);
  t.throws(() => softmaxCrossEntropy([1, 2] as never, [0], 2), { code: 'ERR_WNLSTM_TYPE' }, 'logits not a typed array');
  t.throws(() => softmaxCrossEntropy(z, [0, 1], 4), { code: 'ERR_WNLSTM_SHAPE' }, 'logits not a multiple of classes');
  t.throws(() => softmaxCrossEntropy(z, [0], 3), { code: 'ERR_WNLSTM_SHAPE' }, 'one target for two rows');
  t.throws(() => softmaxCrossEntropy(z, [0, 3], 3), { code: 'ERR_WNLSTM_RANGE' }, 'a class past the end');
  t.throws(() => softmaxCrossEntropy(z, [0, 1.5], 3), { code: 'ERR_WNLSTM_RANGE' }, 'a fractional class');
  t.throws(() => softmaxCrossEntropy(Float64Array.of(1, NaN), [0], 2), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'NaN logits');
  t.throws(() => softmaxCrossEntropy(z, [0, 1], 0), { code: 'ERR_WNLSTM_RANGE' }, 'zero classes');
  t.throws(() => meanSquaredError(z, new Float64Array(5)), { code: 'ERR_WNLSTM_SHAPE' }, 'lengths differ');
  t.throws(() => meanSquaredError(z, new Float32Array(6)), { code: 'ERR_WNLSTM_TYPE' }, 'dtypes differ');
  t.throws(() => meanSquaredError(new Float32Array(0), new Float32Array(0)), { code: 'ERR_WNLSTM_SHAPE' }, 'empty');
  t.throws(() => meanSquaredError(z, Float64Array.of(0, 0, 0, Infinity, 0, 0)), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'an infinite target');
});
