// SequenceModel (lib/model): every task learns a rule it can learn to a stated accuracy or loss; the
// gradients of every head and loss by central differences (float64, with padding); save and load give the
// same predictions and the same further training; fitAsync equals fit and leaves the event loop free;
// callbacks, early stopping and schedules; bad input refused with a code, changing nothing.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { isWnlstmError, Random, SequenceModel } from '../lib/index';
import type { SequenceModelConfig } from '../lib/index';
import { assertClose } from './helpers';

const ints = (rng: Random, n: number, hi: number) => Array.from({ length: n }, () => Math.floor(rng.uniform() * hi));
const length = (rng: Random, lo: number, hi: number) => lo + Math.floor(rng.uniform() * (hi - lo + 1));

/** Sequences of ids 0..4 of 3 to 12 steps; class 1 when token 3 occurs (a rule needing memory). */
function containsThree(n: number, seed: number) {
  const rng = new Random(seed), x: number[][] = [], y: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = ints(rng, length(rng, 3, 12), 5);
    x.push(s);
    y.push(s.includes(3) ? 1 : 0);
  }
  return { x, y };
}

t.test('each task learns its rule: classification, regression, tagging, forecasting, next-token', async (t) => {
  const { x, y } = containsThree(600, 1);
  const clf = new SequenceModel({ input: { vocabSize: 5, embeddingSize: 8 }, task: 'classification', outputs: 2, units: 16 });
  const h = clf.fit(x.slice(0, 500), y.slice(0, 500), { epochs: 15, batchSize: 32, learningRate: 0.01, validationData: [x.slice(500), y.slice(500)] });
  t.same(Object.keys(h.history).sort(), ['accuracy', 'loss', 'val_accuracy', 'val_loss'], 'Keras-named metrics');
  t.same(h.epoch, Array.from({ length: 15 }, (_, i) => i), 'one entry per epoch');
  t.ok(h.history.val_accuracy.at(-1)! >= 0.97, `held-out accuracy ${h.history.val_accuracy.at(-1)} >= 0.97`);
  t.ok(h.history.loss.at(-1)! < h.history.loss[0] / 5, 'the training loss fell fivefold');
  const p = clf.predict([[3, 1, 1], [1, 1, 0, 4]]) as number[][];
  t.ok(p[0][1] > 0.9 && p[1][0] > 0.9, 'predicts the rule on new sequences');
  t.ok(Math.abs(p[0][0] + p[0][1] - 1) < 1e-6, 'probabilities sum to 1');
  const summary = clf.summary();
  t.match(summary, /embedding \(5 ids\)\s+\[steps, batch, 8\]\s+40\n/, 'summary(): the embedding');
  t.match(summary, /lstm_0: WeightNormLSTMCell \(16\)\s+\[steps, batch, 16\]\s+1,728\n/, 'summary(): the layer (kernel 1,536, bias 64, gains 2 x 64)');
  t.match(summary, /total parameters: 1,802$/, `summary(): the total = parameterCount (${clf.parameterCount})`);
  const ev = clf.evaluate(x.slice(500), y.slice(500), { batchSize: 7 });
  assertClose(t, [ev.loss, ev.accuracy], [h.history.val_loss.at(-1)!, h.history.val_accuracy.at(-1)!], { rtol: 1e-5, atol: 1e-7 },
    'evaluate() with another batch size = the last validation');

  const rng = new Random(2), rx: number[][][] = [], ry: number[] = [];
  for (let i = 0; i < 300; i++) {
    const s = Array.from({ length: length(rng, 2, 6) }, () => [rng.uniform()]);
    rx.push(s);
    ry.push(s.reduce((a, v) => a + v[0], 0));
  }
  const reg = new SequenceModel({ input: { features: 1 }, task: 'regression', units: 16 });
  const hr = reg.fit(rx, ry, { epochs: 30, batchSize: 30, learningRate: 0.01 });
  t.ok(hr.history.mae.at(-1)! < 0.1, `regression (sum of a sequence): mae ${hr.history.mae.at(-1)} < 0.1 (targets span 0-6)`);

  const tx = x.slice(0, 300), ty = tx.map((s) => s.map((v) => v % 2));
  const tag = new SequenceModel({ input: { vocabSize: 5, embeddingSize: 8 }, task: 'tagging', outputs: 2, units: 16 });
  const ht = tag.fit(tx, ty, { epochs: 10, batchSize: 30, learningRate: 0.01 });
  t.ok(ht.history.accuracy.at(-1)! >= 0.99, `tagging (parity of each id): accuracy ${ht.history.accuracy.at(-1)}`);
  const tagged = tag.predict([[1, 2, 3]]) as number[][][];
  t.equal(tagged[0].length, 3, 'one prediction per step');

  const fx: number[][][] = [], fy: number[][] = [];
  for (let i = 0; i < 200; i++) {
    const phase = rng.uniform() * 6, n = length(rng, 10, 19);
    const s = Array.from({ length: n + 1 }, (_, k) => Math.sin(phase + 0.5 * k));
    fx.push(s.slice(0, n).map((v) => [v]));
    fy.push(s.slice(1));
  }
  const fc = new SequenceModel({ input: { features: 1 }, task: 'forecasting', units: 16 });
  const hf = fc.fit(fx, fy, { epochs: 20, batchSize: 20, learningRate: 0.01, validationSplit: 0.2 });
  t.ok(hf.history.val_mae.at(-1)! < 0.1, `forecasting (the next value of a sine): validation mae ${hf.history.val_mae.at(-1)}`);

  const nx = x.slice(0, 200).map((s) => s.map((_, k) => k % 5));
  const lm = new SequenceModel({ input: { vocabSize: 5 }, task: 'next-token', units: 16 });
  const hn = lm.fit(nx, undefined, { epochs: 10, learningRate: 0.02 });
  t.ok(hn.history.accuracy.at(-1)! >= 0.99 && hn.history.perplexity.at(-1)! < 1.1, `next-token (counting mod 5): accuracy ${hn.history.accuracy.at(-1)}`);
  for (const m of [clf, reg, tag, fc, lm]) m.dispose();
});

t.test('gradients of every head and loss = central differences (float64, padded batches, 2 layers, bidirectional)', async (t) => {
  const rng = new Random(4);
  const lengths = [4, 2, 5];
  const ids = lengths.map((n) => ints(rng, n, 6));
  const feats = lengths.map((n) => Array.from({ length: n }, () => [rng.uniform() - 0.5, rng.uniform() - 0.5, rng.uniform() - 0.5]));
  const cases: [string, SequenceModelConfig, unknown[], unknown][] = [
    ['classification', { input: { vocabSize: 6, embeddingSize: 3 }, task: 'classification', outputs: 3 }, ids, [2, 0, 1]],
    ['regression', { input: { features: 3 }, task: 'regression', outputs: 2 }, feats, lengths.map(() => [rng.uniform(), rng.uniform()])],
    ['tagging', { input: { vocabSize: 6, embeddingSize: 3 }, task: 'tagging', outputs: 4 }, ids, lengths.map((n) => ints(rng, n, 4))],
    ['forecasting', { input: { features: 3 }, task: 'forecasting', outputs: 2 }, feats, lengths.map((n) => Array.from({ length: n }, () => [rng.uniform(), rng.uniform()]))],
    ['next-token', { input: { vocabSize: 6, embeddingSize: 3 }, task: 'next-token' }, ids, undefined],
  ];
  for (const [name, config, x, y] of cases) {
    for (const [norm, bidirectional] of [[true, false], [false, false], [true, true]]) {
      if (bidirectional && name === 'next-token') continue;
      const m = new SequenceModel({ ...config, units: 3, layers: 2, norm, bidirectional, dtype: 'float64', seed: 9 });
      const { loss, grads } = m.gradients(x as never, y as never);
      t.ok(Number.isFinite(loss) && loss > 0, `${name}: a loss`);
      const lossOf = () => m.evaluate(x as never, y as never, { batchSize: 3 }).loss;
      assertClose(t, [lossOf()], [loss], { rtol: 1e-12, atol: 0 }, `${name}: gradients() leaves the weights alone; its loss = evaluate()'s`);
      // Padding changes nothing: each sequence alone gives the same predictions and loss as in the batch.
      const alone = x.map((_, i) => m.predict([x[i]] as never)[0]), together = m.predict(x as never);
      assertClose(t, alone.flat(2) as number[], together.flat(2) as number[], { rtol: 1e-12, atol: 1e-14 }, `${name}: predictions alone = in a padded batch`);
      const rows = (i: number) => (name === 'classification' || name === 'regression' ? 1 : name === 'next-token' ? lengths[i] - 1 : lengths[i]);
      const mean = x.reduce((sum: number, _, i) => sum + rows(i) * m.evaluate([x[i]] as never, (y === undefined ? undefined : [(y as unknown[])[i]]) as never).loss, 0) /
        x.reduce((n: number, _, i) => n + rows(i), 0);
      assertClose(t, [mean], [loss], { rtol: 1e-12, atol: 0 }, `${name}: the batch's loss = the mean over its sequences' steps`);
      const pick = new Random(5);
      for (const block of m.parameters()) {
        const values = block.getValues() as Float64Array, want: number[] = [], got: number[] = [];
        for (let k = 0; k < 6; k++) {
          const i = Math.floor(pick.uniform() * block.size), v = values[i];
          values[i] = v + 1e-6; block.setValues(values); const up = lossOf();
          values[i] = v - 1e-6; block.setValues(values); const down = lossOf();
          values[i] = v; block.setValues(values);
          want.push((up - down) / 2e-6);
          got.push(grads[block.name][i]);
        }
        assertClose(t, got, want, { rtol: 1e-5, atol: 1e-8 }, `${name}${norm ? '' : ' (plain)'}${bidirectional ? ' (bidirectional)' : ''}: d loss / d ${block.name}`);
      }
      m.dispose();
    }
  }
});

t.test("embeddingProjection 'table' and 'rows': the same losses and gradients (float64); precision is checked", async (t) => {
  const { x, y } = containsThree(40, 9);
  const base: SequenceModelConfig = { input: { vocabSize: 5, embeddingSize: 3 }, task: 'tagging', outputs: 5, units: 4, layers: 2, dtype: 'float64', seed: 4 };
  const tags = x.map((s) => s.map((v) => (v + 1) % 5));
  const [table, rows] = (['table', 'rows'] as const).map((embeddingProjection) => new SequenceModel({ ...base, embeddingProjection }));
  t.equal(table.config.embeddingProjection, 'table', 'kept in the config');
  const a = table.gradients(x, tags), b = rows.gradients(x, tags);
  t.ok(a.loss > 0.5, `a real loss (${a.loss})`);
  t.ok(Math.abs(a.loss - b.loss) <= 1e-12 * a.loss, `the same loss (${a.loss} and ${b.loss})`);
  for (const name of Object.keys(b.grads)) assertClose(t, a.grads[name], b.grads[name], { rtol: 1e-10, atol: 1e-12 }, `d${name}`);
  const ha = table.fit(x, tags, { epochs: 2, batchSize: 8, shuffle: false }), hb = rows.fit(x, tags, { epochs: 2, batchSize: 8, shuffle: false });
  assertClose(t, ha.history.loss, hb.history.loss, { rtol: 1e-10, atol: 0 }, 'the same training');
  const f32 = new SequenceModel({ ...base, dtype: 'float32' });
  t.equal(f32.config.precision, 'fp32', "precision defaults to 'fp32'");
  t.throws(() => new SequenceModel({ ...base, precision: 'tf32' }), { code: 'ERR_WNLSTM_CONFIG' }, "'tf32' is refused for float64");
  t.throws(() => new SequenceModel({ ...base, precision: 'fp16' as never }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown precision');
  t.throws(() => new SequenceModel({ ...base, embeddingProjection: 'sometimes' as never }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown embeddingProjection');
  for (const m of [table, rows, f32]) m.dispose();
});

t.test('save and load: the same predictions, and training goes on as if never interrupted', async (t) => {
  const { x, y } = containsThree(120, 3);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-seq-'));
  const config: SequenceModelConfig = { input: { vocabSize: 5, embeddingSize: 4 }, task: 'classification', outputs: 2, units: 8, layers: 2, dropout: 0.2 };
  const a = new SequenceModel(config), b = new SequenceModel(config);
  a.fit(x, y, { epochs: 1, batchSize: 16, optimizer: 'rmsprop' });
  b.fit(x, y, { epochs: 1, batchSize: 16, optimizer: 'rmsprop' });
  const file = path.join(dir, 'model.ckpt');
  a.save(file);
  const loaded = SequenceModel.load(file);
  t.same(loaded.config, a.config, 'the architecture');
  t.same(loaded.predict(x.slice(0, 10)), a.predict(x.slice(0, 10)), 'identical predictions');
  const cont = b.fit(x, y, { epochs: 2, batchSize: 16 }), resumed = loaded.fit(x, y, { epochs: 2, batchSize: 16 });
  t.same(resumed.history.loss, cont.history.loss, 'the next epochs equal (optimizer state, dropout and shuffling restored)');
  await loaded.saveAsync(file);
  const again = await SequenceModel.loadAsync(file);
  t.same(again.predict(x.slice(0, 5)), loaded.predict(x.slice(0, 5)), 'async save and load');
  fs.writeFileSync(path.join(dir, 'other.ckpt'), '');
  t.throws(() => SequenceModel.load(path.join(dir, 'other.ckpt')), { code: 'ERR_WNLSTM_CHECKPOINT' }, 'not a checkpoint');
  for (const m of [a, b, loaded, again]) m.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('fitAsync = fit, with the event loop free; callbacks, schedules and early stopping', async (t) => {
  const { x, y } = containsThree(200, 5);
  const config: SequenceModelConfig = { input: { vocabSize: 5, embeddingSize: 4 }, task: 'classification', outputs: 2, units: 8, dropout: 0.1 };
  const a = new SequenceModel(config), b = new SequenceModel(config);
  const want = a.fit(x, y, { epochs: 3, batchSize: 20, validationSplit: 0.25 });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const events: string[] = [];
  const got = await b.fitAsync(x, y, {
    epochs: 3, batchSize: 20, validationSplit: 0.25,
    callbacks: {
      onEpochBegin: (e) => { events.push(`begin ${e}`); },
      onEpochEnd: async (e, logs) => { await new Promise((r) => setTimeout(r, 1)); events.push(`end ${e} ${Number.isFinite(logs.val_loss)}`); },
      onBatchEnd: () => { ticks += 0; },
    },
  });
  clearInterval(timer);
  t.same(got, want, 'the same history');
  t.ok(ticks > 0, `timers ran during fitAsync (${ticks} ticks)`);
  t.same(events, ['begin 0', 'end 0 true', 'begin 1', 'end 1 true', 'begin 2', 'end 2 true'], 'callbacks in order, async ones awaited');
  t.same(await b.predictAsync(x.slice(0, 4)), b.predict(x.slice(0, 4)), 'predictAsync = predict');
  const batch = x.slice(0, 6), together = await Promise.all(batch.map((s) => b.predictAsync([s])));
  t.same(together.map((p) => p[0]), b.predict(batch), 'overlapping async calls wait their turn, each with its own inputs');
  t.same(await b.evaluateAsync(x, y), b.evaluate(x, y), 'evaluateAsync = evaluate');

  const rates: number[] = [];
  const c = new SequenceModel(config);
  c.fit(x, y, { epochs: 3, optimizer: 'sgd', learningRate: 0.1, lrSchedule: (e, lr) => (e === 0 ? lr : lr / 2),
    callbacks: { onEpochBegin: () => { rates.push(c.optimizer!.learningRate); } } });
  t.same(rates, [0.1, 0.05, 0.025], 'lrSchedule sets each epoch\'s rate');
  const stopped = c.fit(x, y, { epochs: 10, callbacks: { onEpochEnd: (e) => { if (e === 1) c.stopTraining = true; } } });
  t.equal(stopped.epoch.length, 2, 'stopTraining ends fit()');
  // Early stopping: a learning rate so small that the loss cannot improve by minDelta.
  const d = new SequenceModel(config);
  const early = d.fit(x, y, { epochs: 20, learningRate: 1e-9, validationSplit: 0.25, earlyStopping: { patience: 2, minDelta: 0.01, restoreBestWeights: true } });
  t.equal(early.epoch.length, 3, 'stops after patience epochs without improvement (the first sets the best), as Keras');
  t.throws(() => d.fit(x, y, { earlyStopping: { monitor: 'val_f1' }, validationSplit: 0.25 }), { code: 'ERR_WNLSTM_CONFIG' }, 'an unknown monitor');
  t.throws(() => d.fit(x, y, { optimizer: 'sgd' }), { code: 'ERR_WNLSTM_CONFIG' }, 'another optimizer than the model trains with');
  for (const m of [a, b, c, d]) m.dispose();
});

t.test('bad input: a coded error before anything changes', async (t) => {
  const m = new SequenceModel({ input: { vocabSize: 5, embeddingSize: 4 }, task: 'classification', outputs: 2, units: 4 });
  const f = new SequenceModel({ input: { features: 2 }, task: 'forecasting', units: 4 });
  const before = m.parameters().map((b) => Array.from(b.getValues()));
  const bad: [() => unknown, string, string][] = [
    [() => m.fit([], []), 'ERR_WNLSTM_SHAPE', 'no sequences'],
    [() => m.fit([[1, 2]], [0, 1]), 'ERR_WNLSTM_SHAPE', 'more labels than sequences'],
    [() => m.fit([[1, 2], []], [0, 1]), 'ERR_WNLSTM_SHAPE', 'an empty sequence'],
    [() => m.fit([[1, 2], [1, 5]], [0, 1]), 'ERR_WNLSTM_RANGE', 'a token id past the vocabulary'],
    [() => m.fit([[1, 2], [1, 1.5]], [0, 1]), 'ERR_WNLSTM_RANGE', 'a fractional token id'],
    [() => m.fit([[1, 2], [1, 2]], [0, 2]), 'ERR_WNLSTM_RANGE', 'a label past the classes'],
    [() => m.fit([[1, 2], [1, 2]], [0, -1]), 'ERR_WNLSTM_RANGE', 'a negative label'],
    [() => m.fit([[1, 2], [1, 2]]), 'ERR_WNLSTM_TYPE', 'no labels'],
    [() => m.fit('text' as never, [0]), 'ERR_WNLSTM_TYPE', 'not an array of sequences'],
    [() => m.fit([[1, 2]], [0], { epochs: 0 }), 'ERR_WNLSTM_CONFIG', 'zero epochs'],
    [() => m.fit([[1, 2]], [0], { optimizer: 'lbfgs' as never }), 'ERR_WNLSTM_CONFIG', 'an unknown optimizer'],
    [() => m.fit([[1, 2]], [0], { validationSplit: 0.5 }), 'ERR_WNLSTM_SHAPE', 'a split that leaves no data'],
    [() => f.fit([[[1, NaN]]], [[[0]]] as never), 'ERR_WNLSTM_NOT_FINITE', 'NaN in the features'],
    [() => f.fit([[[1, 2]]], [[NaN]]), 'ERR_WNLSTM_NOT_FINITE', 'NaN in the targets'],
    [() => f.fit([[[1, 1e39]]], [[0]]), 'ERR_WNLSTM_NOT_FINITE', 'a feature past float32'],
    [() => f.fit([[[1, 2, 3]]], [[0]]), 'ERR_WNLSTM_SHAPE', 'a step of 3 features for 2'],
    [() => f.fit([[1, 2, 3]], [[0]]), 'ERR_WNLSTM_SHAPE', 'a flat sequence not a multiple of the features'],
    [() => f.fit([[[1, 2], [3, 4]]], [[0]]), 'ERR_WNLSTM_SHAPE', 'fewer targets than steps'],
    [() => new SequenceModel({ input: { vocabSize: 5 }, task: 'classification' }), 'ERR_WNLSTM_CONFIG', 'classes not given'],
    [() => new SequenceModel({ input: { features: 2 }, task: 'next-token' }), 'ERR_WNLSTM_CONFIG', 'next-token on features'],
    [() => new SequenceModel({ input: { features: 0 }, task: 'regression' }), 'ERR_WNLSTM_CONFIG', 'zero features'],
    [() => new SequenceModel({ input: { features: 2 }, task: 'summarise' as never }), 'ERR_WNLSTM_CONFIG', 'an unknown task'],
    [() => new SequenceModel({ input: { features: 2 }, task: 'regression', dropout: 1 }), 'ERR_WNLSTM_CONFIG', 'dropout 1'],
    [() => new SequenceModel({ input: { vocabSize: 3 }, task: 'next-token', bidirectional: true }), 'ERR_WNLSTM_CONFIG', 'a bidirectional language model'],
  ];
  for (const [call, code, what] of bad) t.throws(call, { code }, what);
  t.same(m.parameters().map((b) => Array.from(b.getValues())), before, 'the weights are untouched');
  t.equal(m.optimizer, null, 'no optimizer was made by a refused fit() ... ');
  m.dispose();
  t.throws(() => m.predict([[1]]), { code: 'ERR_WNLSTM_DISPOSED' }, 'a disposed model');
  f.dispose();
});

t.test('fuzz: random and malformed model calls give coded errors, never a crash', async (t) => {
  const rng = new Random(13);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng.uniform() * xs.length)];
  const junk = () => pick<unknown>([undefined, null, NaN, -1, 0, 1.5, 7, 1e40, 'x', {}, [], [[]], [[1, 2]], [[NaN]], [[[1, 2]]], [[[1]]],
    [[1, 9]], [[0, 1], [2]], new Float32Array(3), new Int32Array(2), [new Float32Array(4)], Symbol('s'), () => 1]);
  const configs: unknown[] = [
    { input: { vocabSize: 5 }, task: 'classification', outputs: 2, units: 3 },
    { input: { features: 2 }, task: 'forecasting', units: 3, bidirectional: true },
    { input: { vocabSize: 5 }, task: 'next-token', units: 3 },
    { input: { features: 2 }, task: 'regression', outputs: 2, units: 3 },
    { input: { vocabSize: 5 }, task: 'tagging', outputs: 3, units: 3, bidirectional: true },
  ];
  const codes = new Map<string, number>();
  let calls = 0, ok = 0, unexpected = 0;
  const attempt = async (fn: () => unknown) => {
    calls++;
    try { await fn(); ok++; } catch (err) {
      if (isWnlstmError(err)) codes.set(err.code, (codes.get(err.code) ?? 0) + 1);
      else { unexpected++; if (unexpected < 5) t.fail(`not a coded error: ${String(err)}`); }
    }
  };
  const start = Date.now();
  while (Date.now() - start < 2000) {
    let model: SequenceModel | null = null;
    await attempt(() => { model = new SequenceModel((rng.uniform() < 0.85 ? pick(configs) : { ...(pick(configs) as object), [pick(['units', 'outputs', 'input', 'task', 'dropout', 'maxLength'])]: junk() }) as never); });
    if (!model) continue;
    const m: SequenceModel = model;
    const ids = () => [[1, 2, 3], [4, 0]], feats = () => [[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6]]];
    const x = () => (rng.uniform() < 0.6 ? ('vocabSize' in m.config.input ? ids() : feats()) : junk());
    const y = () => pick<unknown>([junk(), [0, 1], [[0, 1, 2], [1, 0]], [[0.5, 0.5], [1, 1]], [[[1], [2]], [[3]]], [[1, 2], [3]]]);
    for (let k = 0; k < 8; k++) {
      const op = pick(['fit', 'fitAsync', 'evaluate', 'predict', 'predictAsync', 'gradients', 'toOnnx', 'dispose']);
      if (op === 'fit') await attempt(() => m.fit(x() as never, y() as never, pick<unknown>([{ epochs: 1 }, junk(), { epochs: junk() }, { batchSize: junk() }]) as never));
      else if (op === 'fitAsync') await attempt(() => m.fitAsync(x() as never, y() as never, { epochs: 1, verbose: 0 }));
      else if (op === 'evaluate') await attempt(() => m.evaluate(x() as never, y() as never));
      else if (op === 'predict') await attempt(() => m.predict(x() as never, pick<unknown>([undefined, { batchSize: junk() }]) as never));
      else if (op === 'predictAsync') await attempt(() => m.predictAsync(x() as never));
      else if (op === 'gradients') await attempt(() => m.gradients(x() as never, y() as never));
      else if (op === 'toOnnx') await attempt(() => m.toOnnx());
      else if (rng.uniform() < 0.3) await attempt(() => m.dispose());
    }
    m.dispose();
  }
  t.equal(unexpected, 0, `${calls} random calls: ${ok} went through, the rest failed with codes ` +
    [...codes.entries()].map(([c, n]) => `${c} ${n}`).join(', '));
  t.ok(calls > 200 && ok > 20, `enough calls (${calls}), and enough that went through (${ok})`);
});
