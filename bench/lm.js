#!/usr/bin/env node
// The main job's training step, one run: steps per second of wnlstm's default language model (Brown
// characters, 2 x 128, batch 50, BPTT 50, RMSProp), this checkout beside a baseline commit (built in a
// git worktree) and PyTorch's CPU nn.LSTM on the same model and data; GFLOP/s against the GEMM alone;
// streaming speed; RSS and heap over many steps. Writes bench/results/lm.md and lm.json.
//
//   apt-get install python3-torch libopenblas0-pthread   # the peer (skipped with a note when absent)
//   node bench/lm.js [--baseline REV] [--rounds 5] [--steps 40] [--memory-steps 1000] [--no-write]
//
// Method: each implementation runs in its own process (bench/lm-steps.js, bench/torch_lm.py), one round
// of --steps steps at a time after 10 warm-up steps; the implementations take turns over the rounds, so
// that a drift in the machine's speed falls on all alike; the median round counts. PyTorch runs with 1
// and 2 threads (the better one is its figure).
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const rounds = Number(option('--rounds', 5)), steps = Number(option('--steps', 40)), memorySteps = Number(option('--memory-steps', 1000));
const baselineRev = option('--baseline', null);
const write = !args.includes('--no-write');
const STEP_GFLOP = 4.1; // forward 2 layers x 2·T·B·(I+H)·4H + dense 2·T·B·H·V, backward twice that (T = B = 50, H = I = 128, V = 86)
// What this checkout executes: its first layer projects the embedding's 86-row table (forward, and the two
// gradient products) instead of the batch's 2,500 rows (native/include/wnlstm/model.h, EmbeddingProjection).
const TABLE_SAVES_GFLOP = 3 * 2 * (2500 - 86) * 128 * 512 / 1e9;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const { addon } = require(path.join(root, 'dist', 'core', 'native.js'));
const { loadData } = require(path.join(root, 'dist', 'lm', 'train.js'));
const { batchify } = require(path.join(root, 'dist', 'index.js'));

// The baseline: REV checked out and built in a worktree (npm ci builds the addon).
let baselineRoot = null;
if (baselineRev) {
  baselineRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-baseline-'));
  const log = { cwd: baselineRoot, stdio: ['ignore', 2, 2] }; // build output to stderr: stdout is the report
  execFileSync('git', ['worktree', 'add', '--detach', baselineRoot, baselineRev], { ...log, cwd: root });
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], log);
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], log);
}

// PyTorch reads the same batchified training text.
const data = loadData({ corpus: 'brown', level: 'char', vocabSize: 10000 });
const streamsFile = path.join(os.tmpdir(), `wnlstm-lm-streams-${process.pid}.i32`);
const streams = batchify(data.train, 50).streams;
fs.writeFileSync(streamsFile, Buffer.from(streams.buffer, streams.byteOffset, streams.byteLength));
const python = '/usr/bin/python3';
const torchVersion = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
const hasTorch = torchVersion.status === 0;
const openblas = fs.existsSync('/usr/lib/x86_64-linux-gnu/openblas-pthread');

const impls = [
  { name: 'wnlstm (this checkout)', cmd: process.execPath, args: (n) => [path.join(__dirname, 'lm-steps.js'), root, '1', String(n)] },
  ...(baselineRoot ? [{ name: `wnlstm at ${baselineRev}`, cmd: process.execPath, args: (n) => [path.join(__dirname, 'lm-steps.js'), baselineRoot, '1', String(n)] }] : []),
  ...(hasTorch ? [1, 2].map((threads) => ({ name: `PyTorch ${torchVersion.stdout.trim()} CPU, ${threads} thread${threads > 1 ? 's' : ''}`, torch: true,
    cmd: python, args: (n) => [path.join(__dirname, 'torch_lm.py'), streamsFile, String(data.vocab.size), String(threads), '1', String(n)] })) : []),
];
const results = new Map(impls.map((impl) => [impl.name, { rates: [], first: null, stream1: [], stream64: [] }]));
for (let r = 0; r < rounds; r++) {
  for (const impl of impls) {
    const out = spawnSync(impl.cmd, impl.args(steps), { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (out.status !== 0) throw new Error(`${impl.name} failed: ${out.stderr.slice(-2000)}`);
    const j = JSON.parse(out.stdout.trim().split('\n').pop());
    const res = results.get(impl.name);
    res.rates.push(...j.stepsPerSecond);
    res.first ??= j;
    if (j.streaming) { res.stream1.push(j.streaming[1]); res.stream64.push(j.streaming[64]); }
    console.error(`round ${r + 1}/${rounds}: ${impl.name} ${j.stepsPerSecond[0].toFixed(2)} steps/s`);
  }
}
fs.rmSync(streamsFile, { force: true });

const gemmSeconds = addon.benchGemm(1024, 1024, 1024, 10);
const gemmGflops = (2 * 1024 ** 3) / gemmSeconds / 1e9;
const memRun = memorySteps > 0
  ? JSON.parse(execFileSync(process.execPath, [path.join(__dirname, 'lm-steps.js'), root, '1', '10', String(memorySteps)], { encoding: 'utf8' }).trim().split('\n').pop())
  : null;
if (baselineRoot) execFileSync('git', ['worktree', 'remove', '--force', baselineRoot], { cwd: root });

const rows = impls.map((impl) => {
  const res = results.get(impl.name), rate = median(res.rates);
  return { name: impl.name, torch: !!impl.torch, stepsPerSecond: rate, gflops: rate * STEP_GFLOP, first: res.first,
    streaming: impl.torch ? null : { 1: median(res.stream1), 64: median(res.stream64) } };
});
const ours = rows[0];
const bestTorch = rows.filter((r) => r.torch).sort((a, b) => b.stepsPerSecond - a.stepsPerSecond)[0];
const base = baselineRoot ? rows[1] : null;

const machine = `${os.cpus()[0].model}, ${os.cpus().length} cores, Node ${process.version}`;
let md = `# The language-model training step\n\nCommand: \`node bench/lm.js ${args.join(' ')}\`. Machine: ${machine}.\n` +
  `${new Date().toISOString().slice(0, 10)}. Default char LM step: Brown, vocabulary ${data.vocab.size}, embedding 128, 2 x 128 ` +
  `(weight norm on for wnlstm), batch 50, BPTT 50, RMSProp, clip 5; about ${STEP_GFLOP} GFLOP per step as the model is defined ` +
  `(the GFLOP/s below count that for every implementation). This checkout executes ${(STEP_GFLOP - TABLE_SAVES_GFLOP).toFixed(2)} ` +
  `GFLOP of it: its first layer projects the embedding's ${data.vocab.size}-row table once per step and gathers rows by id, instead of ` +
  `projecting each of the 2,500 embedded rows (the same values). Median of ${rounds} rounds of ${steps} steps, implementations taking turns.\n\n` +
  '| implementation | steps/s | GFLOP/s | of the GEMM ceiling |\n|---|---|---|---|\n' +
  rows.map((r) => `| ${r.name} | ${r.stepsPerSecond.toFixed(2)} | ${r.gflops.toFixed(0)} | ${((100 * r.gflops) / gemmGflops).toFixed(0)}% |`).join('\n') +
  `\n\nGEMM alone (1024^3, float32, all threads) in the same run: ${gemmGflops.toFixed(0)} GFLOP/s.\n\n`;
md += `This checkout on the work it executes: ${(ours.stepsPerSecond * (STEP_GFLOP - TABLE_SAVES_GFLOP)).toFixed(0)} GFLOP/s, ` +
  `${((100 * ours.stepsPerSecond * (STEP_GFLOP - TABLE_SAVES_GFLOP)) / gemmGflops).toFixed(0)}% of the GEMM ceiling.\n\n`;
if (bestTorch) md += `wnlstm / PyTorch (${bestTorch.name}): ${(ours.stepsPerSecond / bestTorch.stepsPerSecond).toFixed(2)}x. `;
else md += `PyTorch: not measured (${openblas ? '' : 'no OpenBLAS; '}python3-torch not importable by ${python}). `;
if (base) md += `This checkout / ${baselineRev}: ${(ours.stepsPerSecond / base.stepsPerSecond).toFixed(2)}x.`;
md += `\n\nThe first warm-up losses agree (same model and data; PyTorch's own initial weights): wnlstm ` +
  `${ours.first.losses.slice(0, 3).map((l) => l.toFixed(3)).join(', ')}` +
  (bestTorch ? `; PyTorch ${bestTorch.first.losses.slice(0, 3).map((l) => l.toFixed(3)).join(', ')}` : '') + '.\n';
md += `\nStreaming, a LanguageModelSession on the same model (medians over the rounds): ${ours.streaming[1].toFixed(1)} µs per token at 1 stream; ` +
  `${ours.streaming[64].toFixed(0)} µs per step at 64 streams (${(ours.streaming[64] / 64).toFixed(1)} µs per token)` +
  (base ? `; ${baselineRev}: ${base.streaming[1].toFixed(1)} and ${base.streaming[64].toFixed(0)} µs` : '') + '.\n';
if (memRun) {
  const m = memRun.memory;
  md += `\nMemory over ${memorySteps} more steps (this checkout): RSS ${m[0].rssMiB.toFixed(0)} -> ${m.at(-1).rssMiB.toFixed(0)} MiB, ` +
    `heap ${m[0].heapMiB.toFixed(1)} -> ${m.at(-1).heapMiB.toFixed(1)} MiB (after steps ${m[0].step} and ${m.at(-1).step}).\n`;
}
console.log(md);
if (write) {
  fs.writeFileSync(path.join(__dirname, 'results', 'lm.md'), md);
  fs.writeFileSync(path.join(__dirname, 'results', 'lm.json'), JSON.stringify({ machine, args, gemmGflops, rows, memory: memRun?.memory ?? null }, null, 2) + '\n');
}
