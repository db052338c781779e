// The CUDA backend against the CPU backend (which the finite-difference tests check): every option,
// awkward sizes, float64 and float32, forward, backward, sequence lengths, inference, async and an
// optimizer step. Skipped, with the reason, where no CUDA device answers (CI has none).
//
// Tolerances: float64 rtol 1e-9 (the backends sum in different orders and use different libm's);
// float32 outputs and states rtol 1e-4, gradients rtol 1e-3 (the CPU's float activations are
// approximations within ~4e-7, and the sums run in different orders over up to T*B rows).
import t from 'tap';
import { backendInfo, LSTMCell, Random, SGD, WeightNormLSTMCell, type WeightNormLSTMCellOptions } from '../lib/index';
import { closeness, randomArray } from './helpers';

const cuda = backendInfo().cuda;
const skip = cuda.available ? false : `no usable CUDA device here: ${cuda.reason}`;

type Case = { I: number; H: number; T: number; B: number; lengths?: boolean; options: Partial<WeightNormLSTMCellOptions> };
const cases: Case[] = [
  { I: 5, H: 7, T: 4, B: 3, options: {} },
  { I: 5, H: 7, T: 4, B: 3, options: { norm: false } },
  { I: 6, H: 9, T: 5, B: 4, lengths: true, options: { usePeepholes: true, cellClip: 0.4 } },
  { I: 4, H: 10, T: 6, B: 5, lengths: true, options: { numProj: 3, projClip: 0.2, usePeepholes: true } },
  { I: 4, H: 10, T: 3, B: 2, options: { numProj: 6, norm: false, forgetBias: 0.3 } },
  { I: 3, H: 5, T: 3, B: 2, options: { activation: 'relu' } },
  { I: 3, H: 5, T: 3, B: 2, options: { activation: 'sigmoid' } },
  { I: 3, H: 5, T: 3, B: 2, options: { activation: 'softsign', usePeepholes: true } },
  { I: 3, H: 5, T: 3, B: 2, options: { activation: 'linear', cellClip: 1 } },
  // Sizes off every tile: 1, primes, past one 64-wide GEMM tile and one 32-unit step tile, K > 16.
  { I: 1, H: 1, T: 1, B: 1, options: {} },
  { I: 37, H: 33, T: 7, B: 17, lengths: true, options: { usePeepholes: true } },
  { I: 130, H: 67, T: 3, B: 70, options: { numProj: 65 } },
  { I: 300, H: 257, T: 2, B: 9, options: {} },
];

const tolerances = {
  float64: { out: { rtol: 1e-9, atol: 1e-11 }, grad: { rtol: 1e-9, atol: 1e-11 } },
  float32: { out: { rtol: 1e-4, atol: 2e-6 }, grad: { rtol: 1e-3, atol: 1e-4 } },
};

for (const dtype of ['float64', 'float32'] as const) {
  for (const c of cases) {
    const { I, H, T, B, options } = c;
    t.test(`CUDA = CPU, ${dtype}: I=${I} H=${H} T=${T} B=${B} ${JSON.stringify(options)}${c.lengths ? ' with lengths' : ''}`, { skip }, async (t) => {
      const tol = tolerances[dtype];
      const make = (backend: 'cpu' | 'cuda') => new WeightNormLSTMCell(H, { inputSize: I, ...options, dtype, seed: 11, backend });
      const cpu = make('cpu'), gpu = make('cuda');
      t.equal(gpu.backend, 'cuda', 'the cell runs on CUDA');
      const rng = new Random(12);
      const w = cpu.getWeights();
      w.bias = randomArray(rng, 4 * H, 0.5);
      cpu.setWeights(w);
      gpu.setWeights(w);
      const P = cpu.outputSize;
      const Arr = dtype === 'float64' ? Float64Array : Float32Array;
      const x = randomArray(rng, T * B * I, 1, Arr), dy = randomArray(rng, T * B * P, 1, Arr);
      const initialState = { c: randomArray(rng, B * H, 0.5, Arr), h: randomArray(rng, B * P, 0.5, Arr) };
      const dFinal = { c: randomArray(rng, B * H, 0.5, Arr), h: randomArray(rng, B * P, 0.5, Arr) };
      const sequenceLength = c.lengths ? Int32Array.from({ length: B }, (_, b) => (b * 3) % (T + 1)) : undefined;
      const check = (what: string, actual: ArrayLike<number>, expected: ArrayLike<number>, tl: { rtol: number; atol: number }) => {
        const problem = closeness(actual, expected, tl);
        t.ok(problem === null, problem === null ? what : `${what}: ${problem}`);
      };

      const a = cpu.forward(x, { batchSize: B, initialState, sequenceLength });
      const b = gpu.forward(x, { batchSize: B, initialState, sequenceLength });
      check('outputs', b.outputs, a.outputs, tol.out);
      check('final c', b.state.c, a.state.c, tol.out);
      check('final h', b.state.h, a.state.h, tol.out);
      const ga = cpu.backward(dy, dFinal), gb = gpu.backward(dy, dFinal);
      for (const name of Object.keys(ga.grads)) check(`d ${name}`, gb.grads[name], ga.grads[name], tol.grad);
      check('d inputs', gb.dInputs, ga.dInputs, tol.grad);
      check('d initial c', gb.dInitialState.c, ga.dInitialState.c, tol.grad);
      check('d initial h', gb.dInitialState.h, ga.dInitialState.h, tol.grad);

      const inference = gpu.forward(x, { batchSize: B, initialState, sequenceLength, training: false });
      check('inference outputs = training outputs', inference.outputs, b.outputs, { rtol: 0, atol: 0 });
      const later = await gpu.forwardAsync(x, { batchSize: B, initialState, sequenceLength });
      check('forwardAsync outputs', later.outputs, b.outputs, { rtol: 0, atol: 0 });
      cpu.dispose();
      gpu.dispose();
    });
  }
}

t.test('CUDA: an SGD step from both backends gives the same weights; LSTMCell; errors are coded', { skip }, async (t) => {
  const make = (backend: 'cpu' | 'cuda') => new LSTMCell(16, { inputSize: 8, usePeepholes: true, seed: 3, dtype: 'float64', backend });
  const cells = [make('cpu'), make('cuda')];
  const rng = new Random(4);
  const x = randomArray(rng, 5 * 4 * 8), dy = randomArray(rng, 5 * 4 * 16);
  const after = cells.map((cell) => {
    const optimizer = new SGD(cell.parameters(), { learningRate: 0.5, momentum: 0.9 });
    cell.forward(x, { batchSize: 4 });
    cell.backward(dy);
    optimizer.step();
    return cell.getWeights();
  });
  for (const name of Object.keys(after[0])) {
    const problem = closeness(after[1][name], after[0][name], { rtol: 1e-9, atol: 1e-11 });
    t.ok(problem === null, problem === null ? `${name} after one step` : `${name}: ${problem}`);
  }
  t.throws(() => cells[1].forward(new Float64Array(3), { batchSize: 4 }), { code: 'ERR_WNLSTM_SHAPE' }, 'wrong length');
  t.throws(() => cells[1].forward(Float64Array.from(x, (v, i) => (i === 7 ? NaN : v)), { batchSize: 4 }), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'NaN input');
  cells[1].dispose();
  t.throws(() => cells[1].forward(x, { batchSize: 4 }), { code: 'ERR_WNLSTM_DISPOSED' }, 'disposed');
});
