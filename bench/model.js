#!/usr/bin/env node
// The model API's training speed beside TF.js's (the API it mirrors), in one run: a sequence classifier
// (token ids -> embedding 64 -> LSTM 128 -> dense softmax over 2 classes; batch 32, 64 steps, vocabulary
// 2,000), trained with fit() for a few epochs on the same random data; milliseconds per training batch,
// median over epochs after a warm-up epoch. wnlstm with weight norm on and off; TF.js 4.22 on its plain JS
// backend (its wasm backend cannot train an embedding). Writes bench/results/model.md.
//
//   npm --prefix bench ci --ignore-scripts    # TF.js (optional; skipped with a note when absent)
//   node bench/model.js [--no-write]
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { SequenceModel, Random, backendInfo } = require('..');

const write = !process.argv.includes('--no-write');
const B = 32, T = 64, V = 2000, E = 64, H = 128, BATCHES = 8, EPOCHS = 4;
const tryRequire = (name) => { try { return require(require.resolve(name, { paths: [__dirname] })); } catch { return null; } };
const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

const rng = new Random(1);
const x = Array.from({ length: B * BATCHES }, () => Array.from({ length: T }, () => Math.floor(rng.uniform() * V)));
const y = x.map((s) => (s[0] < V / 2 ? 1 : 0));

/** ms per batch of each epoch after the first (warm-up). */
function timeWnlstm(norm) {
  const model = new SequenceModel({ input: { vocabSize: V, embeddingSize: E }, task: 'classification', outputs: 2, units: H, norm });
  const times = [];
  let t0 = 0;
  model.fit(x, y, { epochs: EPOCHS + 1, batchSize: B, shuffle: false, verbose: 0, callbacks: {
    onEpochBegin: () => { t0 = performance.now(); },
    onEpochEnd: (e) => { if (e > 0) times.push((performance.now() - t0) / BATCHES); },
  } });
  model.dispose();
  return times;
}

/** TF.js trains this model some hundred times slower: on 2 batches per epoch, 2 epochs after the warm-up. */
async function timeTfjs(tf) {
  const batches = 2, epochs = 2;
  const model = tf.sequential({ layers: [
    tf.layers.embedding({ inputDim: V, outputDim: E, inputLength: T }),
    tf.layers.lstm({ units: H }),
    tf.layers.dense({ units: 2, activation: 'softmax' }),
  ] });
  model.compile({ optimizer: tf.train.adam(1e-3), loss: 'sparseCategoricalCrossentropy' });
  const xs = tf.tensor2d(x.slice(0, batches * B).flat(), [batches * B, T], 'int32'), ys = tf.tensor1d(y.slice(0, batches * B), 'float32');
  const times = [];
  let t0 = 0;
  await model.fit(xs, ys, { epochs: epochs + 1, batchSize: B, shuffle: false, verbose: 0, callbacks: {
    onEpochBegin: async () => { t0 = performance.now(); },
    onEpochEnd: async (e) => { if (e > 0) times.push((performance.now() - t0) / batches); },
  } });
  tf.dispose([xs, ys]);
  model.dispose();
  return times;
}

async function main() {
  const rows = [];
  for (const norm of [true, false]) {
    rows.push([`wnlstm SequenceModel.fit, weight norm ${norm ? 'on' : 'off'}`, median(timeWnlstm(norm))]);
  }
  const notes = [];
  const tf = tryRequire('@tensorflow/tfjs');
  if (tf) {
    // The wasm backend has no kernel for the embedding's gradient (UnsortedSegmentSum): TF.js's plain JS
    // backend, the one that trains this model without tfjs-node's native TensorFlow.
    await tf.setBackend('cpu');
    rows.push([`TF.js ${tf.version.tfjs} cpu backend model.fit (layers.lstm)`, median(await timeTfjs(tf))]);
    notes.push("TF.js's wasm backend cannot train this model (no UnsortedSegmentSum kernel for the embedding's gradient); tfjs-node needs a native TensorFlow download at install, which this project's machines do not allow.");
  } else {
    notes.push('TF.js not installed (npm --prefix bench ci --ignore-scripts): skipped');
  }
  const base = rows[0][1];
  const info = backendInfo();
  const table = ['| implementation | ms per training batch (median) | time relative to wnlstm, weight norm on |', '|---|---|---|',
    ...rows.map(([name, ms]) => `| ${name} | ${ms.toFixed(1)} | ${(ms / base).toFixed(2)}x |`)].join('\n');
  const text = `# The model API's training speed\n\n\`node bench/model.js\`, ${new Date().toISOString().slice(0, 10)}, ${os.cpus()[0].model}, ` +
    `${info.cpu.threads} threads (${info.cpu.isa}). A classifier: token ids -> embedding ${E} -> LSTM ${H} -> dense softmax (2 classes); ` +
    `batch ${B}, ${T} steps, vocabulary ${V}; Adam; wnlstm: ${BATCHES} batches per epoch, the median of ${EPOCHS} epochs after a warm-up epoch; TF.js: 2 batches per epoch, 2 epochs after a warm-up. ` +
    `The times include each library's own batching and loss.\n\n${table}\n${notes.map((n) => `\n${n}\n`).join('')}`;
  console.log(text);
  if (write) fs.writeFileSync(path.join(__dirname, 'results', 'model.md'), text);
}

main().catch((err) => { console.error(err); process.exit(1); });
