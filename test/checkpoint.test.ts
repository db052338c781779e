// Checkpoint files against damage and against crafted headers: a flipped bit anywhere gives a coded
// error (never another model), a header with a valid checksum but absurd contents is refused before
// anything is allocated, and saving leaves no temporary files behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isWnlstmError } from '../lib/index';
import { loadCheckpoint, saveCheckpoint } from '../lib/core/checkpoint';
import { readCheckpoint, train } from '../lib/lm/train';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-ckpt-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const corpus = path.join(tmp, 'corpus.txt');
fs.writeFileSync(corpus, Array.from({ length: 200 }, (_, i) => `line ${i % 9} of some text`).join('\n'));
train({ corpus, layers: 2, hidden: 8, embedding: 6, bptt: 10, batch: 4, steps: 10, evalEvery: 5, evalTokens: 500, arms: ['wn'],
  checkpoint: path.join(tmp, 'model'), out: '' });
const model = path.join(tmp, 'model.wn.ckpt');
const original = fs.readFileSync(model);
const headerEnd = 16 + original.readUInt32LE(12);

/** The outcome of loading `bytes` as a training checkpoint: 'same', or the error's code. */
function outcome(bytes: Buffer, reference: ReturnType<typeof readCheckpoint>): string {
  const file = path.join(tmp, 'probe.ckpt');
  fs.writeFileSync(file, bytes);
  try {
    const r = readCheckpoint(file);
    const same = JSON.stringify(r.vocab.tokens) === JSON.stringify(reference.vocab.tokens) && r.arm === reference.arm &&
      JSON.stringify(r.options) === JSON.stringify(reference.options) &&
      r.lm.parameters().every((b, i) => Buffer.compare(Buffer.from(b.getValues().buffer), Buffer.from(reference.lm.parameters()[i].getValues().buffer)) === 0);
    r.lm.dispose();
    return same ? 'same' : 'different model';
  } catch (err) {
    return isWnlstmError(err) ? err.code : `uncoded ${(err as Error).constructor.name}: ${(err as Error).message}`;
  }
}

t.test('a flipped bit anywhere in the header gives ERR_WNLSTM_CHECKPOINT', async (t) => {
  const reference = readCheckpoint(model);
  const seen = new Map<string, number>();
  for (let at = 0; at < headerEnd; at++) {
    for (const bit of at < 16 ? [0, 1, 2, 3, 4, 5, 6, 7] : [at % 8]) { // every bit of the fixed fields, one per header byte
      const bytes = Buffer.from(original);
      bytes[at] ^= 1 << bit;
      const o = outcome(bytes, reference);
      seen.set(o, (seen.get(o) ?? 0) + 1);
    }
  }
  reference.lm.dispose();
  t.same([...seen.keys()], ['ERR_WNLSTM_CHECKPOINT'], `${headerEnd} header bytes: ${[...seen].map(([o, n]) => `${o} ${n}`).join(', ')}`);
});

t.test('flipped bits in the arrays and the checksum, and truncation, give ERR_WNLSTM_CHECKPOINT', async (t) => {
  for (const at of [headerEnd + 3, Math.floor((headerEnd + original.length) / 2), original.length - 40, original.length - 1]) {
    const bytes = Buffer.from(original);
    bytes[at] ^= 0x10;
    t.throws(() => { fs.writeFileSync(path.join(tmp, 'f.ckpt'), bytes); loadCheckpoint(path.join(tmp, 'f.ckpt')); },
      { code: 'ERR_WNLSTM_CHECKPOINT' }, `byte ${at} of ${original.length}`);
  }
  for (const length of [0, 10, 16, headerEnd, original.length - 1]) {
    fs.writeFileSync(path.join(tmp, 'f.ckpt'), original.subarray(0, length));
    t.throws(() => loadCheckpoint(path.join(tmp, 'f.ckpt')), { code: 'ERR_WNLSTM_CHECKPOINT' }, `truncated to ${length} bytes`);
  }
});

/** The checkpoint with its header changed by `edit` and the checksum made valid again. */
function crafted(edit: (header: { meta: Record<string, unknown>; arrays: { name: string; type: string; offset: number; length: number }[] }) => unknown, bytes = original): Buffer {
  const length = bytes.readUInt32LE(12);
  const start = 16 + length + ((8 - ((16 + length) % 8)) % 8);
  const header = JSON.parse(bytes.toString('utf8', 16, 16 + length));
  const changed = Buffer.from(JSON.stringify(edit(header) ?? header));
  const prefix = Buffer.from(bytes.subarray(0, 16));
  prefix.writeUInt32LE(changed.length, 12);
  const pad = Buffer.alloc((8 - ((16 + changed.length) % 8)) % 8);
  const body = Buffer.concat([prefix, changed, pad, bytes.subarray(start, bytes.length - 32)]);
  return Buffer.concat([body, crypto.createHash('sha256').update(body).digest()]);
}

t.test('a header with a valid checksum but absurd or missing contents is refused before allocating', async (t) => {
  const reference = readCheckpoint(model);
  t.equal(outcome(crafted(() => undefined), reference), 'same', 'the re-signing helper itself changes nothing');
  const options = (h: { meta: Record<string, unknown> }) => h.meta.options as Record<string, unknown>;
  const cases: [string, (h: Parameters<Parameters<typeof crafted>[0]>[0]) => unknown][] = [
    ['layers: 1e6', (h) => { options(h).layers = 1e6; }],
    ['hidden: 16384, layers: 64 (each within its range, the model too large)', (h) => { options(h).hidden = 16384; options(h).layers = 64; }],
    ['embedding: 7 (a valid model, but not the file\'s weights)', (h) => { options(h).embedding = 7; }],
    ['a vocabulary of words for a character model', (h) => { (h.meta.vocab as { level: string }).level = 'word'; }],
    ['no Adam moments after 10 steps', (h) => { h.meta.options = { ...options(h), optimizer: 'adam' }; (h.meta.optimizer as { kind: string }).kind = 'adam'; }],
    ['hidden: 9', (h) => { options(h).hidden = 9; }],
    ['level: "foo"', (h) => { options(h).level = 'foo'; }],
    ['an unknown option', (h) => { options(h).bogus = 1; }],
    ['no options', (h) => { delete h.meta.options; }],
    ['no vocabulary', (h) => { delete h.meta.vocab; }],
    ['a vocabulary with a token fewer', (h) => { (h.meta.vocab as { tokens: string[] }).tokens.pop(); }],
    ['a vocabulary with a repeated token', (h) => { const v = h.meta.vocab as { tokens: string[] }; v.tokens[1] = v.tokens[2]; }],
    ['no step', (h) => { delete h.meta.step; }],
    ['step -1', (h) => { h.meta.step = -1; }],
    ['a curve point without its loss', (h) => { delete (h.meta.curve as Record<string, unknown>[])[0].validLoss; }],
    ['arm "both"', (h) => { h.meta.arm = 'both'; }],
    ['no optimizer state', (h) => { delete h.meta.optimizer; }],
    ['an optimizer of another kind', (h) => { (h.meta.optimizer as { kind: string }).kind = 'adam'; }],
    ['a random state of 3 numbers', (h) => { (h.meta.rng as { model: number[] }).model.pop(); }],
    ['meta null', (h) => { h.meta = null as never; }],
    ['an array past the end', (h) => { h.arrays[0].offset = 1e9; }],
    ['a negative length', (h) => { h.arrays[0].length = -4; }],
    ['a fractional length', (h) => { h.arrays[0].length = 2.5; }],
    ['an unaligned offset', (h) => { h.arrays[1].offset += 4; }],
    ['an unknown type', (h) => { h.arrays[0].type = 'float16'; }],
    ['an array twice', (h) => { h.arrays.push({ ...h.arrays[0] }); }],
    ['99,999 arrays over the same bytes', (h) => { for (let i = 0; i < 99999; i++) h.arrays.push({ ...h.arrays[0], name: `alias${i}` }); }],
    ['the weights aliased to fake the model size', (h) => {
      const big = h.arrays.find((a) => a.name === 'weights/lstm_0/kernel')!;
      h.arrays.push({ ...big, name: 'weights/extra' });
    }],
    ['a missing weight', (h) => { h.arrays.splice(h.arrays.findIndex((a) => a.name === 'weights/lstm_1/kernel'), 1); }],
    ['a weight of the wrong type', (h) => { h.arrays[0].type = 'int32'; }],
    ["an array named '__proto__'", (h) => { h.arrays[0].name = '__proto__'; }],
    ['arrays not a list', (h) => { (h as Record<string, unknown>).arrays = { length: 1e9 }; }],
    ['another format', (h) => { (h as Record<string, unknown>).format = 'other'; }],
    ['a header that is a number', () => 7],
  ];
  for (const [what, edit] of cases) {
    const before = process.memoryUsage().rss, start = Date.now();
    const o = outcome(crafted(edit), reference);
    const grew = (process.memoryUsage().rss - before) / 2 ** 20;
    t.ok(o === 'ERR_WNLSTM_CHECKPOINT' && grew < 100 && Date.now() - start < 2000,
      `${what}: ${o} in ${Date.now() - start} ms, RSS +${grew.toFixed(0)} MiB`);
  }
  reference.lm.dispose();
});

t.test('format 1 files and oversized headers are refused with a reason', async (t) => {
  const v1 = Buffer.from(original);
  v1.writeUInt32LE(1, 8);
  fs.writeFileSync(path.join(tmp, 'v1.ckpt'), v1);
  t.throws(() => loadCheckpoint(path.join(tmp, 'v1.ckpt')), { code: 'ERR_WNLSTM_CHECKPOINT', message: /format 1/ });
  const huge = Buffer.from(original);
  huge.writeUInt32LE(0xffffffff, 12);
  const body = huge.subarray(0, huge.length - 32);
  crypto.createHash('sha256').update(body).digest().copy(huge, huge.length - 32);
  fs.writeFileSync(path.join(tmp, 'huge.ckpt'), huge);
  t.throws(() => loadCheckpoint(path.join(tmp, 'huge.ckpt')), { code: 'ERR_WNLSTM_CHECKPOINT', message: /header length/ });
});

t.test('saving removes the temporary files of writers that died, and keeps those of live ones', async (t) => {
  const dir = path.join(tmp, 'stale');
  fs.mkdirSync(dir);
  const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' }).stdout.trim();
  const host = os.hostname().replace(/[^A-Za-z0-9.]/g, '_');
  const stale = path.join(dir, `x.ckpt.tmp-${host}-${dead}-1`), live = path.join(dir, `x.ckpt.tmp-${host}-${process.pid}-999`);
  const remote = path.join(dir, `x.ckpt.tmp-elsewhere-${dead}-1`), other = path.join(dir, `y.ckpt.tmp-${host}-${dead}-1`);
  for (const f of [stale, live, remote, other]) fs.writeFileSync(f, 'partial');
  saveCheckpoint(path.join(dir, 'x.ckpt'), { meta: {}, arrays: { a: Float32Array.of(1) } });
  t.notOk(fs.existsSync(stale), "a dead writer's temporary file is removed");
  t.ok(fs.existsSync(live), "a live writer's is kept");
  t.ok(fs.existsSync(remote), "another host's is kept (its process ids mean nothing here)");
  t.ok(fs.existsSync(other), "another checkpoint's is left alone");
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith('x.ckpt')).sort(), ['x.ckpt', path.basename(live), path.basename(remote)].sort(),
    'no new temporary file left');
  t.throws(() => saveCheckpoint(path.join(dir, 'z.ckpt'), { meta: {}, arrays: { a: [1, 2] as never } }), { code: 'ERR_WNLSTM_TYPE' },
    'arrays that are not typed arrays: a coded error, nothing written');
  t.notOk(fs.readdirSync(dir).some((f) => f.startsWith('z.ckpt')));
});
