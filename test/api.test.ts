// Bad input: every failure is a JS error with a code, the process survives, and the cell's weights are
// unchanged after a failed call. Also the backend report and the lifetime API.
import t from 'tap';
import { backendInfo, isWnlstmError, LSTMCell, WeightNormLSTMCell, type WnlstmErrorCode } from '../lib/index';

function throwsCode(t: Tap, fn: () => unknown, code: WnlstmErrorCode, what: string) {
  try {
    fn();
    t.fail(`${what}: did not throw`);
  } catch (err) {
    t.ok(isWnlstmError(err) && err.code === code, `${what}: ${code}${isWnlstmError(err) ? '' : ` (got ${String(err)})`}` +
      (isWnlstmError(err) && err.code !== code ? ` (got ${err.code}: ${err.message})` : ''));
  }
}
type Tap = { ok(ok: boolean, message: string): unknown; fail(message: string): unknown };

const make = () => new WeightNormLSTMCell(4, { inputSize: 3, seed: 1, usePeepholes: true, numProj: 2 });
const snapshot = (cell: WeightNormLSTMCell) => JSON.stringify(Object.entries(cell.getWeights()).map(([k, v]) => [k, Array.from(v)]));

t.test('constructor options', async (t) => {
  const any = WeightNormLSTMCell as unknown as new (...args: unknown[]) => WeightNormLSTMCell;
  throwsCode(t, () => new any(4), 'ERR_WNLSTM_TYPE', 'no options');
  throwsCode(t, () => new any(4, {}), 'ERR_WNLSTM_TYPE', 'no inputSize');
  throwsCode(t, () => new any('4', { inputSize: 3 }), 'ERR_WNLSTM_TYPE', 'numUnits a string');
  throwsCode(t, () => new WeightNormLSTMCell(0, { inputSize: 3 }), 'ERR_WNLSTM_RANGE', 'numUnits 0');
  throwsCode(t, () => new WeightNormLSTMCell(-3, { inputSize: 3 }), 'ERR_WNLSTM_RANGE', 'numUnits negative');
  throwsCode(t, () => new WeightNormLSTMCell(2.5, { inputSize: 3 }), 'ERR_WNLSTM_RANGE', 'numUnits fractional');
  throwsCode(t, () => new WeightNormLSTMCell(1e9, { inputSize: 3 }), 'ERR_WNLSTM_RANGE', 'numUnits absurd');
  throwsCode(t, () => new WeightNormLSTMCell(60000, { inputSize: 60000 }), 'ERR_WNLSTM_CONFIG', 'kernel absurdly large');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: NaN }), 'ERR_WNLSTM_RANGE', 'inputSize NaN');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, numProj: 0 }), 'ERR_WNLSTM_RANGE', 'numProj 0');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, cellClip: -1 }), 'ERR_WNLSTM_CONFIG', 'negative cellClip');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, cellClip: NaN }), 'ERR_WNLSTM_CONFIG', 'NaN cellClip');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, projClip: 1 }), 'ERR_WNLSTM_CONFIG', 'projClip without numProj');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, forgetBias: Infinity }), 'ERR_WNLSTM_CONFIG', 'infinite forgetBias');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, activation: 'gelu' as never }), 'ERR_WNLSTM_CONFIG', 'unknown activation');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, dtype: 'float16' as never }), 'ERR_WNLSTM_CONFIG', 'unknown dtype');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, backend: 'tpu' as never }), 'ERR_WNLSTM_CONFIG', 'unknown backend');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, usePeephole: true } as never), 'ERR_WNLSTM_CONFIG', 'misspelt option');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, usePeepholes: 'yes' as never }), 'ERR_WNLSTM_TYPE', 'non-boolean option');
  throwsCode(t, () => new LSTMCell(4, { inputSize: 3, norm: true } as never), 'ERR_WNLSTM_CONFIG', 'LSTMCell has no norm');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, seed: -1 }), 'ERR_WNLSTM_CONFIG', 'negative seed');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, initializer: { kind: 'xavier' } as never }), 'ERR_WNLSTM_CONFIG', 'unknown initializer');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, initializer: () => [1, 2] }), 'ERR_WNLSTM_CONFIG', 'initializer of the wrong length');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, initializer: NaN }), 'ERR_WNLSTM_NOT_FINITE', 'NaN initializer');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, precision: 'fp16' as never }), 'ERR_WNLSTM_CONFIG', 'unknown precision');
  throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, precision: 'tf32', dtype: 'float64' }), 'ERR_WNLSTM_CONFIG', 'tf32 for float64');
});

t.test("precision 'tf32' is for CUDA: a CPU cell computes in fp32 and gives the same results", async (t) => {
  const x = Float32Array.from({ length: 5 * 2 * 3 }, (_, i) => Math.sin(i));
  const [fp32, tf32] = (['fp32', 'tf32'] as const).map((precision) => new WeightNormLSTMCell(4, { inputSize: 3, seed: 2, precision }));
  t.equal(fp32.precision, 'fp32', 'fp32 by default');
  t.equal(tf32.precision, 'tf32', 'the precision asked for is kept');
  t.same(Array.from(tf32.forward(x, { batchSize: 2 }).outputs), Array.from(fp32.forward(x, { batchSize: 2 }).outputs), 'identical outputs on the CPU');
});

t.test('backend selection says why', async (t) => {
  const info = backendInfo();
  t.ok(['avx512', 'avx2', 'generic'].includes(info.cpu.isa), `cpu isa ${info.cpu.isa}`);
  t.ok(info.cpu.threads >= 1, `cpu threads ${info.cpu.threads}`);
  const cell = new WeightNormLSTMCell(4, { inputSize: 3 });
  t.equal(cell.backend, 'cpu');
  if (!info.cuda.available) {
    t.ok(info.cuda.reason.length > 10, `CUDA unavailable: ${info.cuda.reason}`);
    t.ok(cell.backendReason.includes(info.cuda.reason), 'the cell reports the fallback reason');
    throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, backend: 'cuda' }), 'ERR_WNLSTM_BACKEND_UNAVAILABLE', "backend 'cuda'");
  }
  t.equal(new WeightNormLSTMCell(4, { inputSize: 3, backend: 'cpu' }).backend, 'cpu');
  for (const device of [-1, 1.5, 2 ** 20, '0']) {
    throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, backend: 'cuda', device: device as number }), 'ERR_WNLSTM_CONFIG', `device ${String(device)}`);
  }
  if (info.cuda.available) {
    const missing = info.cuda.devices.length;
    throwsCode(t, () => new WeightNormLSTMCell(4, { inputSize: 3, backend: 'cuda', device: missing }), 'ERR_WNLSTM_CONFIG', `device ${missing} of ${missing}`);
  }
});

t.test('step and forward inputs', async (t) => {
  const cell = make();
  const before = snapshot(cell);
  const x = new Float32Array(6);
  throwsCode(t, () => cell.step([1, 2, 3] as never), 'ERR_WNLSTM_TYPE', 'x a plain array');
  throwsCode(t, () => cell.step(new Float64Array(3)), 'ERR_WNLSTM_TYPE', 'x of the wrong dtype');
  throwsCode(t, () => cell.step(new Float32Array(4)), 'ERR_WNLSTM_SHAPE', 'x not a multiple of inputSize');
  throwsCode(t, () => cell.step(new Float32Array(0)), 'ERR_WNLSTM_SHAPE', 'x empty');
  throwsCode(t, () => cell.step(new Float32Array([1, NaN, 0])), 'ERR_WNLSTM_NOT_FINITE', 'NaN in x');
  throwsCode(t, () => cell.step(x, { c: new Float32Array(8), h: new Float32Array([0, 0, Infinity, 0]) }), 'ERR_WNLSTM_NOT_FINITE', 'Infinity in h');
  // Large inputs are checked in blocks: the error still names the first bad element, in any block.
  for (const [Type, dtype] of [[Float32Array, 'float32'], [Float64Array, 'float64']] as const) {
    const big = new WeightNormLSTMCell(4, { inputSize: 3, dtype });
    for (const [at, value] of [[9001, NaN], [4096, -Infinity], [29999, Infinity]] as const) {
      const xs = new Type(10000 * 3).fill(0.5);
      xs[at] = value;
      xs[29999] = at === 29999 ? value : NaN;  // a later bad element must not be the one reported
      t.throws(() => big.forward(xs, { batchSize: 1 }), { code: 'ERR_WNLSTM_NOT_FINITE', message: new RegExp(`\\[${at}\\]`) },
        `${dtype}: ${value} at ${at} is reported at its index`);
    }
  }
  throwsCode(t, () => cell.step(x, { c: new Float32Array(7), h: new Float32Array(4) }), 'ERR_WNLSTM_SHAPE', 'c of the wrong length');
  throwsCode(t, () => cell.step(x, { c: new Float32Array(8), h: new Float32Array(8) }), 'ERR_WNLSTM_SHAPE', 'h of numUnits, not numProj');
  throwsCode(t, () => cell.step(x, { c: new Float32Array(8), h: 'h' as never }), 'ERR_WNLSTM_TYPE', 'h a string');
  throwsCode(t, () => cell.forward(x, undefined as never), 'ERR_WNLSTM_TYPE', 'forward without options');
  throwsCode(t, () => cell.forward(x, { batchSize: 0 }), 'ERR_WNLSTM_RANGE', 'batchSize 0');
  throwsCode(t, () => cell.forward(x, { batchSize: 1.5 }), 'ERR_WNLSTM_RANGE', 'batchSize fractional');
  throwsCode(t, () => cell.forward(x, { batchSize: '2' as never }), 'ERR_WNLSTM_TYPE', 'batchSize a string');
  throwsCode(t, () => cell.forward(x, { batchSize: 2 ** 40 }), 'ERR_WNLSTM_RANGE', 'batchSize absurd');
  throwsCode(t, () => cell.forward(x, { batchSize: 4 }), 'ERR_WNLSTM_SHAPE', 'inputs not a multiple of batchSize x inputSize');
  throwsCode(t, () => cell.forward(x, { batchSize: 2, sequenceLength: [1] }), 'ERR_WNLSTM_SHAPE', 'sequenceLength too short');
  throwsCode(t, () => cell.forward(x, { batchSize: 2, sequenceLength: [1, 2] }), 'ERR_WNLSTM_RANGE', 'sequenceLength beyond steps');
  throwsCode(t, () => cell.forward(x, { batchSize: 2, sequenceLength: [-1, 0] }), 'ERR_WNLSTM_RANGE', 'negative sequenceLength');
  throwsCode(t, () => cell.forward(x, { batchSize: 2, sequenceLength: [0.5, 1] }), 'ERR_WNLSTM_RANGE', 'fractional sequenceLength');
  throwsCode(t, () => cell.forward(x, { batchSize: 2, sequenceLength: 'ab' as never }), 'ERR_WNLSTM_TYPE', 'sequenceLength a string');
  throwsCode(t, () => cell.forward(x, { batchSize: 2, initialState: 5 as never }), 'ERR_WNLSTM_TYPE', 'initialState a number');
  t.equal(snapshot(cell), before, 'weights unchanged after the failed calls');
  const ok = cell.forward(x, { batchSize: 2, sequenceLength: new Int32Array([1, 0]) });
  t.equal(ok.outputs.length, 4, 'the cell still works');
});

t.test('backward', async (t) => {
  const cell = make();
  throwsCode(t, () => cell.backward(new Float32Array(4)), 'ERR_WNLSTM_NO_FORWARD', 'backward before any forward');
  const x = new Float32Array(12).fill(0.5);
  cell.forward(x, { batchSize: 2, training: false });
  throwsCode(t, () => cell.backward(new Float32Array(8)), 'ERR_WNLSTM_NO_FORWARD', 'backward after an inference forward');
  cell.forward(x, { batchSize: 2 });
  throwsCode(t, () => cell.backward(new Float32Array(7)), 'ERR_WNLSTM_SHAPE', 'dOutputs of the wrong length');
  throwsCode(t, () => cell.backward(new Float64Array(8)), 'ERR_WNLSTM_TYPE', 'dOutputs of the wrong dtype');
  throwsCode(t, () => cell.backward(new Float32Array(8).fill(NaN)), 'ERR_WNLSTM_NOT_FINITE', 'NaN in dOutputs');
  throwsCode(t, () => cell.backward(new Float32Array(8), { c: new Float32Array(3) }), 'ERR_WNLSTM_SHAPE', 'dFinalState.c of the wrong length');
  throwsCode(t, () => cell.backward(new Float32Array(8), 7 as never), 'ERR_WNLSTM_TYPE', 'dFinalState a number');
  const g = cell.backward(new Float32Array(8).fill(1));
  t.same(Object.keys(g.grads), Object.keys(cell.getWeights()), 'a gradient for every weight, by TF name');
  t.ok(g.grads.kernel.some((v) => v !== 0), 'non-zero kernel gradient');
  cell.setWeights({ bias: new Float32Array(16) });
  throwsCode(t, () => cell.backward(new Float32Array(8)), 'ERR_WNLSTM_NO_FORWARD', 'backward after the weights changed');
});

t.test('getWeights and setWeights', async (t) => {
  const cell = make();
  t.same(cell.weightShapes, {
    kernel: [5, 16], bias: [16], norm_0: [16], norm_1: [16], w_i_diag: [4], w_f_diag: [4], w_o_diag: [4],
    'projection/kernel': [4, 2], 'projection/norm_0': [2],
  }, 'TF names and shapes');
  const before = snapshot(cell);
  throwsCode(t, () => cell.setWeights({ kernal: new Float32Array(80) }), 'ERR_WNLSTM_UNKNOWN_WEIGHT', 'unknown name');
  throwsCode(t, () => cell.setWeights({ bias: new Float32Array(15) }), 'ERR_WNLSTM_SHAPE', 'wrong length');
  throwsCode(t, () => cell.setWeights({ bias: 'x'.repeat(16) as never }), 'ERR_WNLSTM_TYPE', 'a string');
  throwsCode(t, () => cell.setWeights({ bias: new Array(16).fill('1') }), 'ERR_WNLSTM_TYPE', 'strings inside');
  throwsCode(t, () => cell.setWeights(null as never), 'ERR_WNLSTM_TYPE', 'null');
  throwsCode(t, () => cell.setWeights({ kernel: new Float32Array(80).fill(1), bias: new Float32Array(16).fill(NaN) }),
    'ERR_WNLSTM_NOT_FINITE', 'a valid kernel with a NaN bias');
  t.equal(snapshot(cell), before, 'nothing written by any failed call (not even the valid kernel)');
  cell.setWeights({ bias: Array.from({ length: 16 }, (_, i) => i) });
  t.same(Array.from(cell.getWeights().bias), Array.from({ length: 16 }, (_, i) => i), 'a plain array is accepted');
  const w = cell.getWeights();
  w.bias[0] = 99;
  t.equal(cell.getWeights().bias[0], 0, 'getWeights returns copies');
});

t.test('dispose', async (t) => {
  const cell = make();
  t.equal(cell.disposed, false);
  cell.forward(new Float32Array(3), { batchSize: 1 });
  cell[Symbol.dispose]();
  t.equal(cell.disposed, true);
  cell.dispose();
  const x = new Float32Array(3);
  throwsCode(t, () => cell.step(x), 'ERR_WNLSTM_DISPOSED', 'step');
  throwsCode(t, () => cell.forward(x, { batchSize: 1 }), 'ERR_WNLSTM_DISPOSED', 'forward');
  throwsCode(t, () => cell.backward(new Float32Array(2)), 'ERR_WNLSTM_DISPOSED', 'backward');
  throwsCode(t, () => cell.getWeights(), 'ERR_WNLSTM_DISPOSED', 'getWeights');
  throwsCode(t, () => cell.setWeights({}), 'ERR_WNLSTM_DISPOSED', 'setWeights');
  // Cells left to the garbage collector are freed by their finalizers without incident.
  for (let i = 0; i < 200; i++) new WeightNormLSTMCell(64, { inputSize: 64 }).forward(new Float32Array(64 * 4), { batchSize: 4 });
  t.pass('200 undisposed cells created and dropped');
});
