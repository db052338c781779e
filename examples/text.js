// What the text-classification examples share: words, a vocabulary, a naive Bayes baseline, scores, the
// training of both arms (weight norm, plain) with their results, and a small HTTP service for a model.
'use strict';
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { SequenceModel, Random } = require('wnlstm');
const { lineChart } = require('../dist/lm/plot');

/** Lower-cased words (letters, digits, $, ! and apostrophes). */
const words = (text) => text.toLowerCase().match(/[a-z0-9$!']+/g) ?? [];

class Vocabulary {
  constructor(tokens, maxWords) { this.tokens = tokens; this.maxWords = maxWords; this.ids = new Map(tokens.map((t, i) => [t, i])); }
  /** '<unk>' and the size - 1 most frequent words of the training documents. */
  static build(docs, size, maxWords) {
    const counts = new Map();
    for (const d of docs) for (const w of d) counts.set(w, (counts.get(w) ?? 0) + 1);
    const top = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, size - 1).map(([w]) => w);
    return new Vocabulary(['<unk>', ...top], maxWords);
  }
  /** The first maxWords words as ids (a text without words is one <unk>). */
  encode(ws) {
    const ids = ws.slice(0, this.maxWords).map((w) => this.ids.get(w) ?? 0);
    return ids.length ? ids : [0];
  }
}

/** Multinomial naive Bayes on word ids with Laplace smoothing: the baseline. Returns a classifier. */
function naiveBayes(x, y, vocabSize, classes) {
  const counts = Array.from({ length: classes }, () => new Float64Array(vocabSize).fill(1)), docs = new Float64Array(classes);
  x.forEach((s, i) => { docs[y[i]]++; for (const id of s) counts[y[i]][id]++; });
  const logp = counts.map((c) => { const total = c.reduce((a, b) => a + b, 0); return c.map((v) => Math.log(v / total)); });
  const prior = Array.from(docs, (d) => Math.log(Math.max(d, 1e-9) / x.length));
  return (s) => {
    let best = 0, bestScore = -Infinity;
    for (let k = 0; k < classes; k++) {
      const score = s.reduce((a, id) => a + logp[k][id], prior[k]);
      if (score > bestScore) { best = k; bestScore = score; }
    }
    return best;
  };
}

/** Accuracy; F1 of class 1 (binary) or the mean F1 over classes (macro). */
function scores(predicted, y, classes) {
  const f1s = [];
  for (let k = classes === 2 ? 1 : 0; k < classes; k++) {
    let tp = 0, fp = 0, fn = 0;
    predicted.forEach((p, i) => { tp += p === k && y[i] === k ? 1 : 0; fp += p === k && y[i] !== k ? 1 : 0; fn += p !== k && y[i] === k ? 1 : 0; });
    const precision = tp / Math.max(tp + fp, 1), recall = tp / Math.max(tp + fn, 1);
    f1s.push((2 * precision * recall) / Math.max(precision + recall, 1e-12));
  }
  const accuracy = predicted.filter((p, i) => p === y[i]).length / y.length;
  return { accuracy, f1: f1s.reduce((a, b) => a + b, 0) / f1s.length };
}

/** A seeded shuffle of 0..n-1. */
function shuffled(n, seed) {
  const order = Array.from({ length: n }, (_, i) => i), rng = new Random(seed);
  for (let i = n - 1; i > 0; i--) { const j = Math.floor(rng.uniform() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
  return order;
}

/** Trains each arm with each seed, scores it on the test split beside the baseline, and writes
 * metrics.json, loss.svg, and the first weight-norm model with its vocabulary (for serve()). */
function trainArms({ out, title, data, vocab, classes, config, fit, seeds, command }) {
  const started = Date.now();
  const bayes = naiveBayes(data.train.x, data.train.y, vocab.tokens.length, classes);
  const results = { command, data: { train: data.train.x.length, valid: data.valid.x.length, test: data.test.x.length, classes,
    maxWords: vocab.maxWords, vocabulary: vocab.tokens.length }, baseline: { name: 'naive Bayes (words)', test: scores(data.test.x.map(bayes), data.test.y, classes) }, arms: [] };
  fs.mkdirSync(out, { recursive: true });
  for (const norm of [true, false]) {
    for (let seed = 1; seed <= seeds; seed++) {
      const t0 = Date.now();
      const model = new SequenceModel({ ...config, task: 'classification', outputs: classes, norm, seed });
      const history = model.fit(data.train.x, data.train.y, { ...fit, validationData: [data.valid.x, data.valid.y] });
      const predicted = model.predict(data.test.x).map((p) => p.indexOf(Math.max(...p)));
      const arm = { arm: norm ? 'weight norm' : 'plain LSTM', seed, seconds: (Date.now() - t0) / 1000, history: history.history,
        test: scores(predicted, data.test.y, classes) };
      results.arms.push(arm);
      console.log(`${arm.arm} seed ${seed}: test accuracy ${arm.test.accuracy.toFixed(4)}, F1 ${arm.test.f1.toFixed(4)}, ${history.epoch.length} epochs (${arm.seconds.toFixed(0)} s)`);
      if (norm && seed === 1) {
        model.save(path.join(out, 'model.ckpt'));
        fs.writeFileSync(path.join(out, 'vocab.json'), JSON.stringify({ tokens: vocab.tokens, maxWords: vocab.maxWords }));
      }
      model.dispose();
    }
  }
  console.log(`naive Bayes: test accuracy ${results.baseline.test.accuracy.toFixed(4)}, F1 ${results.baseline.test.f1.toFixed(4)}`);
  results.seconds = (Date.now() - started) / 1000;
  fs.writeFileSync(path.join(out, 'metrics.json'), `${JSON.stringify(results, null, 1)}\n`);
  const colors = { 'weight norm': ['#1f77b4', '#6baed6'], 'plain LSTM': ['#d62728', '#fc9272'] };
  const series = results.arms.flatMap((a) => [
    { label: `${a.arm} s${a.seed} validation`, color: colors[a.arm][0], points: a.history.val_loss.map((v, e) => [e + 1, v]) },
    { label: `${a.arm} s${a.seed} training`, color: colors[a.arm][1], dashed: true, points: a.history.loss.map((v, e) => [e + 1, v]) },
  ]);
  fs.writeFileSync(path.join(out, 'loss.svg'), lineChart(series, { title, xLabel: 'epoch', yLabel: 'cross-entropy (nats)' }));
  return results;
}

/** Serves the model trainArms() saved in `dir`: POST text to /classify, get {"probabilities": [...]}. */
function serve(dir, port, toWords = words) {
  const { tokens, maxWords } = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8'));
  const vocab = new Vocabulary(tokens, maxWords);
  const model = SequenceModel.load(path.join(dir, 'model.ckpt'));
  const server = http.createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/classify') { res.writeHead(404).end(); return; }
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; if (body.length > 1e6) req.destroy(); });
    req.on('end', async () => {
      try {
        const [probabilities] = await model.predictAsync([vocab.encode(toWords(body))]); // off the event loop
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ probabilities }));
      } catch (err) {
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: err.message, code: err.code }));
      }
    });
  });
  server.listen(port, () => console.log(`listening on ${server.address().port}: POST /classify`));
  return server;
}

module.exports = { words, Vocabulary, naiveBayes, scores, shuffled, trainArms, serve };
