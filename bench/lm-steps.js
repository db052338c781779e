#!/usr/bin/env node
// Child of bench/lm.js: times wnlstm's default language-model training step (Brown characters, embedding
// 128, 2 x 128 weight-normalised LSTM, batch 50, BPTT 50, RMSProp 2e-3 alpha 0.95, clip 5), with the
// wnlstm checkout given (this one, or a baseline commit's worktree). It uses only the API every version
// since 0.1 has. Also the streaming speed of a LanguageModelSession on that model, and optionally RSS and
// heap over MEMORY_STEPS more steps. Prints one JSON line.
//
//   node bench/lm-steps.js ROOT ROUNDS STEPS_PER_ROUND [MEMORY_STEPS]
'use strict';
const path = require('node:path');

const [root, rounds, steps] = [path.resolve(process.argv[2]), Number(process.argv[3]), Number(process.argv[4])];
const lib = require(path.join(root, 'dist', 'index.js'));
// loadData: dist/lm/train.js since 0.3 (the layout by layer), dist/train.js before.
const { loadData } = require(['lm/train.js', 'train.js'].map((f) => path.join(root, 'dist', f)).find((f) => require('node:fs').existsSync(f)));

const B = 50, T = 50;
const data = loadData({ corpus: 'brown', level: 'char', vocabSize: 10000 });
const lm = new lib.LanguageModel({ vocabSize: data.vocab.size, embeddingSize: 128, hiddenSize: 128, layers: 2, norm: true,
  initScale: 0.08, seed: 1, backend: 'cpu' });
const opt = new lib.RMSProp(lm, { learningRate: 2e-3, alpha: 0.95, clipNorm: 5 });
const stream = lib.batchify(data.train, B);
const windows = Math.floor((stream.length - 1) / T);
let state = lm.zeroState(B), k = 0;
const losses = [];
const step = () => {
  const w = lib.window(stream, B, (k++ % windows) * T, T);
  opt.zeroGrad();
  const r = lm.step(w.inputs, w.targets, B, state, true);
  state = r.state;
  opt.step();
  return r.loss;
};
for (let i = 0; i < 10; i++) losses.push(step()); // warm-up
// Streaming: a LanguageModelSession over the same model, microseconds per step at 1 and 64 streams, after a
// warm-up of a second: V8 takes ~0.5 s of calls to settle on the session's path (it optimizes it in stages;
// until then a step of 0.3 took ~50 µs instead of ~30), and the steady state is what a service sees.
const streaming = {};
for (const streams of [1, 64]) {
  const session = new lib.LanguageModelSession(lm, streams);
  const ids = Array.from({ length: streams }, (_, i) => i % data.vocab.size);
  for (const until = Date.now() + 1000; Date.now() < until;) session.next(ids);
  const n = streams === 1 ? 3000 : 300, start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) session.next(ids);
  streaming[streams] = Number(process.hrtime.bigint() - start) / 1e3 / n;
}
const stepsPerSecond = [];
for (let r = 0; r < rounds; r++) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < steps; i++) step();
  stepsPerSecond.push(steps / (Number(process.hrtime.bigint() - start) / 1e9));
}
// Memory over many steps (only when asked: it takes a while).
const memory = [];
for (let i = 0; i < Number(process.argv[5] ?? 0); i++) {
  step();
  if ((i + 1) % 100 === 0) memory.push({ step: i + 1, heapMiB: process.memoryUsage().heapUsed / 2 ** 20, rssMiB: process.memoryUsage().rss / 2 ** 20 });
}
console.log(JSON.stringify({ stepsPerSecond, losses, vocabulary: data.vocab.size, streaming, memory }));
lm.dispose();
