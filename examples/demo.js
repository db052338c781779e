// A first look: which backend runs, one forward and backward through a weight-normalized LSTM.
// Run with `npm start` (after `npm ci`).
'use strict';
const { WeightNormLSTMCell, backendInfo } = require('..');

const info = backendInfo();
console.log(`CPU: ${info.cpu.isa}, ${info.cpu.threads} threads; CUDA: ${info.cuda.available ? info.cuda.devices.join(', ') : info.cuda.reason}`);

const [T, B, I, H] = [64, 32, 256, 256];
const cell = new WeightNormLSTMCell(H, { inputSize: I, usePeepholes: true, seed: 1 });
const x = Float32Array.from({ length: T * B * I }, (_, i) => Math.sin(i));
let start = process.hrtime.bigint();
const { outputs, state } = cell.forward(x, { batchSize: B });
const fwd = Number(process.hrtime.bigint() - start) / 1e6;
start = process.hrtime.bigint();
const { grads } = cell.backward(outputs); // gradient of 0.5 * sum(outputs^2)
const bwd = Number(process.hrtime.bigint() - start) / 1e6;
const norm = (a) => Math.sqrt(a.reduce((s, v) => s + v * v, 0));
console.log(`forward  [T=${T}, B=${B}, I=${I}, H=${H}] on ${cell.backend}: ${fwd.toFixed(1)} ms, |h_T| = ${norm(state.h).toFixed(4)}`);
console.log(`backward: ${bwd.toFixed(1)} ms; |d kernel| = ${norm(grads.kernel).toFixed(4)}, |d norm_1| = ${norm(grads.norm_1).toFixed(4)}`);
cell.dispose();
