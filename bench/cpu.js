#!/usr/bin/env node
// CPU timings of wnlstm on SPEC section 5's workloads, beside SPEC's yardsticks (measured on this
// project's 2-core machine). Method: 3 warm-up runs, then the median of N timed runs (default 15), fresh
// random inputs each run, weight norm on and off interleaved. Writes bench/results/cpu.md and cpu.json.
//   node bench/cpu.js [--repeats N] [--no-write]
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { WeightNormLSTMCell, backendInfo } = require('..');

const args = process.argv.slice(2);
const repeats = Number(args[args.indexOf('--repeats') + 1]) || 15;
const write = !args.includes('--no-write');

const workloads = { S: { B: 32, T: 64, I: 256, H: 256 }, M: { B: 64, T: 64, I: 512, H: 512 } };
// SPEC section 5, ms (null: not measured / not offered).
const yardsticks = {
  'onnxruntime-node LSTM op (inference only)': { S: 15, M: 75, Mfb: null },
  'PyTorch 1.13 CPU nn.LSTM (OpenBLAS)': { S: 35, M: 322, Mfb: 881 },
  'TF.js 4.22 wasm (SIMD)': { S: 196, M: 924, Mfb: 29500 },
  'brain.js 2.0 beta': { S: 4300, M: 34000, Mfb: 86000 },
};

function median(xs) { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; }
function randomize(a) { for (let i = 0; i < a.length; i++) a[i] = Math.random() * 2 - 1; return a; }
const now = () => Number(process.hrtime.bigint()) / 1e6;

// Times norm on and off interleaved run by run, so that both arms see the same machine state.
function timePair({ B, T, I, H }, withBackward) {
  const cells = [true, false].map((norm) => new WeightNormLSTMCell(H, { inputSize: I, norm, seed: 1 }));
  const x = new Float32Array(T * B * I), dy = new Float32Array(T * B * H);
  const times = [[], []];
  for (let r = 0; r < 3 + repeats; r++) {
    cells.forEach((cell, k) => {
      randomize(x); randomize(dy);
      const start = now();
      const out = cell.forward(x, { batchSize: B, training: withBackward });
      if (withBackward) cell.backward(dy);
      const ms = now() - start;
      if (!Number.isFinite(out.outputs[out.outputs.length - 1])) throw new Error('non-finite output');
      if (r >= 3) times[k].push(ms);
    });
  }
  cells.forEach((cell) => cell.dispose());
  return times.map(median);
}

const info = backendInfo();
const rows = [];
for (const [name, w] of Object.entries(workloads)) {
  const flops = 2 * w.T * w.B * (w.I + w.H) * 4 * w.H;
  for (const pass of ['forward', 'forward+backward']) {
    const fb = pass !== 'forward';
    const [on, off] = timePair(w, fb);
    const work = fb ? 3 * flops : flops;
    rows.push({ workload: name, pass, normOn: on, normOff: off, gflops: work / on / 1e6, normCost: on / off - 1 });
    console.error(`${name} ${pass}: norm on ${on.toFixed(2)} ms, off ${off.toFixed(2)} ms`);
  }
}

const get = (w, p) => rows.find((r) => r.workload === w && r.pass === p).normOn;
const ours = { S: get('S', 'forward'), M: get('M', 'forward'), Mfb: get('M', 'forward+backward') };
const fmt = (v) => (v === null ? '—' : v >= 100 ? v.toFixed(0) : v.toFixed(1));
const ratio = (theirs, mine) => (theirs === null ? '' : ` (${(theirs / mine).toFixed(1)}x)`);
const cmd = `node bench/cpu.js --repeats ${repeats}`;
let md = `# wnlstm CPU benchmark\n\n` +
  `Command: \`${cmd}\` (after \`npm ci\`). Date: ${new Date().toISOString().slice(0, 10)}.\n` +
  `Machine: ${os.cpus()[0].model}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
  `Node ${process.version}; GEMM ISA ${info.cpu.isa}, ${info.cpu.threads} threads.\n` +
  `Method: float32, one layer, inputs re-randomised every run, norm on and off interleaved run by run, 3 warm-up runs then the median of ${repeats}. ` +
  `GFLOP/s counts 2·T·B·(I+H)·4H per forward and 3x that for forward+backward.\n\n` +
  `| workload | pass | norm on (ms) | norm off (ms) | weight-norm cost | GFLOP/s (norm on) |\n|---|---|---|---|---|---|\n`;
for (const r of rows) {
  md += `| ${r.workload} (${Object.values(workloads[r.workload]).join('/')}) | ${r.pass} | ${r.normOn.toFixed(2)} | ` +
    `${r.normOff.toFixed(2)} | ${(100 * r.normCost).toFixed(1)}% | ${r.gflops.toFixed(0)} |\n`;
}
md += `\nBeside SPEC section 5's yardsticks (their ms as SPEC states them, measured on this project's 2-core machine; ` +
  `in brackets how many times slower than wnlstm with weight norm on):\n\n` +
  `| implementation | S fwd (ms) | M fwd (ms) | M fwd+bwd (ms) |\n|---|---|---|---|\n` +
  `| **wnlstm (norm on)** | **${fmt(ours.S)}** | **${fmt(ours.M)}** | **${fmt(ours.Mfb)}** |\n`;
for (const [name, y] of Object.entries(yardsticks)) {
  md += `| ${name} | ${fmt(y.S)}${ratio(y.S, ours.S)} | ${fmt(y.M)}${ratio(y.M, ours.M)} | ${fmt(y.Mfb)}${ratio(y.Mfb, ours.Mfb)} |\n`;
}
console.log(md);
if (write) {
  fs.writeFileSync(path.join(__dirname, 'results', 'cpu.md'), md);
  fs.writeFileSync(path.join(__dirname, 'results', 'cpu.json'), JSON.stringify({ command: cmd, isa: info.cpu.isa, threads: info.cpu.threads, repeats, rows }, null, 2) + '\n');
}
