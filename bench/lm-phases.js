#!/usr/bin/env node
// Where the default LM training step's time goes, phase by phase (this checkout; 100 steps after 10 warm-up
// steps): node bench/lm-phases.js. For the runtime work: which phases are the cells, which the layers around.
'use strict';
const lib = require('../dist/index.js');
const { loadData } = require('../dist/train.js');
const { addon } = require('../dist/native.js');
const B = 50, T = 50;
const data = loadData({ corpus: 'brown', level: 'char', vocabSize: 10000 });
const lm = new lib.LanguageModel({ vocabSize: data.vocab.size, embeddingSize: 128, hiddenSize: 128, layers: 2, norm: true, initScale: 0.08, seed: 1, backend: 'cpu' });
const opt = new lib.RMSProp(lm, { learningRate: 2e-3, alpha: 0.95, clipNorm: 5 });
const stream = lib.batchify(data.train, B);
let state = lm.zeroState(B);
const t = {}; const now = () => Number(process.hrtime.bigint()) / 1e6;
const add = (k, s) => (t[k] = (t[k] || 0) + now() - s);
const N = 100;
for (let k = 0; k < N + 10; k++) {
  if (k === 10) for (const key in t) t[key] = 0;
  const w = lib.window(stream, B, k * T, T);
  let s = now(); opt.zeroGrad(); add('zeroGrad', s);
  s = now(); const emb = lm.embedding.forward(w.inputs); add('embedding fwd', s);
  s = now(); const f = lm.stack.forward(emb, { batchSize: B, initialStates: state, training: true }); add('lstm fwd (2 layers)', s);
  s = now(); const logits = lm.dense.forward(f.outputs, T * B); add('dense fwd', s);
  s = now(); const loss = addon.softmaxCrossEntropy(logits, Int32Array.from(w.targets), data.vocab.size, 1 / (T * B)); add('softmax CE', s);
  s = now(); const dh = lm.dense.backward(logits); add('dense bwd', s);
  s = now(); const dx = lm.stack.backward(dh); add('lstm bwd (2 layers)', s);
  s = now(); lm.embedding.backward(dx); add('embedding bwd', s);
  s = now(); opt.step(); add('optimizer (4 blocks)', s);
  state = f.states;
}
let total = 0; for (const k in t) total += t[k];
for (const k in t) console.log(k.padEnd(24), (t[k] / N).toFixed(2), 'ms', (100 * t[k] / total).toFixed(1) + '%');
console.log('total'.padEnd(24), (total / N).toFixed(2), 'ms/step =', (1000 * N / total).toFixed(1), 'steps/s');
