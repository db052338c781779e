#!/usr/bin/env node
// CPU benchmark, one run: wnlstm (weight norm on and off) beside the peers that install here from npm,
// onnxruntime-node's LSTM op and TF.js (wasm backend), on SPEC section 5's workloads; and the GEMM
// alone against SPEC's measured machine ceiling. Writes bench/results/cpu.md and cpu.json.
//
//   npm --prefix bench ci --ignore-scripts    # the peers (optional; skipped with a note when absent)
//   npm run bench:cpu [-- --repeats N] [-- --no-write]
//
// Method: float32, one layer, inputs re-randomised before every run, each implementation timed in its own
// block (wnlstm's norm on and off interleaved run by run), the blocks taking turns over 7 rounds, warm-up
// runs first, then the median. A peer whose single run takes seconds gets fewer runs (at most ~30 s per
// cell) and the count is reported.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { WeightNormLSTMCell, backendInfo } = require('..');
const { addon } = require('../dist/core/native');

const args = process.argv.slice(2);
const repeats = Number(args[args.indexOf('--repeats') + 1]) || 15;
const write = !args.includes('--no-write');
const WARMUP = 3, ROUNDS = 7, CELL_BUDGET_MS = 30000;
// A pause between blocks lets a peer's spinning pool threads go idle before the next one is timed.
const settle = () => new Promise((resolve) => setTimeout(resolve, 100));
const MACHINE_CEILING = 320; // GFLOP/s on 2 threads, SPEC section 5 (onnxruntime's MLAS)

const workloads = { S: { B: 32, T: 64, I: 256, H: 256 }, M: { B: 64, T: 64, I: 512, H: 512 } };
const specMs = { // SPEC section 5, for the record beside this run's measurements
  onnxruntime: { S: 15, M: 75 }, 'PyTorch 1.13 (OpenBLAS)': { S: 35, M: 322, Mfb: 881 },
  'TF.js 4.22 wasm': { S: 196, M: 924, Mfb: 29500 }, 'brain.js 2.0 beta': { S: 4300, M: 34000, Mfb: 86000 },
};

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => Number(process.hrtime.bigint()) / 1e6;
const randomize = (a) => { for (let i = 0; i < a.length; i++) a[i] = Math.random() * 2 - 1; return a; };
const tryRequire = (name) => { try { return require(require.resolve(name, { paths: [__dirname] })); } catch { return null; } };

// ---- Implementations: each makes { prepare, run } for a workload and pass: prepare() (untimed) draws
// fresh inputs, run() is what gets timed. ----

function wnlstm(norm) {
  return ({ B, T, I, H }, backward) => {
    const cell = new WeightNormLSTMCell(H, { inputSize: I, norm, seed: 1 });
    const x = new Float32Array(T * B * I), dy = new Float32Array(T * B * H);
    return {
      prepare: () => { randomize(x); randomize(dy); },
      run: async () => {
        const out = cell.forward(x, { batchSize: B, training: backward });
        if (backward) cell.backward(dy);
        if (!Number.isFinite(out.outputs[out.outputs.length - 1])) throw new Error('wnlstm: non-finite output');
      },
    };
  };
}

// A one-node ONNX model (LSTM op, opset 14) written as protobuf by hand: W, R, B are initializers.
function onnxLstmModel({ T, B, I, H }) {
  const varint = (n) => { const out = []; n = BigInt(n); do { let b = Number(n & 127n); n >>= 7n; if (n) b |= 128; out.push(b); } while (n); return out; };
  const field = (num, wire, payload) => [...varint((num << 3) | wire), ...payload];
  const bytes = (num, data) => field(num, 2, [...varint(data.length), ...data]);
  const str = (num, s) => bytes(num, [...Buffer.from(s)]);
  const int = (num, v) => field(num, 0, varint(v));
  const tensor = (name, dims) => {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1)).map(() => (Math.random() * 2 - 1) * 0.05);
    return [...dims.flatMap((d) => int(1, d)), ...int(2, 1), ...str(8, name), ...bytes(9, [...new Uint8Array(data.buffer)])];
  };
  const valueInfo = (name, dims) => [...str(1, name), ...bytes(2, bytes(1, [...int(1, 1),
    ...bytes(2, dims.flatMap((d) => bytes(1, int(1, d))))]))];
  const node = [...['X', 'W', 'R', 'B'].flatMap((n) => str(1, n)), ...str(2, 'Y'), ...str(4, 'LSTM'),
    ...bytes(5, [...str(1, 'hidden_size'), ...int(3, H), ...int(20, 2)])];
  const graph = [...bytes(1, node), ...str(2, 'lstm'),
    ...bytes(5, tensor('W', [1, 4 * H, I])), ...bytes(5, tensor('R', [1, 4 * H, H])), ...bytes(5, tensor('B', [1, 8 * H])),
    ...bytes(11, valueInfo('X', [T, B, I])), ...bytes(12, valueInfo('Y', [T, 1, B, H]))];
  return Uint8Array.from([...int(1, 8), ...str(2, 'wnlstm-bench'), ...bytes(7, graph), ...bytes(8, [...str(1, ''), ...int(2, 14)])]);
}

async function onnxruntime(ort) {
  return async (w, backward) => {
    if (backward) return null; // inference only
    const session = await ort.InferenceSession.create(onnxLstmModel(w), { intraOpNumThreads: os.cpus().length, graphOptimizationLevel: 'all' });
    const x = new Float32Array(w.T * w.B * w.I);
    let feeds;
    return {
      prepare: () => { feeds = { X: new ort.Tensor('float32', randomize(x), [w.T, w.B, w.I]) }; },
      run: async () => {
        const out = await session.run(feeds);
        if (!Number.isFinite(out.Y.data[0])) throw new Error('onnxruntime: non-finite output');
      },
    };
  };
}

async function tfjs(tf) {
  await tf.setBackend('wasm');
  return async ({ B, T, I, H }, backward) => {
    const model = tf.sequential({ layers: [tf.layers.lstm({ units: H, returnSequences: true, inputShape: [T, I] })] });
    let x;
    return {
      prepare: () => { x?.dispose(); x = tf.tensor3d(randomize(new Float32Array(B * T * I)), [B, T, I]); },
      run: async () => {
        if (backward) {
          const { value, grads } = tf.variableGrads(() => model.apply(x).square().sum());
          await value.data();
          tf.dispose([value, ...Object.values(grads)]);
        } else {
          const y = model.predict(x);
          await y.data();
          y.dispose();
        }
      },
    };
  };
}

// ---- Runs ----

async function main() {
  const info = backendInfo();
  const impls = [['wnlstm, norm on', wnlstm(true), 'wnlstm'], ['wnlstm, norm off', wnlstm(false), 'wnlstm']];
  const notes = [];
  const ort = tryRequire('onnxruntime-node');
  if (ort) impls.push([`onnxruntime-node ${require(require.resolve('onnxruntime-node/package.json', { paths: [__dirname] })).version} LSTM op`, await onnxruntime(ort), 'ort']);
  else notes.push('onnxruntime-node not installed (npm --prefix bench ci --ignore-scripts): skipped');
  const tf = tryRequire('@tensorflow/tfjs');
  if (tf && tryRequire('@tensorflow/tfjs-backend-wasm')) {
    const make = await tfjs(tf);
    const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
    impls.push([`TF.js ${tf.version.tfjs} wasm (SIMD ${simd ? 'on' : 'off'}) layers.lstm`, make, 'tfjs']);
  }
  else notes.push('TF.js not installed (npm --prefix bench ci --ignore-scripts): skipped');

  const rows = [], costs = [];
  for (const [name, w] of Object.entries(workloads)) {
    const flops = 2 * w.T * w.B * (w.I + w.H) * 4 * w.H;
    for (const backward of [false, true]) {
      const pass = backward ? 'forward+backward' : 'forward';
      // Each implementation in its own block (a peer's spinning thread pool would slow whatever runs
      // right after it); wnlstm's two arms share a block, interleaved, for a fair weight-norm cost.
      const blocks = [];
      for (const [impl, make, group] of impls) {
        const run = await make(w, backward);
        if (!run) continue;
        const block = blocks.find((b) => b.group === group) ?? blocks[blocks.push({ group, runners: [] }) - 1];
        block.runners.push({ impl, ...run, times: [], spent: 0 });
      }
      const runners = blocks.flatMap((b) => b.runners);
      // The blocks take turns over several rounds, so that a drift in the machine's speed (a shared host)
      // falls on every implementation alike; each block's first run of a round is a warm-up.
      for (let round = 0; round < ROUNDS; round++) {
        for (const block of blocks) {
          await settle();
          const warmups = round === 0 ? WARMUP : 1;
          for (let r = 0; r < warmups + Math.ceil(repeats / ROUNDS); r++) {
            // Alternate the order too (over the whole block, so each goes first equally often): the first
            // run after a pause pays for waking the threads.
            block.flip = !block.flip;
            for (const x of block.flip ? [...block.runners].reverse() : block.runners) {
              if (x.times.length >= 1 && x.spent > CELL_BUDGET_MS) continue;
              x.prepare();
              const start = now();
              await x.run();
              const ms = now() - start;
              x.spent += ms;
              // Slow peers: one warm-up run is enough when a run takes seconds.
              if (r >= warmups || (ms > 2000 && (round > 0 || r >= 1))) x.times.push(ms);
            }
          }
        }
      }
      // Weight norm's cost from the pairs of runs made back to back, which a drift of the host cannot split.
      const [on, off] = ['wnlstm, norm on', 'wnlstm, norm off'].map((impl) => runners.find((x) => x.impl === impl));
      costs.push({ workload: name, pass, cost: median(on.times.map((t, i) => t / off.times[i])) - 1 });
      for (const x of runners) {
        const ms = median(x.times);
        rows.push({ workload: name, pass, impl: x.impl, ms, runs: x.times.length, gflops: (backward ? 3 : 1) * flops / ms / 1e6 });
        console.error(`${name} ${pass} ${x.impl}: ${ms.toFixed(2)} ms (${x.times.length} runs)`);
      }
    }
  }

  const gemmShapes = [[4096, 2048, 512, 'M: input projection, all steps'], [64, 2048, 512, 'M: recurrent, one step'],
    [2048, 1024, 256, 'S: input projection, all steps'], [32, 1024, 256, 'S: recurrent, one step'], [1024, 1024, 1024, 'square']];
  const gemm = gemmShapes.map(([M, N, K, what]) => {
    const reps = Math.max(5, Math.round(2e10 / (2 * M * N * K)));
    const seconds = median([1, 2, 3].map(() => addon.benchGemm(M, N, K, reps)));
    const gflops = 2 * M * N * K / seconds / 1e9;
    return { M, N, K, what, gflops, ofCeiling: gflops / MACHINE_CEILING };
  });

  const cmd = `npm run bench:cpu -- --repeats ${repeats}`;
  const get = (w, p, prefix) => rows.find((r) => r.workload === w && r.pass === p && r.impl.startsWith(prefix));
  let md = `# wnlstm CPU benchmark\n\nCommand: \`${cmd}\` (after \`npm ci\` and \`npm --prefix bench ci --ignore-scripts\`). ` +
    `Date: ${new Date().toISOString().slice(0, 10)}.\nMachine: ${os.cpus()[0].model}, ${os.cpus().length} cores, ` +
    `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; wnlstm kernels ${info.cpu.isa}, ${info.cpu.threads} threads.\n` +
    `Method: float32, one layer; all implementations in this one process, each in its own block (wnlstm's norm on and ` +
    `off interleaved run by run, in alternating order), the blocks taking turns over ${ROUNDS} rounds (a 100 ms pause between blocks) so that a drift in the ` +
    `shared machine's speed falls on all alike; inputs re-randomised before each run; ${WARMUP} warm-up runs in the first round and 1 in each later one ` +
    `(1 in all for runs over 2 s), then the median of up to ${repeats} runs ` +
    `(at most ~${CELL_BUDGET_MS / 1000} s per cell). GFLOP/s counts 2·T·B·(I+H)·4H per forward, 3x for forward+backward.\n` +
    (notes.length ? `\nNotes: ${notes.join('; ')}.\n` : '') +
    `\n| workload | pass | implementation | ms | runs | GFLOP/s | x slower than wnlstm (norm on) |\n|---|---|---|---|---|---|---|\n`;
  for (const r of rows) {
    const ours = get(r.workload, r.pass, 'wnlstm, norm on').ms;
    md += `| ${r.workload} (${Object.entries(workloads[r.workload]).map(([k, v]) => `${k}${v}`).join(' ')}) | ${r.pass} | ${r.impl} | ` +
      `${r.ms.toFixed(r.ms < 100 ? 2 : 0)} | ${r.runs} | ${r.gflops.toFixed(r.gflops < 10 ? 2 : 0)} | ${(r.ms / ours).toFixed(2)} |\n`;
  }
  md += `\nWeight-norm cost, the median over pairs of runs made back to back of (norm on / norm off - 1): ` +
    costs.map((c) => `${c.workload} ${c.pass} ${(100 * c.cost).toFixed(1)}%`).join(', ') + '.\n';
  md += `\nGEMM alone (C = A·B, float32, ${info.cpu.threads} threads), against SPEC's measured machine ceiling of ~${MACHINE_CEILING} GFLOP/s:\n\n` +
    `| M x N x K | shape | GFLOP/s | of the ceiling |\n|---|---|---|---|\n` +
    gemm.map((g) => `| ${g.M} x ${g.N} x ${g.K} | ${g.what} | ${g.gflops.toFixed(0)} | ${(100 * g.ofCeiling).toFixed(0)}% |`).join('\n') + '\n';
  md += `\nSPEC section 5's figures for the same machine (not re-measured here): ` +
    Object.entries(specMs).map(([k, v]) => `${k} S ${v.S} ms, M ${v.M} ms${v.Mfb ? `, M fwd+bwd ${v.Mfb} ms` : ''}`).join('; ') + '.\n';
  console.log(md);
  if (write) {
    fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true });
    fs.writeFileSync(path.join(__dirname, 'results', 'cpu.md'), md);
    fs.writeFileSync(path.join(__dirname, 'results', 'cpu.json'), JSON.stringify({ command: cmd, isa: info.cpu.isa, threads: info.cpu.threads, repeats, rows, costs, gemm }, null, 2) + '\n');
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
