#!/usr/bin/env node
// The CUDA backend against the CPU backend (which the finite-difference tests check), for one case of
// test/cuda-cases.json in one dtype: forward, backward, sequence lengths, inference, async, an optimizer
// step. Plain JavaScript over dist/, so that it also runs on the GPU machine, which has Node.js (carried)
// but no node_modules:
//   node test/cuda-compare.js        every case in both dtypes; prints a JSON report, exits 1 on a failure
// test/cuda.test.ts runs the same cases through tap (and skips them where no CUDA device answers).
//
// Tolerances: float64 rtol 1e-9 (the backends sum in different orders and use different libm's);
// float32 outputs and states rtol 1e-4, gradients rtol 1e-3 (the CPU's float activations are
// approximations within ~4e-7, and the sums run in different orders over up to T*B rows).
'use strict';
const { backendInfo, Random, SGD, WeightNormLSTMCell } = require('../dist/index.js');

const { closeness, randomArray } = require('./closeness.js');

const cases = require('./cuda-cases.json');
const tolerances = {
  float64: { out: { rtol: 1e-9, atol: 1e-11 }, grad: { rtol: 1e-9, atol: 1e-11 } },
  float32: { out: { rtol: 1e-4, atol: 2e-6 }, grad: { rtol: 1e-3, atol: 1e-4 } },
};

/** Runs one case; returns { checks, failures } (failures: messages). */
async function compareBackends({ I, H, T, B, lengths, options }, dtype) {
  const tol = tolerances[dtype];
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  let checks = 0;
  const failures = [];
  const check = (what, actual, expected, tl) => {
    checks++;
    const problem = closeness(actual, expected, tl);
    if (problem) failures.push(`${what}: ${problem}`);
  };
  const make = (backend) => new WeightNormLSTMCell(H, { inputSize: I, ...options, dtype, seed: 11, backend });
  const cpu = make('cpu'), gpu = make('cuda');
  if (gpu.backend !== 'cuda') failures.push(`the cell runs on ${gpu.backend}`);
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
  check('inference outputs = training outputs', gpu.forward(x, { batchSize: B, initialState, sequenceLength, training: false }).outputs, b.outputs, exact);
  check('forwardAsync outputs', (await gpu.forwardAsync(x, { batchSize: B, initialState, sequenceLength })).outputs, b.outputs, exact);
  check('backward after an inference forward', gpu.backward(dy, dFinal).grads.kernel, gb.grads.kernel, exact);

  // One SGD step with momentum on each (the update runs on the host mirror, from each backend's gradients).
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
  return { checks, failures };
}

module.exports = { cases, compareBackends };

if (require.main === module) {
  (async () => {
    const info = backendInfo();
    const report = { device: info.cuda.devices, driverVersion: info.cuda.driverVersion, cases: 0, checks: 0, failures: [] };
    if (!info.cuda.available) {
      console.log(JSON.stringify({ ...report, skipped: info.cuda.reason }));
      return;
    }
    for (const dtype of ['float64', 'float32']) {
      for (const c of cases) {
        const r = await compareBackends(c, dtype);
        report.cases++, report.checks += r.checks;
        for (const f of r.failures) report.failures.push(`${dtype} ${JSON.stringify(c)} ${f}`);
      }
    }
    console.log(JSON.stringify(report));
    process.exitCode = report.failures.length ? 1 : 0;
  })();
}
