#!/usr/bin/env node
// The CUDA backend against the CPU backend (which the finite-difference tests check), for one case of
// test/cuda-cases.json in one dtype: forward, backward, sequence lengths, inference, async, an optimizer
// step. Plain JavaScript over dist/, so that it also runs on the GPU machine, which has Node.js (carried)
// but no node_modules:
//   node test/cuda-compare.js           every case in float64, float32 and TF32, the language models and the
//                                       layers; prints a JSON report, exits 1 on a failure
//   node test/cuda-compare.js --large   also the larger cases below (scripts/gpu.sh run does this)
//   node test/cuda-compare.js --quick   fewer cases, for compute-sanitizer (which is slow): every kernel but the
//                                       projected-table language model's
// test/cuda.test.ts runs the same cases through tap (and skips them where no CUDA device answers).
//
// Tolerances: float64 rtol 1e-9 (the backends sum in different orders and use different libm's);
// float32 outputs and states rtol 1e-4, gradients rtol 1e-3 (the CPU's float activations are
// approximations within ~4e-7, and the sums run in different orders over up to T*B rows).
'use strict';
const { backendInfo, Dense, Embedding, LanguageModel, Random, RMSProp, SGD, StreamingSession, tensor, WeightNormLSTMCell } = require('../dist/index.js');

const { closeness, randomArray } = require('./closeness.js');

const cases = require('./cuda-cases.json');
// Larger shapes, off every tile, for the device: beyond what the emulation's fibers run in CI time (one of
// them, I 515 H 1027 B 61, passed there under both recurrences, in 9 minutes each). B 61 takes the persistent
// kernels at a large H by default; B 100 and 257 the per-step kernels (and the persistent ones, where they
// fit, under WNLSTM_CUDA_RECURRENCE=persistent); H 2049 at B 3: split-K with many slices.
const largeCases = [
  { I: 333, H: 515, T: 9, B: 100, lengths: true, options: { usePeepholes: true } },
  { I: 515, H: 1027, T: 6, B: 61, options: {} },
  { I: 200, H: 300, T: 8, B: 257, lengths: true, options: { numProj: 129, projClip: 0.3 } },
  { I: 1, H: 2049, T: 3, B: 3, options: { cellClip: 3 } },
];
// The cells' cases for --quick (with one language model and the layers): plain, projection with lengths and
// peepholes, tile-unaligned with lengths, large K (indexes into cuda-cases.json).
const quickCases = [0, 3, 10, 12].map((i) => cases[i]);
const tolerances = {
  float64: { out: { rtol: 1e-9, atol: 1e-11 }, grad: { rtol: 1e-9, atol: 1e-11 } },
  float32: { out: { rtol: 1e-4, atol: 2e-6 }, grad: { rtol: 1e-3, atol: 1e-4 } },
  // TF32 tensor cores against the CPU's fp32: inputs rounded to 10 bits of mantissa (as the emulation states).
  tf32: { out: { rtol: 1e-2, atol: 1e-3 }, grad: { rtol: 3e-2, atol: 3e-3 } },
};

/** check(what, actual, expected, tolerance) records a comparison; report() gives { checks, failures }. */
function checker() {
  const result = { checks: 0, failures: [] };
  const check = (what, actual, expected, tl) => {
    result.checks++;
    const problem = closeness(actual, expected, tl);
    if (problem) result.failures.push(`${what}: ${problem}`);
  };
  const fail = (message) => result.failures.push(message);
  return { check, fail, report: () => result };
}

/** Runs one case; returns { checks, failures } (failures: messages). */
async function compareBackends({ I, H, T, B, lengths, options }, dtype) {
  const tol = tolerances[dtype];
  const precision = dtype === 'tf32' ? 'tf32' : 'fp32';
  if (dtype === 'tf32') dtype = 'float32';  // CUDA on TF32 tensor cores against the CPU in fp32
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  const { check, fail, report } = checker();
  const make = (backend) => new WeightNormLSTMCell(H, { inputSize: I, ...options, dtype, seed: 11, backend, precision });
  const cpu = make('cpu'), gpu = make('cuda');
  if (gpu.backend !== 'cuda') fail(`the cell runs on ${gpu.backend}`);
  const rng = new Random(12);
  const w = cpu.getWeights();
  w.bias = randomArray(rng, 4 * H, 0.5, Float64Array);
  cpu.setWeights(w);
  gpu.setWeights(w);
  const P = cpu.outputSize;
  const x = randomArray(rng, T * B * I, 1, Arr), dy = randomArray(rng, T * B * P, 1, Arr);
  const initialState = { c: randomArray(rng, B * H, 0.5, Arr), h: randomArray(rng, B * P, 0.5, Arr) };
  const dFinal = { c: randomArray(rng, B * H, 0.5, Arr), h: randomArray(rng, B * P, 0.5, Arr) };
  const sequenceLength = lengths ? Int32Array.from({ length: B }, (_, b) => (b * 3) % (T + 1)) : undefined;

  const a = cpu.forward(x, { batchSize: B, initialState, sequenceLength });
  const b = gpu.forward(x, { batchSize: B, initialState, sequenceLength });
  check('outputs', b.outputs, a.outputs, tol.out);
  check('final c', b.state.c, a.state.c, tol.out);
  check('final h', b.state.h, a.state.h, tol.out);
  const ga = cpu.backward(dy, dFinal), gb = gpu.backward(dy, dFinal);
  for (const name of Object.keys(ga.grads)) check(`d ${name}`, gb.grads[name], ga.grads[name], tol.grad);
  check('d inputs', gb.dInputs, ga.dInputs, tol.grad);
  check('d initial c', gb.dInitialState.c, ga.dInitialState.c, tol.grad);
  check('d initial h', gb.dInitialState.h, ga.dInitialState.h, tol.grad);

  const exact = { rtol: 0, atol: 0 };
  // The same on tensors that stay on the device: exactly the array form's results.
  const on = (values, shape) => tensor(values, shape, { backend: 'cuda', dtype });
  const tb = gpu.forward(on(x, [T, B, I]), { initialState: { c: on(initialState.c, [B, H]), h: on(initialState.h, [B, P]) }, sequenceLength });
  check('outputs on device tensors', tb.outputs.read(), b.outputs, exact);
  check('final h on device tensors', tb.state.h.read(), b.state.h, exact);
  const tg = gpu.backward(on(dy, [T, B, P]), { c: on(dFinal.c, [B, H]), h: on(dFinal.h, [B, P]) });
  check('d inputs on device tensors', tg.dInputs.read(), gb.dInputs, exact);
  check('d kernel on device tensors', tg.grads.kernel, gb.grads.kernel, exact);
  gpu.forward(x, { batchSize: B, initialState, sequenceLength });
  check('inference outputs = training outputs', gpu.forward(x, { batchSize: B, initialState, sequenceLength, training: false }).outputs, b.outputs, exact);
  check('forwardAsync outputs', (await gpu.forwardAsync(x, { batchSize: B, initialState, sequenceLength })).outputs, b.outputs, exact);
  check('backward after an inference forward', gpu.backward(dy, dFinal).grads.kernel, gb.grads.kernel, exact);

  // One SGD step with momentum on each, from each backend's gradients (a cell's own update runs on the host).
  for (const cell of [cpu, gpu]) {
    const optimizer = new SGD(cell.parameters(), { learningRate: 0.1, momentum: 0.9 });
    optimizer.zeroGrad();  // the gradients of the backward calls above accumulated
    cell.forward(x, { batchSize: B, initialState, sequenceLength });
    cell.backward(dy, dFinal);
    optimizer.step();
  }
  const after = [cpu, gpu].map((cell) => cell.forward(x, { batchSize: B, initialState, sequenceLength, training: false }).outputs);
  check('outputs after an SGD step', after[1], after[0], tol.grad);
  cpu.dispose();
  gpu.dispose();
  return report();
}

/**
 * 20 training steps of a 2-layer language model (dropout on, RMSProp with clipping) with the whole model on
 * CUDA (arena, activations and every op on the device) against the same model on the CPU, then an
 * evaluation step: losses, final state and every parameter block. Tolerances over 20 updates: float64 rtol
 * 1e-9 on losses, 1e-7 on parameters; float32 1e-4 and 1e-2 (atol 1e-3).
 */
async function compareLanguageModels(dtype, { dropout = 0.2, embeddingProjection = 'auto' } = {}) {
  const tol = dtype === 'float64'
    ? { loss: { rtol: 1e-9, atol: 0 }, params: { rtol: 1e-7, atol: 1e-9 } }
    : { loss: { rtol: 1e-4, atol: 0 }, params: { rtol: 1e-2, atol: 1e-3 } };
  const { check, report } = checker();
  const V = 300, B = 8, T = 12;  // V: more classes than one block's threads
  const make = (backend) => new LanguageModel({ vocabSize: V, embeddingSize: 24, hiddenSize: 40, layers: 2, dropout,
    norm: true, initScale: 0.3, seed: 3, dtype, backend, embeddingProjection });
  const models = [make('cpu'), make('cuda')];
  const optimizers = models.map((lm) => new RMSProp(lm, { learningRate: 0.01, clipNorm: 1 }));
  const losses = [[], []], states = [null, null];
  const rng = new Random(4);
  for (let k = 0; k < 20; k++) {
    const inputs = Int32Array.from({ length: T * B }, () => Math.floor(rng.uniform() * V));
    const targets = Int32Array.from({ length: T * B }, (_, i) => (i % 7 === 3 ? -1 : Math.floor(rng.uniform() * V)));
    for (let m = 0; m < 2; m++) {
      optimizers[m].zeroGrad();
      const r = k % 2 ? await models[m].stepAsync(inputs, targets, B, states[m], true) : models[m].step(inputs, targets, B, states[m], true);
      losses[m].push(r.loss);
      states[m] = r.state;
      optimizers[m].step();
    }
  }
  check('20 training losses', Float64Array.from(losses[1]), Float64Array.from(losses[0]), tol.loss);
  states[0].forEach((s, l) => {
    check(`final c of layer ${l}`, states[1][l].c, s.c, tol.params);
    check(`final h of layer ${l}`, states[1][l].h, s.h, tol.params);
  });
  const blocks = models.map((lm) => lm.parameters());
  blocks[0].forEach((b, i) => check(`${b.name} after 20 updates`, blocks[1][i].getValues(), b.getValues(), tol.params));
  const inputs = Int32Array.from({ length: T * B }, (_, i) => i % V), targets = Int32Array.from({ length: T * B }, (_, i) => (i * 7) % V);
  const evals = models.map((lm) => lm.step(inputs, targets, B, null, false).loss);
  check('an evaluation step', Float64Array.of(evals[1]), Float64Array.of(evals[0]), tol.loss);
  models.forEach((lm) => lm.dispose());
  return report();
}

/**
 * The layers whose weights are JS arrays on CUDA tensors (Embedding, Dense: uploaded weights, gradients
 * brought back) and a streaming session whose state stays on the device, against the same on CPU tensors.
 */
async function compareLayers(dtype) {
  const tol = tolerances[dtype];
  const { check, report } = checker();
  const V = 50, E = 12, H = 20, O = 33, T = 6, B = 5;
  const rng = new Random(6);
  const ids = Int32Array.from({ length: T * B }, () => Math.floor(rng.uniform() * V));
  const dLogits = randomArray(rng, T * B * O, 1);
  const run = (backend) => {
    const emb = new Embedding(V, E, { seed: 2, dtype }), dense = new Dense(H, O, { seed: 3, dtype });
    const cell = new WeightNormLSTMCell(H, { inputSize: E, seed: 4, dtype, backend });
    const rows = emb.forward(ids, { backend }), steps = rows.reshape([T, B, E]);
    const { outputs, state } = cell.forward(steps);
    const logits = dense.forward(outputs), dy = tensor(dLogits, [T * B, O], { dtype, backend });
    const dh = dense.backward(dy), r = cell.backward(dh.reshape([T, B, H]));
    emb.backward(r.dInputs);
    const session = new StreamingSession([cell], B);
    const x = tensor(randomArray(new Random(7), B * E, 1), [B, E], { dtype, backend });
    const h = [session.step(x).read(), session.step(x).read()];
    const out = { logits: logits.read(), dEmbedding: emb.params.grad, dDense: dense.params.grad, dKernel: r.grads.kernel, h };
    for (const t of [rows, steps, outputs, state.c, state.h, logits, dy, dh, r.dInputs, r.dInitialState.c, r.dInitialState.h, x]) t.dispose();
    cell.dispose();
    return out;
  };
  const cpu = run('cpu'), gpu = run('cuda');
  check('Dense outputs on tensors', gpu.logits, cpu.logits, tol.out);
  check('Embedding gradient from a tensor', gpu.dEmbedding, cpu.dEmbedding, tol.grad);
  check('Dense gradient (brought back)', gpu.dDense, cpu.dDense, tol.grad);
  check('the cell kernel gradient', gpu.dKernel, cpu.dKernel, tol.grad);
  gpu.h.forEach((h, k) => check(`a streaming session's step ${k + 1} (state on the device)`, h, cpu.h[k], tol.out));
  return report();
}

module.exports = { cases, largeCases, compareBackends, compareLanguageModels, compareLayers };

if (require.main === module) {
  (async () => {
    const quick = process.argv.includes('--quick');
    const selected = quick ? quickCases : process.argv.includes('--large') ? [...cases, ...largeCases] : cases;
    const info = backendInfo();
    const report = { device: info.cuda.devices, driverVersion: info.cuda.driverVersion,
      recurrence: process.env.WNLSTM_CUDA_RECURRENCE ?? 'auto', cases: 0, checks: 0, failures: [] };
    if (!info.cuda.available) {
      console.log(JSON.stringify({ ...report, skipped: info.cuda.reason }));
      return;
    }
    // A comparison that throws (a kernel fault, say) is a failure with its message; the others still run.
    const record = async (what, comparison) => {
      console.error(`${new Date().toISOString().slice(11, 19)} ${what}`);  // where a run cut short stopped
      try {
        const r = await comparison();
        report.cases++, report.checks += r.checks;
        for (const f of r.failures) report.failures.push(`${what}: ${f}`);
      } catch (e) {
        report.cases++;
        report.failures.push(`${what}: threw ${e.code ?? ''} ${e.message}`);
      }
    };
    for (const dtype of ['float64', 'float32', 'tf32']) {
      if (dtype !== 'tf32') {  // TF32: the cells' cases only
        await record(`${dtype} language model`, () => compareLanguageModels(dtype));
        if (!quick) await record(`${dtype} language model, projected table`, () => compareLanguageModels(dtype, { dropout: 0, embeddingProjection: 'table' }));
        await record(`${dtype} layers on tensors`, () => compareLayers(dtype));
      }
      for (const c of selected) await record(`${dtype} ${JSON.stringify(c)}`, () => compareBackends(c, dtype));
    }
    console.log(JSON.stringify(report));
    process.exitCode = report.failures.length ? 1 : 0;
  })();
}
