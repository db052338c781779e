// The README's HTTP service, run as written (require('wnlstm') pointed at this checkout) on a model
// trained here, driven on 127.0.0.1 with overlapping requests for the same clients, then with many
// clients: every response is checked against a replay of that client's texts through a fresh session,
// and the session cache and the server's memory must stay bounded.
import t from 'tap';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { LanguageModelSession } from '../lib/nn/session';
import { readCheckpoint, train } from '../lib/lm/train';
import { Random } from '../lib/core/init';

const root = path.join(__dirname, '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const example = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]).find((code) => code.includes('http.createServer'));
const MAX_SESSIONS = 20, IDLE_MS = 1500;

interface Reply { status: number; body: { next?: string; probability?: number; position?: number; error?: string; sessions?: number } }
function get(port: number, query: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    http.get(`http://127.0.0.1:${port}${query}`, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d) => (text += d)).on('end', () => {
        try { resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }); } catch (err) { reject(err); }
      });
    }).on('error', reject);
  });
}

/** Runs the tasks with at most `width` in flight. */
async function pool<R>(tasks: (() => Promise<R>)[], width: number): Promise<R[]> {
  const out: R[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => { while (next < tasks.length) { const i = next++; out[i] = await tasks[i](); } }));
  return out;
}

const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;

t.test('the README service under overlapping requests', { timeout: 120000 }, async (t) => {
  t.ok(example, 'the README has the service example');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-service-'));
  const corpus = path.join(tmp, 'corpus.txt');
  const words = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'a', 'lazy', 'dog', 'and', 'runs', 'home'];
  const rng = new Random(5);
  const line = (n: number) => Array.from({ length: n }, () => words[Math.floor(rng.uniform() * words.length)]).join(' ');
  fs.writeFileSync(corpus, Array.from({ length: 400 }, () => line(8)).join('\n'));
  train({ corpus, layers: 1, hidden: 32, embedding: 16, bptt: 20, batch: 8, steps: 20, evalEvery: 20, evalTokens: 1000,
    arms: ['wn'], checkpoint: path.join(tmp, 'model'), out: '' });
  const model = path.join(tmp, 'model.wn.ckpt');
  const script = path.join(tmp, 'service.js');
  fs.writeFileSync(script, example!.replace("require('wnlstm')", `require(${JSON.stringify(root)})`));

  const child: ChildProcess = spawn(process.execPath, [script], {
    env: { ...process.env, MODEL: model, PORT: '0', MAX_SESSIONS: String(MAX_SESSIONS), IDLE_MS: String(IDLE_MS) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  t.teardown(() => { child.kill(); fs.rmSync(tmp, { recursive: true, force: true }); });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => { out += d; const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out); if (m) resolve(Number(m[1])); });
    child.on('exit', (code) => reject(new Error(`the service exited with ${code}: ${stderr}`)));
    setTimeout(() => reject(new Error(`the service did not start: ${stderr}`)), 30000).unref();
  });

  // Phase 1: 6 clients x 25 requests, 30 in flight, so that each client's requests overlap.
  const clients = 6, perClient = 25;
  const sent = Array.from({ length: clients * perClient }, (_, i) => ({ client: `c${i % clients}`, text: `${line(1 + (i % 4))} ` }));
  const start = Date.now();
  const replies = await pool(sent.map((r) => () => get(port, `/next?client=${r.client}&text=${encodeURIComponent(r.text)}`)), 30);
  const seconds = (Date.now() - start) / 1000;
  t.ok(replies.every((r) => r.status === 200), `all ${replies.length} overlapping requests answered 200 in ${seconds.toFixed(1)} s` +
    (replies.some((r) => r.status !== 200) ? `: ${JSON.stringify(replies.find((r) => r.status !== 200))}` : ''));

  // Each client's requests ran in some order, each after the one before: the positions say which.
  const { lm, vocab } = readCheckpoint(model);
  let checked = 0, worst = 0;
  for (let c = 0; c < clients; c++) {
    const mine = sent.map((r, i) => ({ ...r, reply: replies[i].body })).filter((r) => r.client === `c${c}`)
      .sort((a, b) => a.reply.position! - b.reply.position!);
    const session = new LanguageModelSession(lm);
    let position = 0, consistent = true;
    for (const r of mine) {
      const ids = vocab.encode(r.text).subarray(0, -1);
      let p = new Float32Array(0);
      for (const id of ids) p = session.next([id]);
      position += ids.length;
      const best = p.indexOf(Math.max(...p));
      worst = Math.max(worst, Math.abs(p[best] - r.reply.probability!));
      consistent &&= r.reply.position === position && r.reply.next === vocab.tokens[best];
      checked++;
    }
    t.ok(consistent, `client c${c}: each reply equals a replay of the client's texts in the order of their positions`);
  }
  t.equal(checked, sent.length, 'every reply checked');
  t.ok(worst <= 1e-6, `probabilities equal the replay's (max difference ${worst.toExponential(1)})`);
  lm.dispose();

  t.equal((await get(port, '/next?client=x&text=')).status, 400, 'an empty text: 400');
  t.equal((await get(port, `/next?client=x&text=${'a'.repeat(1001)}`)).status, 400, 'a text of 1001 tokens: 400');
  t.equal((await get(port, '/nothing')).status, 404, 'an unknown path: 404');

  // Phase 2: 300 clients, one request each; the cache keeps at most MAX_SESSIONS, then idle ones go.
  const rssBefore = rssMiB(child.pid!);
  const many = await pool(Array.from({ length: 300 }, (_, i) => () => get(port, `/next?client=new${i}&text=${encodeURIComponent(line(3))}`)), 30);
  t.ok(many.every((r) => r.status === 200), '300 more clients answered');
  const held = (await get(port, '/health')).body.sessions!;
  t.ok(held <= MAX_SESSIONS, `${held} sessions held after 306 clients (at most ${MAX_SESSIONS})`);
  await new Promise((r) => setTimeout(r, 2 * IDLE_MS + 500));
  t.equal((await get(port, '/health')).body.sessions, 0, `idle sessions evicted after ${IDLE_MS} ms`);
  const rssAfter = rssMiB(child.pid!);
  t.ok(rssAfter - rssBefore < 50, `server RSS ${rssBefore.toFixed(0)} -> ${rssAfter.toFixed(0)} MiB over 300 clients (bound: +50 MiB)`);
  t.equal(stderr, '', 'nothing on the server\'s stderr');
});
