// The CPU backend splits a sequence's batch rows between threads (or, with few rows, each step's units:
// a team that waits for the complete h), and every output element is computed by exactly one thread in a
// fixed order: so results must be bit-identical whatever the thread count, including more threads than
// cores (members then sleep).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const script = path.join(__dirname, 'fixtures', 'threads-run.ts');
const run = (threads: number) => {
  const r = spawnSync(process.execPath, ['--import=tsx', script], {
    env: { ...process.env, WNLSTM_NUM_THREADS: String(threads) }, encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`child with ${threads} threads failed: ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { threads: number; sha256: string };
};

t.test('results are bit-identical with 1, 2 and 3 threads', async (t) => {
  const one = run(1);
  t.equal(one.threads, 1, 'the child ran with 1 thread');
  for (const n of [2, 3]) {
    const r = run(n);
    t.equal(r.threads, n, `the child ran with ${n} threads`);
    t.equal(r.sha256, one.sha256, `${n} threads: every output, gradient and state equal to 1 thread's`);
  }
});
