// The CUDA backend's own code (native/cuda/, compiled as C++ over test/native/cuda_emulation.h) run on
// the CPU and checked against the CPU backend by test/native/cuda_vs_cpu.cc. This checks the kernels'
// indexing, tiling, masking and barriers, and the cell's host logic, on machines without a GPU; what it
// cannot check (real concurrency, the memory model, speed) is left to test/cuda.test.ts on a GPU.
import t from 'tap';
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = path.join(__dirname, '..');
const compiler = process.env.CXX ?? 'g++';
const hasCompiler = spawnSync(compiler, ['--version']).status === 0;

t.test('CUDA kernels, emulated on the CPU, = the CPU backend', { skip: hasCompiler ? false : `no C++ compiler (${compiler})` }, async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-cuda-emulation-'));
  t.teardown(() => fs.rmSync(out, { recursive: true, force: true }));
  const flags = ['-O2', '-std=c++17', '-DWNLSTM_CUDA_EMULATION', '-fno-trapping-math', '-ffp-contract=fast',
    ...['test/native', 'native/include', 'native/cpu', 'native/cuda'].map((d) => `-I${path.join(root, d)}`)];
  const units: [string, string[]][] = [
    ['native/cuda/lstm_cell.cu', ['-x', 'c++']], ['native/cuda/ops.cu', ['-x', 'c++']], ['test/native/cuda_vs_cpu.cc', []], ['native/common/config.cc', []],
    ['native/cpu/lstm_cell.cc', []], ['native/cpu/kernels.cc', []], ['native/cpu/thread_pool.cc', []],
    ['native/cpu/ops.cc', []], ['native/common/model.cc', []], ['native/cpu/kernels_generic.cc', []],
    ['native/cpu/kernels_avx2.cc', ['-mavx2', '-mfma']], ['native/cpu/kernels_avx512.cc', ['-mavx512f', '-mfma']],
  ];
  const objects = await Promise.all(units.map(async ([source, extra], i) => {
    const object = path.join(out, `${i}.o`);
    await run(compiler, [...flags, ...extra, '-c', path.join(root, source), '-o', object]);
    return object;
  }));
  const binary = path.join(out, 'cuda_vs_cpu');
  await run(compiler, [...objects, '-o', binary, '-lpthread']);
  // The cases the GPU checks use too (test/cuda-cases.json), one line each (see cuda_vs_cpu.cc).
  const cases = JSON.parse(fs.readFileSync(path.join(__dirname, 'cuda-cases.json'), 'utf8')) as
    { I: number; H: number; T: number; B: number; lengths?: boolean; options: Record<string, number | string | boolean> }[];
  const input = cases.map(({ I, H, T, B, lengths, options: o }) => [I, H, T, B, lengths ? 1 : 0, o.norm === false ? 0 : 1,
    o.usePeepholes ? 1 : 0, o.cellClip ?? '-', o.numProj ?? 0, o.projClip ?? '-', o.forgetBias ?? 1, o.activation ?? 'tanh'].join(' ')).join('\n');
  // Each recurrence: one launch per step, and the persistent kernels (one cooperative launch per sequence,
  // wherever they apply: every case without a projection); the two runs share the 2 cores.
  await Promise.all(['steps', 'persistent'].map(async (recurrence) => {
    const child = execFile(binary, [], { encoding: 'utf8', maxBuffer: 1 << 24, env: { ...process.env, WNLSTM_CUDA_RECURRENCE: recurrence } });
    child.stdin?.end(input + '\n');
    const [stdout, code] = await new Promise<[string, number | null]>((resolve) => {
      let out = '', err = '';
      child.stdout?.on('data', (d) => (out += d));
      child.stderr?.on('data', (d) => (err += d));
      child.on('close', (c) => resolve([c ? err : out, c]));
    });
    t.equal(code, 0, `${recurrence}: the driver ran${code ? `: ${stdout}` : ''}`);
    const report = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as { cases: number; checks: number; failures: string[] };
    t.equal(report.cases, 3 * cases.length, `${recurrence}: the ${cases.length} cases of cuda-cases.json in float64, float32 and TF32`);
    t.ok(report.checks >= 24 * cases.length, `${recurrence}: ${report.checks} comparisons ran (cells, backend ops, sequence models)`);
    t.same(report.failures, [], `${recurrence}: every output, gradient and state matches the CPU backend`);
  }));
});
