#!/usr/bin/env node
// GPU benchmark, one run on the GPU machine (issue 14's grid): wnlstm's CUDA backend, weight norm on and
// off, TF32 tensor cores, the persistent kernels against the per-step ones, forward and forward+backward, on
// tensors that stay on the device; beside PyTorch's cuDNN nn.LSTM
// with TF32 off and on, and PyTorch weight_norm + cuDNN (bench/cudnn_lstm.py, run by this script in the same
// session); the device's measured matmul ceilings; and the default language-model training step on the
// GPU against the CPU backend. Each shape is first checked against the CPU backend. Writes cuda.md,
// cuda.json and one plot per hidden size (cuda-h<H>.svg) to bench/results (or --out DIR).
//
//   source .gpu/enter && node bench/cuda.js [--repeats N] [--out DIR]      (see ../shared/GPU.md)
//   node bench/cuda.js --dry-run --out /tmp/x     the CPU backend on a tiny grid, no PyTorch: checks this
//                                                 script where there is no GPU
//
// Method: float32, one layer, I = H, T = 100; new inputs (windows of one random pool) uploaded before every
// run, outside the timing; 3 warm-up runs, then the median of up to --repeats runs (fewer where a run is slow, at least
// 3). wnlstm is timed on the host around the queued calls and a synchronize() (launch overheads included);
// PyTorch with CUDA events. TFLOP/s counts 2·T·B·(I+H)·4H per forward, 3x for forward+backward.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { backendInfo, LanguageModel, RMSProp, synchronize, tensor, WeightNormLSTMCell } = require('..');
const { lineChart } = require('../dist/lm/plot.js');

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const dryRun = args.includes('--dry-run');
const repeats = Number(option('--repeats', 15));
const outDir = option('--out', path.join(__dirname, 'results'));
const backend = dryRun ? 'cpu' : 'cuda';
const T = dryRun ? 5 : 100;
const batches = dryRun ? [1, 8] : [1, 8, 16, 64, 256];
const hiddens = dryRun ? [16, 32] : [256, 512, 1024];
const shapes = hiddens.flatMap((H) => batches.map((B) => ({ B, T, I: H, H })));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => Number(process.hrtime.bigint()) / 1e6;
const randomize = (a) => { for (let i = 0; i < a.length; i++) a[i] = Math.random() * 2 - 1; return a; };
const sync = () => synchronize({ backend });
const forwardFlops = ({ B, T, I, H }) => 2 * T * B * (I + H) * 4 * H;

/** Median ms of fn() after 3 warm-ups; prepare() runs before each, outside the timing. */
function timed(prepare, fn) {
  const times = [];
  for (let r = 0; r < 3 + repeats; r++) {
    prepare();
    sync();
    const start = now();
    fn();
    sync();
    const ms = now() - start;
    if (r >= 3) times.push(ms);
    if (r >= 5 && times.reduce((a, b) => a + b, 0) > 3000) break;  // enough for a slow shape
  }
  return median(times);
}

// Variants of wnlstm timed at every shape: weight norm on and off, TF32 tensor cores, and (where the
// persistent kernels are the default, B <= 64) the per-step kernels for comparison.
const variants = [
  { impl: 'wnlstm, norm on', norm: true },
  { impl: 'wnlstm, norm off', norm: false },
  { impl: 'wnlstm, norm on, tf32', norm: true, precision: 'tf32' },
  { impl: 'wnlstm, norm on, per-step kernels', norm: true, recurrence: 'steps', maxBatch: 64 },
];

/** Runs fn with WNLSTM_CUDA_RECURRENCE set (the CUDA cell reads it at every call). */
function withRecurrence(recurrence, fn) {
  const before = process.env.WNLSTM_CUDA_RECURRENCE;
  if (recurrence) process.env.WNLSTM_CUDA_RECURRENCE = recurrence;
  try { return fn(); } finally {
    if (before === undefined) delete process.env.WNLSTM_CUDA_RECURRENCE;
    else process.env.WNLSTM_CUDA_RECURRENCE = before;
  }
}

// Fresh inputs for every run without drawing T·B·I numbers each time (seconds at the largest shapes): windows
// of one random pool, shifted by a different amount each run.
const poolSlack = 4096;
let pool = new Float32Array(0), shift = 0;
function freshWindow(n) {
  if (pool.length < n + poolSlack) pool = randomize(new Float32Array(n + poolSlack));
  shift = (shift + 997) % poolSlack;
  return pool.subarray(shift, shift + n);
}

function timeWnlstm({ B, T, I, H }, { norm, precision = 'fp32' }, backward) {
  const cell = new WeightNormLSTMCell(H, { inputSize: I, norm, seed: 1, backend, precision });
  const x = tensor(freshWindow(T * B * I), [T, B, I], { backend }), dy = tensor(freshWindow(T * B * H), [T, B, H], { backend });
  const ms = timed(() => { x.write(freshWindow(T * B * I)); if (backward) dy.write(freshWindow(T * B * H)); }, () => {
    const r = cell.forward(x, { training: backward });
    if (backward) {
      const g = cell.backward(dy);
      g.dInputs.dispose(); g.dInitialState.c.dispose(); g.dInitialState.h.dispose();
    }
    r.outputs.dispose(); r.state.c.dispose(); r.state.h.dispose();
  });
  x.dispose(); dy.dispose(); cell.dispose();
  return ms;
}

// Largest |CUDA - CPU| of the outputs and of the input gradients at this shape over 10 steps (the tests
// check every option on small shapes).
function checkAgainstCpu({ B, I, H }, precision = 'fp32') {
  const steps = Math.min(T, 10);
  const make = (b) => new WeightNormLSTMCell(H, { inputSize: I, seed: 2, backend: b, precision });
  const cpu = make('cpu'), gpu = make(backend);
  const x = randomize(new Float32Array(steps * B * I)), dy = randomize(new Float32Array(steps * B * H));
  const worst = (a, b) => a.reduce((w, v, i) => Math.max(w, Math.abs(v - b[i])), 0);
  const a = cpu.forward(x, { batchSize: B }), b = gpu.forward(x, { batchSize: B });
  const out = worst(a.outputs, b.outputs);
  const grad = worst(cpu.backward(dy).dInputs, gpu.backward(dy).dInputs);
  cpu.dispose(); gpu.dispose();
  return { out, grad };
}

// The default char LM's training step (2 x 128, batch 50, BPTT 50, vocabulary 86, dropout 0.5, RMSProp,
// clip 5), on random ids: steps per second on each backend, and the first losses side by side.
function languageModelSteps(b, steps) {
  const V = 86, B = 50, W = 50;
  const lm = new LanguageModel({ vocabSize: V, embeddingSize: 128, hiddenSize: 128, layers: 2, dropout: 0.5, norm: true, seed: 1, backend: b });
  const opt = new RMSProp(lm, { learningRate: 0.002, clipNorm: 5 });
  let seed = 7;
  const ids = () => Int32Array.from({ length: W * B }, () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % V; });
  const batchesOf = Array.from({ length: 8 }, () => [ids(), ids()]);
  let state = null;
  const losses = [];
  const step = (k) => {
    opt.zeroGrad();
    const r = lm.step(batchesOf[k % 8][0], batchesOf[k % 8][1], B, state, true);
    state = r.state;
    opt.step();
    return r.loss;
  };
  for (let k = 0; k < 5; k++) losses.push(step(k));
  const start = now();
  for (let k = 0; k < steps; k++) step(k);
  const seconds = (now() - start) / 1000;
  lm.dispose();
  return { stepsPerSecond: steps / seconds, firstLosses: losses };
}

function main() {
  const info = backendInfo();
  if (!dryRun && !info.cuda.available) {
    console.error(`no CUDA device: ${info.cuda.reason}`);
    process.exitCode = 1;
    return;
  }
  const rows = [], notes = [];
  const found = { rows, notes, torch: null, lm: null };
  fs.mkdirSync(outDir, { recursive: true });
  for (const s of shapes) {
    const fp32 = checkAgainstCpu(s), tf32 = dryRun ? fp32 : checkAgainstCpu(s, 'tf32');
    notes.push(`B${s.B} H${s.H}: max |CUDA - CPU| over 10 steps: outputs ${fp32.out.toExponential(2)}, input gradients ` +
      `${fp32.grad.toExponential(2)}; with tf32 ${tf32.out.toExponential(2)} and ${tf32.grad.toExponential(2)}`);
    for (const backward of [false, true]) {
      for (const v of variants) {
        if (v.maxBatch && s.B > v.maxBatch) continue;
        if (dryRun && v.precision === 'tf32') continue;  // the CPU has no tensor cores (the option changes nothing there)
        const ms = withRecurrence(v.recurrence, () => timeWnlstm(s, v, backward));
        rows.push({ ...s, impl: v.impl, pass: backward ? 'forward+backward' : 'forward', ms });
        console.error(`B${s.B} H${s.H} ${rows.at(-1).pass} ${rows.at(-1).impl}: ${ms.toFixed(3)} ms`);
      }
    }
    writeReport(info, found, true);  // what a run cut short at a time limit leaves
  }
  if (!dryRun) {
    const py = spawnSync('python3', [path.join(__dirname, 'cudnn_lstm.py'), JSON.stringify(shapes), String(repeats)],
      { encoding: 'utf8', maxBuffer: 1 << 24, timeout: 150_000 });
    if (py.status === 0) {
      found.torch = JSON.parse(py.stdout.trim().split('\n').pop());
      rows.push(...found.torch.results);
    } else {
      notes.push(`PyTorch baseline failed: ${(py.stderr || py.error?.message || '').trim().split('\n').pop()}`);
    }
    writeReport(info, found, true);
  }
  found.lm = { device: languageModelSteps(backend, dryRun ? 3 : 100), cpu: languageModelSteps('cpu', dryRun ? 3 : 20) };
  console.log(writeReport(info, found, false));
}

/** Writes cuda.md, cuda.json and the plots from what has been measured so far; returns the markdown. */
function writeReport(info, { rows, notes, torch, lm }, partial) {
  const measured = rows.map((r) => {
    const ref = rows.find((q) => q.B === r.B && q.H === r.H && q.pass === r.pass && q.impl === 'wnlstm, norm on');
    return { ...r, tflops: forwardFlops(r) * (r.pass === 'forward' ? 1 : 3) / r.ms / 1e9, vsWnlstm: ref ? r.ms / ref.ms : NaN };
  });
  const device = dryRun ? 'dry run on the CPU' : `${info.cuda.devices.join(', ')}, driver ${info.cuda.driverVersion}`;
  const cmd = `node bench/cuda.js --repeats ${repeats}${dryRun ? ' --dry-run' : ''}`;
  const ceilings = torch?.ceilings ? `Measured matmul ceilings (PyTorch, 8192^3): fp32 ${torch.ceilings.fp32.toFixed(1)} TFLOP/s, TF32 ${torch.ceilings.tf32.toFixed(1)} TFLOP/s.\n` : '';
  let lmLine = 'Language model training step: not reached.\n\n';
  if (lm) {
    const lossGap = Math.max(...lm.device.firstLosses.map((l, i) => Math.abs(l - lm.cpu.firstLosses[i]) / lm.cpu.firstLosses[i]));
    lmLine = `Language model training step (2 x 128, batch 50, BPTT 50, vocabulary 86, dropout 0.5, RMSProp, clip 5; random ids): ` +
      `${lm.device.stepsPerSecond.toFixed(1)} steps/s on ${backend} against ${lm.cpu.stepsPerSecond.toFixed(1)} on this machine's CPU ` +
      `(${(lm.device.stepsPerSecond / lm.cpu.stepsPerSecond).toFixed(2)}x); first 5 losses agree within rtol ${lossGap.toExponential(1)}.\n\n`;
  }
  let md = `# wnlstm CUDA benchmark${partial ? ' (partial: the run stopped before its end)' : ''}\n\n` +
    `Command: \`${cmd}\` on the GPU machine (scripts/gpu.sh). Date: ${new Date().toISOString().slice(0, 10)}.\n` +
    `Device: ${device}${torch ? `; PyTorch ${torch.torch}, cuDNN ${torch.cudnn}` : ''}.\n${ceilings}` +
    `Method: float32, one layer, I = H, T = ${T}; new inputs (windows of one random pool) uploaded before every run (outside the ` +
    `timing), 3 warm-up runs, then the median of up to ${repeats} runs. wnlstm on device tensors, timed on the host around the queued calls and a ` +
    'synchronize(); PyTorch with CUDA events on device tensors. TFLOP/s counts 2·T·B·(I+H)·4H per forward, 3x for ' +
    'forward+backward. "x wnlstm" is the time of the row over the time of wnlstm with weight norm on (above 1: wnlstm is faster).\n\n' +
    lmLine + notes.map((n) => `- ${n}\n`).join('') +
    '\n| shape | pass | implementation | ms | TFLOP/s | x wnlstm |\n|---|---|---|---|---|---|\n';
  for (const r of measured) {
    md += `| B${r.B} T${r.T} I${r.I} H${r.H} | ${r.pass} | ${r.impl} | ${r.ms.toFixed(3)} | ${r.tflops.toFixed(2)} | ${r.vsWnlstm.toFixed(2)} |\n`;
  }
  const colors = ['#1f77b4', '#aec7e8', '#d62728', '#ff9896', '#2ca02c', '#98df8a', '#9467bd', '#c5b0d5'];
  const impls = [...new Set(measured.map((r) => r.impl))];
  for (const H of hiddens.filter((h) => measured.some((r) => r.H === h))) {
    const series = impls.flatMap((impl, i) => ['forward+backward', 'forward'].map((pass) => ({
      label: `${impl}, ${pass === 'forward' ? 'fwd' : 'fwd+bwd'}`, color: colors[i % colors.length], dashed: pass === 'forward',
      points: measured.filter((r) => r.H === H && r.impl === impl && r.pass === pass).map((r) => [Math.log2(r.B), r.tflops]),
    }))).filter((series) => series.points.length > 0);
    fs.writeFileSync(path.join(outDir, `cuda-h${H}.svg`), lineChart(series, {
      title: `H = I = ${H}, T = ${T}: TFLOP/s by batch (${device})`, xLabel: 'log2(batch)', yLabel: 'TFLOP/s', width: 900, height: 520 }));
  }
  fs.writeFileSync(path.join(outDir, 'cuda.md'), md);
  fs.writeFileSync(path.join(outDir, 'cuda.json'), JSON.stringify({ command: cmd, device, partial, torch, notes, lm, rows: measured }, null, 2) + '\n');
  return md;
}

main();
