// The correctness chain on the CPU: (1) the native float64 forward equals an independent reference of
// SPEC's math for every option; (2) its backward equals central finite differences of that forward
// for every parameter, the inputs and the initial state; (3) the float32 path equals the float64 path.
import t from 'tap';
import { Random, WeightNormLSTMCell, type WeightNormLSTMCellOptions } from '../lib/index';
import { assertClose, randomArray } from './helpers';
import { referenceForward } from './reference';

// Tolerances, one table: float64 reference and FD are near exact; float32 is judged against float64.
const TOL = {
  reference: { rtol: 1e-10, atol: 1e-12 },
  finiteDifference: { rtol: 1e-6, atol: 1e-8 },
  float32Forward: { rtol: 1e-4, atol: 2e-6 },
  float32Grad: { rtol: 1e-3, atol: 2e-5 },
};
const EPS = 1e-6;

interface Case { name: string; options: Omit<WeightNormLSTMCellOptions, 'inputSize'>; I: number; H: number; T: number; B: number; seq?: number[] }

function optionMatrix(): Case[] {
  const cases: Case[] = [];
  for (const norm of [true, false])
    for (const usePeepholes of [false, true])
      for (const cellClip of [undefined, 0.3])
        for (const proj of [undefined, { numProj: 3 }, { numProj: 3, projClip: 0.15 }])
          for (const seq of [undefined, [4, 1, 0]]) {
            const options = { norm, usePeepholes, cellClip, ...proj };
            const name = `norm=${norm} peep=${usePeepholes} clip=${cellClip ?? '-'} proj=${proj?.numProj ?? '-'}` +
              ` projClip=${proj?.projClip ?? '-'} seqLen=${seq ? seq.join(',') : '-'}`;
            cases.push({ name, options, I: 4, H: 5, T: 4, B: 3, seq });
          }
  // Awkward sizes: B = 1, T = 1, H not a multiple of 8, I != H, I > H.
  cases.push({ name: 'B=1 T=1', options: { usePeepholes: true, numProj: 2 }, I: 3, H: 5, T: 1, B: 1 });
  cases.push({ name: 'B=1 T=6 H=9 I=2', options: { usePeepholes: true, cellClip: 0.5 }, I: 2, H: 9, T: 6, B: 1 });
  cases.push({ name: 'B=2 T=2 H=1 I=7 proj=1', options: { numProj: 1, projClip: 0.01 }, I: 7, H: 1, T: 2, B: 2 });
  for (const activation of ['sigmoid', 'relu', 'softsign', 'linear'] as const) {
    cases.push({ name: `activation=${activation}`, options: { activation, usePeepholes: true, numProj: 4 }, I: 3, H: 6, T: 3, B: 2 });
  }
  cases.push({ name: 'forgetBias=0.3', options: { forgetBias: 0.3 }, I: 3, H: 4, T: 3, B: 2 });
  return cases;
}

function setup(c: Case, dtype: 'float32' | 'float64') {
  const cell = new WeightNormLSTMCell(c.H, { inputSize: c.I, ...c.options, dtype, seed: 7 });
  const rng = new Random(11);
  // Random gains and a non-zero bias, so that no gradient is trivially zero.
  const w: Record<string, Float64Array> = {};
  for (const [name, shape] of Object.entries(cell.weightShapes)) {
    const n = shape.length === 2 ? shape[0] * shape[1] : shape[0];
    w[name] = randomArray(rng, n, name.includes('norm_') ? 1.5 : 0.8);
  }
  cell.setWeights(w);
  const P = cell.outputSize;
  const data = {
    x: randomArray(rng, c.T * c.B * c.I, 1.5), c0: randomArray(rng, c.B * c.H, 0.5), h0: randomArray(rng, c.B * P, 0.5),
    dy: randomArray(rng, c.T * c.B * P), dc: randomArray(rng, c.B * c.H), dh: randomArray(rng, c.B * P),
  };
  return { cell, w, data };
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * b[i]; return s; };

for (const c of optionMatrix()) {
  t.test(c.name, async (t) => {
    const { cell, w, data } = setup(c, 'float64');
    const opts = (x: Float64Array, c0: Float64Array, h0: Float64Array, training = false) =>
      ({ batchSize: c.B, initialState: { c: c0, h: h0 }, sequenceLength: c.seq, training });

    // (1) forward against the reference.
    const out = cell.forward(data.x, opts(data.x, data.c0, data.h0, true));
    const ref = referenceForward({ inputSize: c.I, numUnits: c.H, norm: cell.norm, ...c.options }, w, data.x, c.T, c.B,
      data.c0, data.h0, c.seq);
    assertClose(t, out.outputs, ref.y, TOL.reference, 'outputs equal the reference');
    assertClose(t, out.state.c, ref.c, TOL.reference, 'final c equals the reference');
    assertClose(t, out.state.h, ref.h, TOL.reference, 'final h equals the reference');
    if (c.options.cellClip) t.ok(out.state.c.some((v) => Math.abs(v) === c.options.cellClip), 'the cell clip is active');
    if (c.options.projClip) t.ok(out.outputs.some((v) => Math.abs(v) === c.options.projClip), 'the projection clip is active');

    // (2) backward against central differences of L = <dy, y> + <dc, c_T> + <dh, h_T>.
    const back = cell.backward(data.dy, { c: data.dc, h: data.dh });
    const loss = (x: Float64Array, c0: Float64Array, h0: Float64Array) => {
      const r = cell.forward(x, opts(x, c0, h0));
      return dot(data.dy, r.outputs) + dot(data.dc, r.state.c) + dot(data.dh, r.state.h);
    };
    const numeric = (values: Float64Array, evaluate: () => number) => {
      const g = new Float64Array(values.length);
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        values[i] = v + EPS; const up = evaluate();
        values[i] = v - EPS; const down = evaluate();
        values[i] = v;
        g[i] = (up - down) / (2 * EPS);
      }
      return g;
    };
    for (const [name, values] of Object.entries(w)) {
      const fd = numeric(values, () => { cell.setWeights({ [name]: values }); return loss(data.x, data.c0, data.h0); });
      cell.setWeights({ [name]: values });
      assertClose(t, back.grads[name], fd, TOL.finiteDifference, `d${name}`);
    }
    assertClose(t, back.dInputs, numeric(data.x, () => loss(data.x, data.c0, data.h0)), TOL.finiteDifference, 'dInputs');
    assertClose(t, back.dInitialState.c, numeric(data.c0, () => loss(data.x, data.c0, data.h0)), TOL.finiteDifference, 'dc0');
    assertClose(t, back.dInitialState.h, numeric(data.h0, () => loss(data.x, data.c0, data.h0)), TOL.finiteDifference, 'dh0');

    // (3) float32 against float64, same weights and data.
    const f32 = setup(c, 'float32').cell;
    f32.setWeights(w);
    const to32 = (a: Float64Array) => Float32Array.from(a);
    const o32 = f32.forward(to32(data.x), { batchSize: c.B, initialState: { c: to32(data.c0), h: to32(data.h0) }, sequenceLength: c.seq });
    assertClose(t, o32.outputs, out.outputs, TOL.float32Forward, 'float32 outputs');
    assertClose(t, o32.state.c, out.state.c, TOL.float32Forward, 'float32 final c');
    const b32 = f32.backward(to32(data.dy), { c: to32(data.dc), h: to32(data.dh) });
    for (const name of Object.keys(w)) assertClose(t, b32.grads[name], back.grads[name], TOL.float32Grad, `float32 d${name}`);
    assertClose(t, b32.dInputs, back.dInputs, TOL.float32Grad, 'float32 dInputs');
    assertClose(t, b32.dInitialState.h, back.dInitialState.h, TOL.float32Grad, 'float32 dh0');
  });
}

// Sizes that reach every GEMM blocking loop (K > 256, T*B > the row block, 4H > the column block):
// forward against the reference, backward against central differences at sampled coordinates.
for (const c of [{ I: 300, H: 6, T: 30, B: 10 }, { I: 2, H: 520, T: 2, B: 2 }]) {
  t.test(`large: I=${c.I} H=${c.H} T=${c.T} B=${c.B}`, async (t) => {
    const cell = new WeightNormLSTMCell(c.H, { inputSize: c.I, dtype: 'float64', seed: 5, usePeepholes: true });
    const rng = new Random(6);
    const w = cell.getWeights();
    w.bias = randomArray(rng, 4 * c.H, 0.5);
    w.norm_1 = randomArray(rng, 4 * c.H, 1.5);
    cell.setWeights(w);
    const x = randomArray(rng, c.T * c.B * c.I), dy = randomArray(rng, c.T * c.B * c.H);
    const out = cell.forward(x, { batchSize: c.B });
    const ref = referenceForward({ inputSize: c.I, numUnits: c.H, norm: true, usePeepholes: true }, w, x, c.T, c.B);
    assertClose(t, out.outputs, ref.y, TOL.reference, 'outputs equal the reference');
    const back = cell.backward(dy);
    const loss = () => dot(dy, cell.forward(x, { batchSize: c.B, training: false }).outputs);
    const sample = (values: Float64Array, set: () => void, grad: ArrayLike<number>, what: string) => {
      const idx = Array.from({ length: 12 }, () => Math.floor(rng.uniform() * values.length));
      const fd = idx.map((i) => {
        const v = values[i];
        values[i] = v + EPS; set(); const up = loss();
        values[i] = v - EPS; set(); const down = loss();
        values[i] = v; set();
        return (up - down) / (2 * EPS);
      });
      assertClose(t, idx.map((i) => grad[i]), fd, TOL.finiteDifference, `${what} at 12 sampled coordinates`);
    };
    for (const name of ['kernel', 'norm_0', 'norm_1', 'bias', 'w_o_diag']) {
      sample(w[name], () => cell.setWeights({ [name]: w[name] }), back.grads[name], `d${name}`);
    }
    sample(x, () => {}, back.dInputs, 'dInputs');
  });
}
