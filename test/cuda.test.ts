// The CUDA backend against the CPU backend on a real device: every case of test/cuda-cases.json (every
// option, sizes off every tile) in float64 and float32, through test/cuda-compare.js (which also runs
// alone on the GPU machine). Skipped, with the reason, where no CUDA device answers (CI has none); the
// same kernels run on the CPU in test/cuda-emulation.test.ts.
import t from 'tap';
import { backendInfo, WeightNormLSTMCell } from '../lib/index';

// eslint-disable-next-line @typescript-eslint/no-require-imports
type Report = Promise<{ checks: number; failures: string[] }>;
const { cases, compareBackends, compareLanguageModels, compareLayers } = require('./cuda-compare.js') as {
  cases: { I: number; H: number; T: number; B: number; lengths?: boolean; options: object }[];
  compareBackends(c: object, dtype: 'float64' | 'float32' | 'tf32'): Report;
  compareLanguageModels(dtype: 'float64' | 'float32', options?: { dropout?: number; embeddingProjection?: string }): Report;
  compareLayers(dtype: 'float64' | 'float32'): Report;
};

const cuda = backendInfo().cuda;
const skip = cuda.available ? false : `no usable CUDA device here: ${cuda.reason}`;

for (const c of cases) {
  t.test(`CUDA on TF32 tensor cores = the CPU in fp32 within TF32's tolerance: ${JSON.stringify(c)}`, { skip }, async (t) => {
    const { checks, failures } = await compareBackends(c, 'tf32');
    t.ok(checks >= 15, `${checks} comparisons ran`);
    t.same(failures, [], 'outputs, states and gradients within rtol 1e-2 (outputs), 3e-2 (gradients)');
  });
}

t.test('backend cuda without a device is a coded error', { skip: cuda.available }, async (t) => {
  t.throws(() => new WeightNormLSTMCell(4, { inputSize: 3, backend: 'cuda' }), { code: 'ERR_WNLSTM_BACKEND_UNAVAILABLE' });
});

for (const dtype of ['float64', 'float32'] as const) {
  t.test(`a language model on CUDA = on the CPU over 20 training steps, ${dtype}`, { skip }, async (t) => {
    const { checks, failures } = await compareLanguageModels(dtype);
    t.ok(checks >= 10, `${checks} comparisons ran`);
    t.same(failures, [], 'losses, states and every parameter block match the CPU backend');
  });
  t.test(`a language model whose first layer projects the embedding's table, on CUDA = on the CPU, ${dtype}`, { skip }, async (t) => {
    const { checks, failures } = await compareLanguageModels(dtype, { dropout: 0, embeddingProjection: 'table' });
    t.ok(checks >= 10, `${checks} comparisons ran`);
    t.same(failures, [], 'losses, states and every parameter block match the CPU backend');
  });
  t.test(`Embedding, Dense and a streaming session on CUDA tensors = on CPU tensors, ${dtype}`, { skip }, async (t) => {
    const { checks, failures } = await compareLayers(dtype);
    t.ok(checks >= 6, `${checks} comparisons ran`);
    t.same(failures, [], 'outputs, gradients and steps match');
  });
  for (const c of cases) {
    t.test(`CUDA = CPU, ${dtype}: ${JSON.stringify(c)}`, { skip }, async (t) => {
      const { checks, failures } = await compareBackends(c, dtype);
      t.ok(checks >= 15, `${checks} comparisons ran`);
      t.same(failures, [], 'outputs, states, gradients, inference, async and an SGD step match the CPU backend');
    });
  }
}
