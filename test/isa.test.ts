// Each ISA variant of the CPU kernels (generic, AVX2, AVX-512) that this CPU can run gives the same
// results: the main suite runs only the best one, so the others run here in child processes.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { backendInfo } from '../lib/index';

const order = ['generic', 'avx2', 'avx512'];
const best = backendInfo().cpu.isa;
const script = path.join(__dirname, 'fixtures', 'isa-check.ts');

for (const isa of order.slice(0, order.indexOf(best) + 1)) {
  t.test(`kernels: ${isa}`, async (t) => {
    const r = spawnSync(process.execPath, ['--import=tsx', script], { env: { ...process.env, WNLSTM_CPU_ISA: isa }, encoding: 'utf8' });
    t.equal(r.status, 0, `child exited 0${r.status ? `: ${r.stderr.slice(-2000)}` : ''}`);
    const report = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}');
    t.equal(report.isa, isa, `ran the ${isa} kernels`);
    t.same(report.failures, [], 'float32 matches float64 for every case; a row alone gives what it gives in a batch, bit for bit');
  });
}
for (const isa of order.slice(order.indexOf(best) + 1)) t.skip(`kernels: ${isa} (this CPU lacks it)`);
