// The process around wnlstm: worker threads ended mid-call, exit while training in a worker, and the
// memory of cells dropped without dispose(). Each case runs in a child (test/fixtures/lifecycle.js),
// since a failure here kills the process.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const fixture = path.join(__dirname, 'fixtures', 'lifecycle.js');
const child = (mode: string, flags: string[] = []) =>
  spawnSync(process.execPath, [...flags, fixture, mode], { encoding: 'utf8', timeout: 120000 });

for (const mode of ['terminate-sync', 'terminate-async']) {
  t.test(`workers ended by terminate() in the middle of ${mode === 'terminate-sync' ? 'sync' : 'async'} calls`, async (t) => {
    const r = child(mode);
    t.equal(r.signal, null, `no signal (got ${r.signal})`);
    t.equal(r.status, 7, 'the process exits with its own code after 8 terminated workers');
    t.match(r.stdout, /survived; addon still mapped: true/, 'the addon stays loaded for its thread pool after the last worker using it exits');
    t.notMatch(r.stderr, /terminate called|Aborted|Segmentation/, `nothing aborted${r.stderr ? `: ${r.stderr.slice(-500)}` : ''}`);
  });
}

t.test('process.exit(0) while trainAsync() runs', async (t) => {
  const r = child('exit-during-train');
  t.equal(r.signal, null, `no signal (got ${r.signal})`);
  t.equal(r.status, 0, `exit code 0${r.status ? `: ${r.stderr.slice(-500)}` : ''}`);
});

t.test('cells dropped without dispose() are collected and their memory returned', async (t) => {
  const r = child('soak', ['--expose-gc']);
  t.equal(r.status, 0, `the soak ran${r.status ? `: ${r.stderr.slice(-500)}` : ''}`);
  const m = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}');
  t.ok(m.reported > 20 && m.reported < 40, `a live cell's native memory is reported to V8 (${m.reported.toFixed(1)} MiB)`);
  t.ok(Math.abs(m.afterDispose) < 1 && Math.abs(m.afterCollect) < 1,
    `and released on dispose() (${m.afterDispose.toFixed(1)} MiB left) or collection (${m.afterCollect.toFixed(1)} MiB left)`);
  t.ok(m.modelReported > 10, `a language model after a training step reports its arena, step buffers and cells (${m.modelReported.toFixed(1)} MiB)`);
  t.ok(Math.abs(m.afterModelCollect) < 1, `and once dropped it is collected with its cells (${m.afterModelCollect.toFixed(1)} MiB left)`);
  const leaked = m.cells * m.cellMiB;
  t.ok(m.yieldingPeak - m.start < 250, `${m.cells} cells of ~${m.cellMiB} MiB (${leaked} MiB if none were freed) in a loop that yields: ` +
    `RSS ${m.start.toFixed(0)} -> peak ${m.yieldingPeak.toFixed(0)} MiB (bound: +250 MiB)`);
  t.ok(m.afterYielding - m.start < 60, `after gc: ${m.afterYielding.toFixed(0)} MiB (bound: +60 MiB)`);
  t.ok(m.afterTight - m.start < 60, `20 more in a loop that never yields: peak ${m.tightPeak.toFixed(0)} MiB, then once it yields ` +
    `${m.afterTight.toFixed(0)} MiB (bound: +60 MiB)`);
});
