#!/usr/bin/env node
// Napkin math for the CUDA kernels on an H100 (SXM), at the GPU benchmark's grid (B 1, 8, 16, 64, 256;
// H = I 256, 512, 1024; T 100; float32): registers and shared memory from ptxas (nvcc -Xptxas -v, sm_90),
// blocks per SM, the path each step takes, FLOPs and weight bytes per step, and an estimated time, beside an
// expected cuDNN figure. ESTIMATES: nothing here was measured on a GPU (bench/cuda.js measures). Writes
// bench/results/cuda-design.md.
//
//   node bench/cuda-design.js          (needs nvcc; the numbers below the kernel table need nothing)
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
// H100 SXM5, from NVIDIA's datasheet and the Hopper tuning guide.
const gpu = { sms: 132, regsPerSm: 65536, smemPerSm: 228 * 1024, threadsPerSm: 2048, blocksPerSm: 32, fp32: 67e12, tf32: 494e12, l2: 50e6, l2Bandwidth: 5.5e12, hbm: 3.35e12 };
// The model's assumptions (see the notes in the output).
const model = { launchUs: 2.5, graphNodeUs: 1.0, gridSyncUs: 1.5, simtEfficiency: 0.4, tf32Efficiency: 0.25,
  cudnnEfficiency: 0.6, cudnnStepUs: 4, cudnnPersistentStepUs: 1.5 };
const persistentBatch = 64, persistentThreads = 256, smemOptin = 227 * 1024;  // as native/cuda/lstm_cell.cu

// ---- Registers and shared memory per kernel (float, tanh), from ptxas.
function ptxas() {
  const kernels = new Map();
  for (const file of ['lstm_cell.cu', 'ops.cu']) {
    // ptxas reports on stderr.
    const run = spawnSync('nvcc', ['-O3', '-std=c++17', '-arch=sm_90', '-Xptxas', '-v', '-Inative/include', '-Inative/cpu',
      '-Inative/cuda', '-c', path.join('native/cuda', file), '-o', '/dev/null'], { cwd: root, encoding: 'utf8' });
    if (run.status !== 0) throw new Error(`nvcc failed on ${file}: ${(run.stderr || run.error?.message || '').slice(-500)}`);
    const out = `${run.stdout}${run.stderr}`;
    let current = null;
    for (const line of out.split('\n')) {
      const entry = /Compiling entry function '(\S+)'/.exec(line);
      if (entry) { current = execFileSync('c++filt', [entry[1]], { encoding: 'utf8' }).trim(); continue; }
      const used = /Used (\d+) registers(?:.*?(\d+) bytes smem)?/.exec(line);
      const tf32 = /gemm_tf32_kernel<(\w+), (\w+)>/.exec(current ?? '');
      if (used && current && (/<float(,|>)/.test(current) || tf32) && !/Activation\)[1-4]/.test(current)) {
        const flags = tf32 ?? /gemm_kernel<float, (\w+), (\w+)>/.exec(current);
        const name = (tf32 ? 'gemm_tf32_kernel' : /(\w+)<float/.exec(current)[1]) + (flags?.slice(1).map((b) => (b === 'true' ? 'T' : 'N')).join('') ?? '');
        kernels.set(name, { registers: Number(used[1]), smem: Number(used[2] ?? 0) });
      }
    }
  }
  return kernels;
}

// Launch sizes in the code: threads per block.
const threads = { step_forward_kernel: 256, gemm_kernelNN: 256, gemm_kernelNT: 256, gemm_kernelTN: 256, gemm_kernelTT: 256,
  gemm_tf32_kernelNN: 128, gemm_tf32_kernelNT: 128, gemm_tf32_kernelTN: 128, gemm_tf32_kernelTT: 128 };
function blocksPerSm({ registers, smem }, t = 256) {
  const regs = Math.ceil(registers / 8) * 8 * t;  // allocated per warp in units of 256 registers: close enough
  return Math.min(Math.floor(gpu.regsPerSm / regs), smem ? Math.floor(gpu.smemPerSm / (smem + 1024)) : Infinity,
    Math.floor(gpu.threadsPerSm / t), gpu.blocksPerSm);
}

// ---- The per-shape estimate.
const ceil = (a, b) => Math.ceil(a / b);
function splitK(M, N, K) {
  const tiles = ceil(M, 64) * ceil(N, 64);
  return Math.max(1, Math.min(ceil(2 * gpu.sms, tiles), Math.floor(K / 16), 64));
}
/** Seconds for `flops` on `blocks` blocks of a SIMT kernel at model.simtEfficiency of the fp32 peak. */
function simt(flops, blocks, perSm) {
  const waves = blocks / (gpu.sms * perSm);
  const fill = Math.min(1, blocks / gpu.sms);  // below one block per SM, SMs idle
  return { seconds: flops / (gpu.fp32 * model.simtEfficiency * fill), waves };
}

/** The persistent kernels' units per block, or 0 where they do not apply (the code's rule: B <= 64, one block
 * per SM, the weight slice and the partial sums in shared memory). */
function persistentUnits(B, H) {
  const U = ceil(H, gpu.sms);
  const forward = 4 * (H * 4 * U + 4 * persistentThreads), backward = 4 * (H + B) * 4 * U;
  return B <= persistentBatch && Math.max(forward, backward) <= smemOptin ? U : 0;
}

function estimate(B, H, T, bps) {
  const I = H, G = 4 * H;
  const stepFlops = 2 * B * H * G, weightBytes = 4 * H * G;  // Vh, float32, read once per step (from L2)
  const U = persistentUnits(B, H), blocks = U ? ceil(H, U) : 0;
  const fusedBlocks = ceil(B, 16) * ceil(H, 32);
  const fused = fusedBlocks >= gpu.sms;
  const fwdSplits = fused ? 1 : splitK(B, G, H);
  const fwdBlocks = fused ? fusedBlocks : ceil(B, 64) * ceil(G, 64) * fwdSplits;
  const fwdStep = simt(stepFlops, fwdBlocks, fused ? bps.step : bps.gemm);
  const memory = weightBytes / (weightBytes <= gpu.l2 ? gpu.l2Bandwidth : gpu.hbm);
  // Per-step launches come from a CUDA graph after the second call with the same shapes.
  let fwdStepUs = (fused ? 1 : 2) * model.graphNodeUs + 1e6 * Math.max(fwdStep.seconds, memory);
  if (U) {  // persistent: a block per SM, its slice of Vh on chip; each step reads h (4 B H bytes) per block from L2
    const compute = 2 * B * H * 4 * U / (gpu.fp32 / gpu.sms * model.simtEfficiency);
    fwdStepUs = model.gridSyncUs + 1e6 * Math.max(compute, blocks * 4 * B * H / gpu.l2Bandwidth);
  }
  const inputGemm = simt(2 * T * B * I * G, ceil(T * B, 64) * ceil(G, 64), bps.gemm).seconds;
  const forwardMs = 1e3 * inputGemm + T * fwdStepUs / 1e3;
  const bwdSplits = splitK(B, H, G);
  const bwdStep = simt(stepFlops, ceil(B, 64) * ceil(H, 64) * bwdSplits, bps.gemm);
  let bwdStepUs = 2 * model.graphNodeUs + 1e6 * Math.max(bwdStep.seconds, memory);
  if (U) {  // persistent: the same products, and every block's share of dh (4 B H bytes each) read back from L2
    const compute = 2 * B * H * 4 * U / (gpu.fp32 / gpu.sms * model.simtEfficiency);
    bwdStepUs = model.gridSyncUs + 1e6 * Math.max(compute, 2 * blocks * 4 * B * H / gpu.l2Bandwidth);
  }
  const bigGemms = simt(2 * T * B * (I + H) * G, ceil(I + H, 64) * ceil(G, 64), bps.gemm).seconds +
    simt(2 * T * B * G * I, ceil(T * B, 64) * ceil(I, 64), bps.gemm).seconds;
  const totalMs = forwardMs + T * bwdStepUs / 1e3 + 1e3 * bigGemms;
  const flops = 3 * 2 * T * B * (I + H) * G;
  // precision 'tf32': every GEMM on the tensor cores (no fused or persistent step: the step's product is a
  // split-K GEMM), at tf32Efficiency of the TF32 peak with the GPU full.
  const tc = (f, tiles) => f / (gpu.tf32 * model.tf32Efficiency * Math.min(1, tiles / gpu.sms));
  const tfStep = (M, N, K) => 2 * model.graphNodeUs + 1e6 * Math.max(tc(2 * M * N * K, ceil(M, 64) * ceil(N, 64) * splitK(M, N, K)), memory);
  const tf32Ms = 1e3 * (tc(2 * T * B * I * G, ceil(T * B, 64) * ceil(G, 64)) + tc(2 * T * B * (I + H) * G, ceil(I + H, 64) * ceil(G, 64)) +
    tc(2 * T * B * G * I, ceil(T * B, 64) * ceil(I, 64))) + T * (tfStep(B, G, H) + tfStep(B, H, G)) / 1e3;
  // cuDNN (fp32, TF32 off): GEMM-bound parts at cudnnEfficiency of the fp32 peak with the GPU full, and a
  // fixed cost per step (persistent kernels for small batches).
  const cudnnStepUs = B <= 32 ? model.cudnnPersistentStepUs : model.cudnnStepUs;
  const cudnnMs = 1e3 * flops / (gpu.fp32 * model.cudnnEfficiency) + 2 * T * cudnnStepUs / 1e3;
  return { path: U ? `persistent, ${blocks} blocks of ${U} units` : fused ? 'fused (graph)' : `split-K ${fwdSplits} (graph)`, fwdBlocks: U ? blocks : fwdBlocks,
    fwdWaves: U ? blocks / gpu.sms : fwdStep.waves, bwdSplits: U ? '-' : bwdSplits, stepFlops, weightBytes,
    fwdStepUs, bwdStepUs, forwardMs, totalMs, tflops: flops / totalMs / 1e9, cudnnMs, tf32Ms };
}

function main() {
  const kernels = ptxas();
  const bps = { step: blocksPerSm(kernels.get('step_forward_kernel') ?? { registers: 80, smem: 18432 }),
    gemm: blocksPerSm(kernels.get('gemm_kernelNN') ?? { registers: 64, smem: 8320 }) };
  let md = '# CUDA kernels: napkin math on an H100 (estimates, not measurements)\n\n' +
    '**Every time below is an estimate from a simple model; nothing here ran on a GPU.** The GPU issue measures them ' +
    '(`bench/cuda.js`, `bench/results/cuda.md`). Command: `node bench/cuda-design.js` (registers and shared memory from ' +
    '`nvcc -Xptxas -v -arch=sm_90`).\n\n' +
    `Device model (H100 SXM5 datasheet): ${gpu.sms} SMs, ${gpu.regsPerSm} registers and ${gpu.smemPerSm / 1024} KiB shared memory per SM, ` +
    `fp32 ${gpu.fp32 / 1e12} TFLOP/s, TF32 tensor cores ${gpu.tf32 / 1e12} TFLOP/s (dense), L2 ${gpu.l2 / 1e6} MB at ~${gpu.l2Bandwidth / 1e12} TB/s, HBM ${gpu.hbm / 1e12} TB/s.\n\n` +
    `Model: a launch costs ${model.launchUs} µs (launch and gap on one stream), ${model.graphNodeUs} µs inside a CUDA graph (the ` +
    `per-step launches, from the second call with the same shapes); a grid barrier of the persistent kernels ${model.gridSyncUs} µs; ` +
    `a SIMT kernel reaches ${100 * model.simtEfficiency}% of the fp32 peak, the TF32 kernel ${100 * model.tf32Efficiency}% of the TF32 peak, ` +
    'times the fraction of SMs they have a block for; a per-step kernel also reads the recurrent weights Vh (16 H² bytes) from L2, a ' +
    'persistent one keeps its slice in shared memory and reads h instead. cuDNN (fp32): ' +
    `${100 * model.cudnnEfficiency}% of the fp32 peak on its GEMMs, plus ${model.cudnnPersistentStepUs} µs a step (persistent kernels, B ≤ 32) or ` +
    `${model.cudnnStepUs} µs.\n\n## Kernels (float32, sm_90)\n\n| kernel | threads | registers | shared memory | blocks per SM | occupancy |\n|---|---|---|---|---|---|\n`;
  for (const [name, k] of [...kernels].sort()) {
    const t = threads[name] ?? 256, b = blocksPerSm(k, t);
    md += `| ${name} | ${t} | ${k.registers} | ${k.smem} B | ${b} | ${Math.round(100 * b * t / gpu.threadsPerSm)}% |\n`;
  }
  md += '\n## Per shape (T = 100, I = H, float32)\n\n' +
    '| B | H | forward step | blocks (waves) | backward split-K | MFLOP / step | Vh MB / step | µs / step fwd, bwd | forward ms | fwd+bwd ms | TFLOP/s | % fp32 peak | cuDNN fwd+bwd ms (expected) | x cuDNN time | tf32 fwd+bwd ms |\n' +
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n';
  for (const H of [256, 512, 1024]) {
    for (const B of [1, 8, 16, 64, 256]) {
      const e = estimate(B, H, 100, bps);
      md += `| ${B} | ${H} | ${e.path} | ${e.fwdBlocks} (${e.fwdWaves.toFixed(2)}) | ${e.bwdSplits} | ${(e.stepFlops / 1e6).toFixed(1)} | ${(e.weightBytes / 1e6).toFixed(1)} | ` +
        `${e.fwdStepUs.toFixed(1)}, ${e.bwdStepUs.toFixed(1)} | ${e.forwardMs.toFixed(2)} | ${e.totalMs.toFixed(2)} | ${e.tflops.toFixed(1)} | ` +
        `${(100 * e.tflops * 1e12 / gpu.fp32).toFixed(0)}% | ${e.cudnnMs.toFixed(2)} | ${(e.totalMs / e.cudnnMs).toFixed(1)} | ${e.tf32Ms.toFixed(2)} |\n`;
    }
  }
  md += '\n## What the numbers say\n\n' +
    '- Batches up to 64 take the persistent kernels: one cooperative launch per sequence each way, a block per SM keeping its ' +
    'units\' columns of Vh in shared memory, a grid barrier per step. By this model their steps cost the barrier plus a few ' +
    'µs of SIMT work, against 2 launches each way per step before; whether the barrier really costs ~1.5 µs on an H100 is ' +
    'the first thing the GPU issue should measure.\n' +
    '- Elsewhere the per-step launches replay from a CUDA graph (about 1 µs a node instead of 2.5).\n' +
    '- Large batches (B ≥ 64) are bound by the SIMT GEMM efficiency; precision \'tf32\' moves every GEMM to the tensor cores ' +
    '(the last column), at the price of TF32 rounding. The TF32 kernel is a plain one (no cp.async pipeline, no ldmatrix): ' +
    `${100 * model.tf32Efficiency}% of the TF32 peak is a guess to be measured.\n` +
    '- The split-K paths give the small-batch steps a block for every SM instead of 1-16 blocks; the reductions over rows ' +
    'run 32 columns x 8 lanes per block instead of one thread per column.\n';
  const out = path.join(__dirname, 'results', 'cuda-design.md');
  fs.writeFileSync(out, md);
  console.log(md);
}

main();
