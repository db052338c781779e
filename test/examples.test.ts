// The examples (examples/*.js) on small slices of their data: each trains both arms and the baseline and
// writes its results; its saved model then serves predictions over HTTP (predictAsync).
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');

/** Starts `script --serve` on a free port; resolves with the port once it listens. */
function startServer(script: string, out: string) {
  const child = spawn(process.execPath, [script, '--serve', '--out', out, '--port', '0'], { cwd: root });
  const port = new Promise<number>((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (d) => { text += d; const m = /listening on (\d+)/.exec(text); if (m) resolve(Number(m[1])); });
    child.on('exit', (code) => reject(new Error(`the server exited (${code})`)));
  });
  return { child, port };
}

for (const [script, args, classes] of [
  ['examples/spam.js', ['--limit', '300'], 2],
  ['examples/brown-genres.js', ['--files', '40'], 15],
] as const) {
  t.test(`${script}: trains, reports and serves`, async (t) => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-example-'));
    t.teardown(() => fs.rmSync(out, { recursive: true, force: true }));
    const r = spawnSync(process.execPath, [script, ...args, '--epochs', '1', '--seeds', '1', '--out', out], { cwd: root, encoding: 'utf8', timeout: 120000 });
    t.equal(r.status, 0, `runs${r.status ? `: ${r.stderr}` : ''}`);
    const m = JSON.parse(fs.readFileSync(path.join(out, 'metrics.json'), 'utf8'));
    t.same(m.arms.map((a: { arm: string }) => a.arm), ['weight norm', 'plain LSTM'], 'both arms');
    t.equal(m.data.classes, classes, 'the classes');
    for (const s of [m.baseline.test, ...m.arms.map((a: { test: unknown }) => a.test)]) {
      t.ok(s.accuracy >= 0 && s.accuracy <= 1 && s.f1 >= 0 && s.f1 <= 1, 'accuracy and F1 in [0, 1]');
    }
    t.ok(m.baseline.test.accuracy > 1 / classes, `the baseline beats chance (${m.baseline.test.accuracy})`);
    t.ok(fs.readFileSync(path.join(out, 'loss.svg'), 'utf8').startsWith('<svg'), 'a plot');
    const { child, port } = startServer(script, out);
    t.teardown(() => { child.kill(); });
    const url = `http://127.0.0.1:${await port}/classify`;
    const res = await fetch(url, { method: 'POST', body: 'Subject: win money now\n\nclick here to claim your free prize $$$' });
    t.equal(res.status, 200, 'classifies a text');
    const overlapping = await Promise.all(['free money', 'meeting at noon', 'the court ruled', 'win a prize now'].map((body) => fetch(url, { method: 'POST', body })));
    t.same(overlapping.map((r) => r.status), [200, 200, 200, 200], 'overlapping requests are all answered (the model queues its async calls)');
    const { probabilities } = await res.json() as { probabilities: number[] };
    t.equal(probabilities.length, classes, 'one probability per class');
    t.ok(Math.abs(probabilities.reduce((a, b) => a + b, 0) - 1) < 1e-5, 'they sum to 1');
    t.equal((await fetch(url.replace('classify', 'other'), { method: 'POST', body: 'x' })).status, 404, 'other paths: 404');
  });
}
