#!/usr/bin/env node
// GPU benchmark, one run on the GPU machine: wnlstm's CUDA backend (weight norm on and off), forward and
// forward+backward, beside PyTorch's cuDNN nn.LSTM, plain and with weight_norm (bench/cudnn_lstm.py, run
// by this script in the same session). First checks the CUDA outputs against the CPU backend at each
// shape. Writes bench/results/cuda.md and cuda.json (or --out DIR).
//
//   source .gpu/enter && node bench/cuda.js [--repeats N] [--out DIR]      (see ../shared/GPU.md)
//
// Method: float32, one layer, inputs re-randomised before every run, 3 warm-up runs, then the median.
// wnlstm is timed around each synchronous call, so its times include copying the inputs to the device
// and the outputs back from pageable host memory (its API takes and returns host arrays); PyTorch's are
// CUDA events around device-resident tensors. The table gives the bytes wnlstm copies per call.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { backendInfo, WeightNormLSTMCell } = require('..');

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const repeats = Number(option('--repeats', 20));
const outDir = option('--out', path.join(__dirname, 'results'));
const shapes = [{ B: 64, T: 100, I: 512, H: 512 }, { B: 256, T: 100, I: 1024, H: 1024 }]; // issue 3's two points

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => Number(process.hrtime.bigint()) / 1e6;
const randomize = (a) => { for (let i = 0; i < a.length; i++) a[i] = Math.random() * 2 - 1; return a; };

function timeWnlstm({ B, T, I, H }, norm, backward) {
  const cell = new WeightNormLSTMCell(H, { inputSize: I, norm, seed: 1, backend: 'cuda' });
  const x = new Float32Array(T * B * I), dy = new Float32Array(T * B * H);
  const times = [];
  for (let r = 0; r < 3 + repeats; r++) {
    randomize(x);
    if (backward) randomize(dy);
    const start = now();
    cell.forward(x, { batchSize: B, training: backward });
    if (backward) cell.backward(dy);
    if (r >= 3) times.push(now() - start);
  }
  cell.dispose();
  return median(times);
}

// Largest |CUDA - CPU| of the outputs at this shape (the tests check every option on small shapes).
function checkAgainstCpu({ B, T, I, H }) {
  const make = (backend) => new WeightNormLSTMCell(H, { inputSize: I, seed: 2, backend });
  const cpu = make('cpu'), gpu = make('cuda');
  const x = randomize(new Float32Array(T * B * I));
  const a = cpu.forward(x, { batchSize: B, training: false }).outputs;
  const b = gpu.forward(x, { batchSize: B, training: false }).outputs;
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  cpu.dispose();
  gpu.dispose();
  return worst;
}

function main() {
  const info = backendInfo();
  if (!info.cuda.available) {
    console.error(`no CUDA device: ${info.cuda.reason}`);
    process.exitCode = 1;
    return;
  }
  const rows = [], notes = [];
  for (const s of shapes) {
    const worst = checkAgainstCpu(s);
    const mb = (n) => `${(n * 4 / 2 ** 20).toFixed(0)} MiB`;
    notes.push(`B${s.B} T${s.T} I${s.I} H${s.H}: max |CUDA - CPU| of the outputs ${worst.toExponential(2)}; wnlstm copies ` +
      `${mb(s.T * s.B * s.I)} in and ${mb(s.T * s.B * s.H)} out per forward, and ${mb(s.T * s.B * s.H)} in and ` +
      `${mb(s.T * s.B * s.I + 4 * s.H * (s.I + s.H))} out more per backward`);
    for (const backward of [false, true]) {
      for (const norm of [true, false]) {
        const ms = timeWnlstm(s, norm, backward);
        rows.push({ ...s, impl: `wnlstm CUDA, norm ${norm ? 'on' : 'off'}`, pass: backward ? 'forward+backward' : 'forward', ms });
        console.error(`${JSON.stringify(s)} ${rows.at(-1).pass} ${rows.at(-1).impl}: ${ms.toFixed(2)} ms`);
      }
    }
  }
  const py = spawnSync('python3', [path.join(__dirname, 'cudnn_lstm.py'), JSON.stringify(shapes), String(repeats)], { encoding: 'utf8' });
  let torch = null;
  if (py.status === 0) {
    torch = JSON.parse(py.stdout.trim().split('\n').pop());
    rows.push(...torch.results);
  } else {
    notes.push(`PyTorch baseline failed: ${(py.stderr || py.error?.message || '').trim().split('\n').pop()}`);
  }

  for (const r of rows) {
    const flops = 2 * r.T * r.B * (r.I + r.H) * 4 * r.H * (r.pass === 'forward' ? 1 : 3);
    r.tflops = flops / r.ms / 1e9;
    const ref = rows.find((q) => q.B === r.B && q.H === r.H && q.pass === r.pass && q.impl === 'wnlstm CUDA, norm on');
    r.vsWnlstm = r.ms / ref.ms;
  }
  const device = `${info.cuda.devices.join(', ')}, driver ${info.cuda.driverVersion}`;
  const cmd = `node bench/cuda.js --repeats ${repeats}`;
  let md = `# wnlstm CUDA benchmark\n\nCommand: \`${cmd}\` on the GPU machine (../shared/GPU.md). Date: ${new Date().toISOString().slice(0, 10)}.\n` +
    `Device: ${device}${torch ? `; PyTorch ${torch.torch}, cuDNN ${torch.cudnn}` : ''}.\n` +
    'Method: float32, one layer, inputs re-randomised before every run, 3 warm-up runs, then the median of ' +
    `${repeats}. wnlstm is timed around each synchronous call, including the copies of its inputs and outputs ` +
    'between pageable host memory and the device; PyTorch with CUDA events on device-resident tensors. ' +
    'TFLOP/s counts 2·T·B·(I+H)·4H per forward, 3x for forward+backward.\n\n' +
    notes.map((n) => `- ${n}\n`).join('') +
    '\n| shape | pass | implementation | ms | TFLOP/s | x the time of wnlstm (norm on) |\n|---|---|---|---|---|---|\n';
  for (const r of rows) {
    md += `| B${r.B} T${r.T} I${r.I} H${r.H} | ${r.pass} | ${r.impl} | ${r.ms.toFixed(2)} | ${r.tflops.toFixed(2)} | ${r.vsWnlstm.toFixed(2)} |\n`;
  }
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'cuda.md'), md);
  fs.writeFileSync(path.join(outDir, 'cuda.json'), JSON.stringify({ command: cmd, device, torch, notes, rows }, null, 2) + '\n');
  console.log(md);
}

main();
