#!/usr/bin/env node
// Where the default LM training step's time goes (this checkout; 100 steps after 10 warm-up steps):
// node bench/lm-phases.js. The step runs in one native call (the model runtime), so the phases are timed
// from outside: the whole step and the optimizer; then, outside the step, the same two cells on the same
// shapes through the JS API (StackedLSTM: it adds the API's copies and its gradient records, so it shows an
// upper bound of the recurrent layers' share).
'use strict';
const lib = require('../dist/index.js');
const { loadData } = require('../dist/lm/train.js');
const B = 50, T = 50, H = 128;
const data = loadData({ corpus: 'brown', level: 'char', vocabSize: 10000 });
const lm = new lib.LanguageModel({ vocabSize: data.vocab.size, embeddingSize: 128, hiddenSize: H, layers: 2, norm: true, initScale: 0.08, seed: 1, backend: 'cpu' });
const opt = new lib.RMSProp(lm, { learningRate: 2e-3, alpha: 0.95, clipNorm: 5 });
const stream = lib.batchify(data.train, B);
let state = lm.zeroState(B);
const t = {}; const now = () => Number(process.hrtime.bigint()) / 1e6;
const add = (k, s) => (t[k] = (t[k] || 0) + now() - s);
const N = 100, x = new Float32Array(T * B * 128).fill(0.1), dy = new Float32Array(T * B * H).fill(1e-3);
for (let k = 0; k < N + 10; k++) {
  if (k === 10) for (const key in t) t[key] = 0;
  const w = lib.window(stream, B, k * T, T);
  let s = now(); opt.zeroGrad(); add('zeroGrad', s);
  s = now(); state = lm.step(w.inputs, w.targets, B, state, true).state; add('model step (native)', s);
  s = now(); opt.step(); add('optimizer (1 arena)', s);
  // Outside the step: the cells on their own, for their share of it.
  s = now(); lm.stack.forward(x, { batchSize: B, training: true }); add('cells alone: fwd (API)', s);
  s = now(); lm.stack.backward(dy); add('cells alone: bwd (API)', s);
}
const step = t['zeroGrad'] + t['model step (native)'] + t['optimizer (1 arena)'];
for (const k in t) console.log(k.padEnd(24), (t[k] / N).toFixed(2), 'ms', k.startsWith('cells') ? '' : (100 * t[k] / step).toFixed(1) + '%');
console.log('step'.padEnd(24), (step / N).toFixed(2), 'ms/step =', (1000 * N / step).toFixed(1), 'steps/s');
