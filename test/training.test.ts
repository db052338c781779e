// Training: optimizers against hand-computed steps, the stacked language model's backward against
// finite differences, a fixed-seed tiny run, resume from a checkpoint, corpus and vocabulary.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Random, WeightNormLSTMCell } from '../lib/index';
import { loadCheckpoint, saveCheckpoint } from '../lib/core/checkpoint';
import { loadBrown, splitDocuments, tokenize, Vocabulary } from '../lib/lm/corpus';
import { LanguageModel } from '../lib/lm/model';
import { Adagrad, Adam, AdamW, ArrayParams, exponentialDecay, Optimizer, RMSProp, SGD, stepDecay } from '../lib/optim';
import { ArmResult, band, mergeResults, train } from '../lib/lm/train';
import { assertClose } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-test-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

// Two steps of each optimizer on p = [1, -2, 0.5] with gradients g1 then g2, against PyTorch's formulas
// written out here element by element.
const P0 = [1, -2, 0.5], G1 = [0.5, -1, 2], G2 = [-0.3, 0.2, 1];
type Ref = (p: number[], grads: number[][]) => number[];
const refs: Record<string, [(b: ArrayParams) => Optimizer, Ref]> = {
  'SGD lr 0.1 weight decay 0.01': [(b) => new SGD([b], { learningRate: 0.1, weightDecay: 0.01 }), (p, gs) => {
    for (const g of gs) p = p.map((v, i) => v - 0.1 * (g[i] + 0.01 * v));
    return p;
  }],
  'SGD momentum 0.9': [(b) => new SGD([b], { learningRate: 0.1, momentum: 0.9 }), (p, gs) => {
    let buf: number[] | null = null;
    for (const g of gs) { buf = buf ? buf.map((m, i) => 0.9 * m + g[i]) : [...g]; p = p.map((v, i) => v - 0.1 * buf![i]); }
    return p;
  }],
  'SGD Nesterov 0.9': [(b) => new SGD([b], { learningRate: 0.1, momentum: 0.9, nesterov: true }), (p, gs) => {
    let buf: number[] | null = null;
    for (const g of gs) { buf = buf ? buf.map((m, i) => 0.9 * m + g[i]) : [...g]; p = p.map((v, i) => v - 0.1 * (g[i] + 0.9 * buf![i])); }
    return p;
  }],
  'Adam': [(b) => new Adam([b], { learningRate: 0.01 }), (p, gs) => {
    let m = [0, 0, 0], v = [0, 0, 0];
    gs.forEach((g, k) => {
      const t = k + 1;
      m = m.map((x, i) => 0.9 * x + 0.1 * g[i]);
      v = v.map((x, i) => 0.999 * x + 0.001 * g[i] ** 2);
      p = p.map((x, i) => x - 0.01 * (m[i] / (1 - 0.9 ** t)) / (Math.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8));
    });
    return p;
  }],
  'AdamW weight decay 0.1': [(b) => new AdamW([b], { learningRate: 0.01, weightDecay: 0.1 }), (p, gs) => {
    let m = [0, 0, 0], v = [0, 0, 0];
    gs.forEach((g, k) => {
      const t = k + 1;
      m = m.map((x, i) => 0.9 * x + 0.1 * g[i]);
      v = v.map((x, i) => 0.999 * x + 0.001 * g[i] ** 2);
      p = p.map((x, i) => x * (1 - 0.01 * 0.1) - 0.01 * (m[i] / (1 - 0.9 ** t)) / (Math.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8));
    });
    return p;
  }],
  'RMSProp': [(b) => new RMSProp([b], { learningRate: 0.01, alpha: 0.9 }), (p, gs) => {
    let s = [0, 0, 0];
    for (const g of gs) { s = s.map((x, i) => 0.9 * x + 0.1 * g[i] ** 2); p = p.map((x, i) => x - 0.01 * g[i] / (Math.sqrt(s[i]) + 1e-8)); }
    return p;
  }],
  'RMSProp momentum 0.5': [(b) => new RMSProp([b], { learningRate: 0.01, alpha: 0.9, momentum: 0.5 }), (p, gs) => {
    let s = [0, 0, 0], buf = [0, 0, 0];
    for (const g of gs) {
      s = s.map((x, i) => 0.9 * x + 0.1 * g[i] ** 2);
      buf = buf.map((x, i) => 0.5 * x + g[i] / (Math.sqrt(s[i]) + 1e-8));
      p = p.map((x, i) => x - 0.01 * buf[i]);
    }
    return p;
  }],
  'Adagrad': [(b) => new Adagrad([b], { learningRate: 0.1 }), (p, gs) => {
    let s = [0, 0, 0];
    for (const g of gs) { s = s.map((x, i) => x + g[i] ** 2); p = p.map((x, i) => x - 0.1 * g[i] / (Math.sqrt(s[i]) + 1e-10)); }
    return p;
  }],
};

t.test('optimizers against hand-computed steps (float64 and float32)', async (t) => {
  for (const [name, [make, ref]] of Object.entries(refs)) {
    for (const Type of [Float64Array, Float32Array]) {
      const block = new ArrayParams('p', Type.from(P0));
      const opt = make(block);
      for (const g of [G1, G2]) { block.grad.set(g); opt.step(); }
      assertClose(t, block.values, ref([...P0], [G1, G2]), Type === Float64Array ? { rtol: 1e-12, atol: 1e-14 } : { rtol: 1e-6, atol: 1e-7 },
        `${name} (${Type.name})`);
    }
  }
});

t.test('global-norm clipping, schedules, state save and restore', async (t) => {
  const b = new ArrayParams('p', Float64Array.from([0, 0]));
  b.grad.set([3, 4]);
  const norm = new SGD([b], { learningRate: 1, clipNorm: 1 }).step();
  t.equal(norm, 5, 'step() returns the norm before clipping');
  assertClose(t, b.values, [-0.6, -0.8], { rtol: 1e-12, atol: 0 }, 'gradients scaled to norm 1');
  const zaremba = stepDecay({ initial: 1, factor: 0.5, after: 4 });
  t.same([0, 1, 2, 3, 4, 5].map(zaremba), [1, 1, 1, 1, 0.5, 0.25], "Zaremba's step decay");
  t.equal(exponentialDecay({ initial: 2, rate: 0.5, steps: 10 })(0, 20), 0.5, 'exponential decay');

  const run = (restoreAt?: number) => {
    const block = new ArrayParams('p', Float64Array.from(P0));
    let opt = new Adam([block], { learningRate: 0.01 });
    [G1, G2, G1, G2].forEach((g, k) => {
      if (k === restoreAt) { const s = opt.getState(); opt = new Adam([block], { learningRate: 0.5 }); opt.setState(s); }
      block.grad.set(g);
      opt.step();
    });
    return block.values;
  };
  assertClose(t, run(2), run(), { rtol: 0, atol: 0 }, 'a restored Adam continues exactly');
  t.throws(() => new SGD([b], { learningRate: -1 }), { code: 'ERR_WNLSTM_CONFIG' }, 'negative learning rate');
  t.throws(() => new SGD([b], { nesterov: true }), { code: 'ERR_WNLSTM_CONFIG' }, 'Nesterov without momentum');
  b.grad.set([NaN, 0]);
  t.throws(() => new SGD([b]).step(), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'a NaN gradient is reported, not applied');
});

t.test('a cell is a parameter block: backward accumulates, the native update applies', async (t) => {
  const cell = new WeightNormLSTMCell(3, { inputSize: 2, seed: 1, dtype: 'float64' });
  const [block] = cell.parameters();
  const x = new Float64Array(2 * 2 * 2).fill(0.3), dy = new Float64Array(2 * 2 * 3).fill(1);
  cell.forward(x, { batchSize: 2 });
  const g = cell.backward(dy);
  cell.forward(x, { batchSize: 2 });
  cell.backward(dy);
  const flat = Object.values(g.grads).flatMap((a) => Array.from(a));
  assertClose(t, block.grad, flat.map((v) => 2 * v), { rtol: 1e-12, atol: 1e-15 }, 'two backward calls accumulate');
  const before = block.getValues();
  new SGD([block], { learningRate: 0.5 }).step();
  assertClose(t, block.getValues(), Array.from(before, (v, i) => v - 0.5 * block.grad[i]), { rtol: 1e-12, atol: 1e-15 }, 'p -= lr g in place');
  t.throws(() => cell.backward(dy), { code: 'ERR_WNLSTM_NO_FORWARD' }, 'an update invalidates the saved forward');
  block.zeroGrad();
  t.ok(block.grad.every((v) => v === 0), 'zeroGrad');
});

t.test('stacked language model: backward equals central differences (float64)', async (t) => {
  for (const norm of [true, false]) {
    const lm = new LanguageModel({ vocabSize: 6, embeddingSize: 3, hiddenSize: 4, layers: 2, norm, initScale: 0.5, seed: 3, dtype: 'float64' });
    const B = 2, inputs = Int32Array.from([0, 1, 2, 3, 4, 5]), targets = Int32Array.from([1, 2, 3, 4, 5, 0]);
    const state = lm.zeroState(B).map((s) => ({ c: s.c.map(() => 0.1), h: s.h.map(() => -0.2) }));
    const blocks = lm.parameters();
    blocks.forEach((b) => b.zeroGrad());
    lm.step(inputs, targets, B, state, true);
    const eps = 1e-6;
    for (const b of blocks) {
      const values = b.getValues(), fd = new Float64Array(b.size);
      for (let i = 0; i < b.size; i++) {
        const v = values[i];
        values[i] = v + eps; b.setValues(values); const up = lm.step(inputs, targets, B, state, false).loss;
        values[i] = v - eps; b.setValues(values); const down = lm.step(inputs, targets, B, state, false).loss;
        values[i] = v; b.setValues(values);
        fd[i] = (up - down) / (2 * eps);
      }
      assertClose(t, b.grad, fd, { rtol: 1e-5, atol: 1e-9 }, `norm=${norm}: d${b.name} (${b.size} values)`);
    }
  }
});

const tinyCorpus = path.join(tmp, 'tiny.txt');
fs.writeFileSync(tinyCorpus, Array.from({ length: 400 }, (_, i) => `the cat sat on mat ${i % 7}.`).join('\n'));
const tiny = { corpus: tinyCorpus, level: 'char' as const, layers: 1, hidden: 24, embedding: 16, bptt: 20, batch: 8, lr: 0.01,
  evalEvery: 40, evalTokens: 2000, out: '' };

t.test('a fixed-seed tiny run learns', async (t) => {
  const r = train({ ...tiny, steps: 200, arms: ['wn', 'plain'] });
  for (const a of r.arms) {
    t.equal(a.diverged, null, `${a.arm}: no divergence`);
    t.ok(a.curve[0].trainLoss > a.final.validLoss + 1, `${a.arm}: the loss fell by more than 1 nat (from ${a.curve[0].trainLoss.toFixed(3)})`);
    t.ok(a.final.validLoss < 0.3, `${a.arm}: validation loss below 0.3 nats/char (${a.final.validLoss.toFixed(3)})`);
  }
});

t.test('--seeds: every run in the metrics, the summary and the gap computed from them, the band bounds the curves', async (t) => {
  const out = path.join(tmp, 'seeds');
  const r = train({ ...tiny, steps: 40, evalEvery: 20, seeds: 3, seed: 5, arms: ['wn', 'plain'], checkpoint: path.join(tmp, 'seeds-ck'), out });
  t.same(r.arms.map((a) => `${a.arm} ${a.seed}`), ['wn 5', 'plain 5', 'wn 6', 'plain 6', 'wn 7', 'plain 7'], 'each seed runs each arm');
  const single = train({ ...tiny, steps: 40, evalEvery: 20, seed: 6, arms: ['wn'] });
  const losses = (a: ArmResult) => a.curve.map((p) => [p.trainLoss, p.validLoss]);
  t.same(losses(r.arms[2]), losses(single.arms[0]), 'a seed\'s run is the run with that seed alone');
  t.not(r.arms[0].final.validLoss, r.arms[2].final.validLoss, 'the seeds differ');
  const metrics = JSON.parse(fs.readFileSync(path.join(out, 'metrics.json'), 'utf8'));
  t.equal(metrics.arms.length, 6, 'metrics.json keeps every run');
  for (const arm of ['wn', 'plain'] as const) {
    const runs = r.arms.filter((a) => a.arm === arm), s = r.summary.arms.find((a) => a.arm === arm)!;
    const v = runs.map((a) => a.final.validLoss), mean = v.reduce((a, b) => a + b, 0) / 3;
    const std = Math.sqrt(v.reduce((a, x) => a + (x - mean) ** 2, 0) / 2);
    t.same(s.seeds, [5, 6, 7]);
    t.ok(Math.abs(s.validLoss.mean - mean) < 1e-12 && Math.abs(s.validLoss.std - std) < 1e-12, `${arm}: mean ${mean.toFixed(4)} and sample std ${std.toFixed(4)} of the final validation losses`);
    t.same([s.validLoss.min, s.validLoss.max], [Math.min(...v), Math.max(...v)], `${arm}: min and max`);
    t.same(s.testLoss.values, runs.map((a) => a.final.testLoss), `${arm}: the test losses`);
  }
  const gaps = [5, 6, 7].map((seed) => r.arms.find((a) => a.arm === 'plain' && a.seed === seed)!.final.validLoss -
    r.arms.find((a) => a.arm === 'wn' && a.seed === seed)!.final.validLoss);
  t.same(r.summary.gap!.validLoss.values, gaps, 'the gap is plain - weight norm, seed by seed');
  const svg = fs.readFileSync(path.join(out, 'loss.svg'), 'utf8');
  t.equal((svg.match(/fill-opacity="0.15"/g) ?? []).length, 4, 'a band per arm for train and validation');
  for (const arm of ['wn', 'plain'] as const) {
    const curves = r.arms.filter((a) => a.arm === arm).map((a) => a.curve);
    for (const p of band(curves, 'validLoss')) {
      const values = curves.map((c) => c.find((q) => q.step === p.step)!.validLoss);
      t.ok(values.every((v) => p.min <= v && v <= p.max) && p.min === Math.min(...values) && p.max === Math.max(...values),
        `${arm}, step ${p.step}: the band is the min and max of the 3 curves`);
    }
  }
  t.ok(fs.existsSync(path.join(tmp, 'seeds-ck.plain.s7.ckpt')), 'each seed has its own checkpoint');
  const resumed = train({ resume: path.join(tmp, 'seeds-ck.wn.s6.ckpt'), steps: 40 });
  t.same(resumed.arms.map((a) => [a.arm, a.seed]), [['wn', 6]], 'a seed\'s checkpoint resumes that run');
});

t.test('merging reports made apart gives the report of one run over every seed; mismatched or repeated runs are refused', async (t) => {
  const base = { ...tiny, steps: 40, evalEvery: 20 };
  const together = train({ ...base, seeds: 2, seed: 3, arms: ['wn', 'plain'] });
  const [a, b] = [3, 4].map((seed) => train({ ...base, seed, arms: ['wn', 'plain'], out: path.join(tmp, `merge-${seed}`) }));
  const merged = mergeResults([b, a]);
  t.same(merged.arms.map((r) => `${r.arm} ${r.seed}`), ['wn 3', 'plain 3', 'wn 4', 'plain 4'], 'every run, by seed and arm');
  t.same(merged.arms.map((r) => r.final), together.arms.map((r) => r.final), 'the same runs as one process with --seeds 2');
  t.same(merged.summary, together.summary, 'and the same summary (means, spreads, the gap seed by seed)');
  t.equal(merged.options.seeds, 2);
  t.throws(() => mergeResults([a, a]), { code: 'ERR_WNLSTM_CONFIG' }, 'a run twice');
  const other = train({ ...base, lr: 0.02, seed: 5, arms: ['wn'] });
  t.throws(() => mergeResults([a, other]), { code: 'ERR_WNLSTM_CONFIG', message: /lr/ }, 'other options');
  // The command line: wnlstm merge DIR... --out DIR.
  const out = path.join(tmp, 'merged');
  const cli = spawnSync(process.execPath, [path.join(__dirname, '..', 'bin', 'wnlstm.js'), 'merge', path.join(tmp, 'merge-3'), path.join(tmp, 'merge-4'), '--out', out], { encoding: 'utf8' });
  t.equal(cli.status, 0, `wnlstm merge ran${cli.status ? `: ${cli.stderr}` : ''}`);
  const written = JSON.parse(fs.readFileSync(path.join(out, 'metrics.json'), 'utf8'));
  t.same(written.summary, together.summary, 'it writes the merged metrics.json');
  t.ok(fs.existsSync(path.join(out, 'loss.svg')), 'and the plot');
  const bad = spawnSync(process.execPath, [path.join(__dirname, '..', 'bin', 'wnlstm.js'), 'merge', path.join(tmp, 'merge-3')], { encoding: 'utf8' });
  t.equal(bad.status, 2, 'a bad command line exits 2');
});

t.test('resume from a checkpoint gives the same next losses', async (t) => {
  const prefix = path.join(tmp, 'not', 'yet', 'there', 'ck'); // saving creates the folders
  const uninterrupted = train({ ...tiny, steps: 120, arms: ['wn'], dropout: 0.2 });
  train({ ...tiny, steps: 40, arms: ['wn'], dropout: 0.2, checkpoint: prefix });
  const resumed = train({ resume: `${prefix}.wn.ckpt`, steps: 120, checkpoint: '' });
  const a = uninterrupted.arms[0].curve, b = resumed.arms[0].curve;
  t.equal(b.length, a.length, 'same number of evaluations');
  for (let i = 1; i < a.length; i++) {
    t.equal(b[i].trainLoss, a[i].trainLoss, `step ${a[i].step}: same training loss`);
    t.equal(b[i].validLoss, a[i].validLoss, `step ${a[i].step}: same validation loss`);
  }
});

t.test('checkpoint files: checksum, truncation, corruption', async (t) => {
  const file = path.join(tmp, 'x.ckpt');
  saveCheckpoint(file, { meta: { hello: 'world' }, arrays: { a: Float32Array.of(1, 2, 3), b: Int32Array.of(7), c: Float64Array.of(0.5) } });
  const back = loadCheckpoint(file);
  t.same(back.meta, { hello: 'world' });
  t.same(Array.from(back.arrays.a), [1, 2, 3]);
  t.same(Array.from(back.arrays.b), [7]);
  t.ok(back.arrays.c instanceof Float64Array, 'types kept');
  t.notOk(fs.readdirSync(tmp).some((f) => f.includes('.tmp-')), 'no temporary file left');
  const bytes = fs.readFileSync(file);
  fs.writeFileSync(file, bytes.subarray(0, bytes.length - 3));
  t.throws(() => loadCheckpoint(file), { code: 'ERR_WNLSTM_CHECKPOINT' }, 'truncated');
  const flipped = Buffer.from(bytes);
  flipped[flipped.length - 2] ^= 0xff;
  fs.writeFileSync(file, flipped);
  t.throws(() => loadCheckpoint(file), { code: 'ERR_WNLSTM_CHECKPOINT' }, 'a flipped byte fails the checksum');
  fs.writeFileSync(file, 'not a checkpoint at all');
  t.throws(() => loadCheckpoint(file), { code: 'ERR_WNLSTM_CHECKPOINT' }, 'wrong magic');
  t.throws(() => loadCheckpoint(path.join(tmp, 'missing')), { code: 'ERR_WNLSTM_CHECKPOINT' }, 'missing file');
});

t.test('Brown corpus, splits by file, vocabularies', async (t) => {
  const docs = loadBrown();
  t.equal(docs.length, 500, '500 files');
  t.equal(docs[0].name, 'ca01');
  t.ok(docs[0].text.startsWith('The Fulton County Grand Jury said Friday'), 'tags stripped');
  t.notOk(/\/(at|nn|np|vbd|in)\b/.test(docs[0].text), 'no /tag left');
  const split = splitDocuments(docs);
  t.same([split.train.length, split.valid.length, split.test.length], [450, 25, 25], 'train/validation/test by file');
  const words = Vocabulary.build(split.train.map((d) => d.text), 'word', 1000);
  t.equal(words.size, 1000, 'top-k words with <unk>');
  t.equal(words.tokens[0], '<unk>');
  t.ok(words.id('the') > 0 && words.id('zyzzyva-not-a-word') === 0, 'unknown words map to <unk>');
  const chars = Vocabulary.build(['hello world'], 'char');
  t.equal(chars.decode(chars.encode('hello\n')), 'hello\n', 'characters round-trip');
  t.same(tokenize('A b\nc', 'word'), ['a', 'b', '<eos>', 'c', '<eos>']);
});

t.test('data-dependent init normalises the input block on its minibatch', async (t) => {
  const lm = new LanguageModel({ vocabSize: 20, embeddingSize: 8, hiddenSize: 6, layers: 2, norm: true, seed: 2 });
  const rng = new Random(3), B = 16, ids = Int32Array.from({ length: 10 * B }, () => Math.floor(rng.uniform() * 20));
  lm.dataDependentInit(ids, B);
  const cell = lm.stack.cells[0], w = cell.getWeights(), G = 24, I = 8;
  const x = lm.embed(ids), rows = ids.length;
  for (const j of [0, 7, 23]) {
    let norm = 0;
    for (let r = 0; r < I; r++) norm += w.kernel[r * G + j] ** 2;
    const z = Array.from({ length: rows }, (_, n) => {
      let s = w.bias[j];
      for (let r = 0; r < I; r++) s += x[n * I + r] * (w.kernel[r * G + j] / Math.sqrt(norm)) * w.norm_0[j];
      return s;
    });
    const mean = z.reduce((a, b) => a + b, 0) / rows, variance = z.reduce((a, b) => a + (b - mean) ** 2, 0) / rows;
    t.ok(Math.abs(mean) < 1e-4 && Math.abs(variance - 1) < 1e-3, `column ${j}: mean ${mean.toExponential(1)}, variance ${variance.toFixed(4)}`);
  }
  t.throws(() => new LanguageModel({ vocabSize: 5, embeddingSize: 2, hiddenSize: 2, layers: 1, norm: false }).dataDependentInit(ids, B),
    { code: 'ERR_WNLSTM_CONFIG' }, 'needs weight norm');
});

t.test('sampling and bad ids', async (t) => {
  const lm = new LanguageModel({ vocabSize: 7, embeddingSize: 4, hiddenSize: 5, layers: 2, norm: true, seed: 4 });
  const a = lm.sample(Int32Array.of(1, 2), 50, { temperature: 0.7, rng: new Random(9) });
  const b = lm.sample(Int32Array.of(1, 2), 50, { temperature: 0.7, rng: new Random(9) });
  t.ok(a.every((id) => id >= 0 && id < 7), 'ids in the vocabulary');
  t.same(Array.from(a), Array.from(b), 'a seed reproduces a sample');
  t.throws(() => lm.sample(Int32Array.of(1), 5, { temperature: 0 }), { code: 'ERR_WNLSTM_CONFIG' });
  t.throws(() => lm.step(Int32Array.of(0, 9), Int32Array.of(1, 1), 2, lm.zeroState(2), false), { code: 'ERR_WNLSTM_RANGE' }, 'token id out of range');
  t.throws(() => lm.step(Int32Array.of(0, 1), Int32Array.of(1, 8), 2, lm.zeroState(2), false), { code: 'ERR_WNLSTM_RANGE' }, 'target out of range');
});
