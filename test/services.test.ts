// For Node services: async calls off the main thread, streaming sessions, weights in TF's and PyTorch's
// layouts, async checkpoints, and hardening (fuzz, soak).
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { isWnlstmError, LSTMCell, Random, StackedLSTM, WeightNormLSTMCell } from '../lib/index';
import { loadCheckpoint as loadCheckpointSync, loadCheckpointAsync, saveCheckpointAsync } from '../lib/core/checkpoint';
import { fromPyTorch, fromTensorFlow, toPyTorch, toTensorFlow } from '../lib/nn/interop';
import { LanguageModel } from '../lib/lm/model';
import { LanguageModelSession, StreamingSession } from '../lib/nn/session';
import { train, trainAsync } from '../lib/lm/train';
import { assertClose, randomArray } from './helpers';

const EXACT = { rtol: 0, atol: 0 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-services-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

t.test('async forward and backward equal the sync ones, in order, off the main thread', async (t) => {
  const cell = new WeightNormLSTMCell(24, { inputSize: 10, seed: 1, usePeepholes: true, numProj: 12 });
  const rng = new Random(2);
  const x = randomArray(rng, 7 * 3 * 10, 1, Float32Array), dy = randomArray(rng, 7 * 3 * 12, 1, Float32Array);
  const seq = [7, 3, 5];
  const f = cell.forward(x, { batchSize: 3, sequenceLength: seq });
  const b = cell.backward(dy);
  const fa = cell.forwardAsync(x, { batchSize: 3, sequenceLength: seq });
  const ba = cell.backwardAsync(dy); // queued: runs after the forward
  t.throws(() => cell.step(new Float32Array(10)), { code: 'ERR_WNLSTM_BUSY' }, 'a sync call while async work is in flight');
  const [f2, b2] = await Promise.all([fa, ba]);
  assertClose(t, f2.outputs, f.outputs, EXACT, 'same outputs');
  assertClose(t, f2.state.c, f.state.c, EXACT, 'same final c');
  for (const name of Object.keys(b.grads)) assertClose(t, b2.grads[name], b.grads[name], EXACT, `same d${name}`);
  assertClose(t, b2.dInputs, b.dInputs, EXACT, 'same dInputs');
  const s = await cell.stepAsync(x.subarray(0, 30));
  assertClose(t, s.h, cell.step(x.subarray(0, 30)).h, EXACT, 'stepAsync equals step');
  await t.rejects(cell.forwardAsync(new Float32Array([NaN, ...new Array(9).fill(0)]), { batchSize: 1 }), { code: 'ERR_WNLSTM_NOT_FINITE' }, 'bad input rejects with a code');
  await t.rejects(cell.forwardAsync(x, { batchSize: 4 }), { code: 'ERR_WNLSTM_SHAPE' });
  t.ok((await cell.stepAsync(x.subarray(0, 10))).h.length === 12, 'the queue goes on after a rejection');
  const inFlight = cell.forwardAsync(x, { batchSize: 3 });
  cell.dispose(); // the native cell lives until the call completes
  t.equal((await inFlight).outputs.length, 7 * 3 * 12, 'a call in flight completes after dispose()');
  await t.rejects(cell.forwardAsync(x, { batchSize: 3 }), { code: 'ERR_WNLSTM_DISPOSED' });
});

t.test('async calls take their inputs as they are at the call: the caller may reuse its buffers at once', async (t) => {
  const cell = new WeightNormLSTMCell(6, { inputSize: 4, seed: 1, numProj: 5 });
  const rng = new Random(12);
  const x = randomArray(rng, 3 * 2 * 4, 1, Float32Array), dy = randomArray(rng, 3 * 2 * 5, 1, Float32Array);
  const c0 = randomArray(rng, 2 * 6, 1, Float32Array), h0 = randomArray(rng, 2 * 5, 1, Float32Array);
  const want = cell.forward(x, { batchSize: 2, initialState: { c: c0, h: h0 } });
  const wantGrads = cell.backward(dy);
  const wantStep = cell.step(x.subarray(0, 8), { c: c0, h: h0 });
  // Three calls, the second and third queued behind the first; every buffer overwritten after each call.
  const [xs, dys, c0s, h0s] = [x.slice(), dy.slice(), c0.slice(), h0.slice()];
  const f = cell.forwardAsync(xs, { batchSize: 2, initialState: { c: c0s, h: h0s } });
  xs.fill(0); c0s.fill(0); h0s.fill(0);
  const b = cell.backwardAsync(dys);
  dys.fill(0);
  const x8 = x.slice(0, 8), cs = c0.slice(), hs = h0.slice();
  const s = cell.stepAsync(x8, { c: cs, h: hs });
  x8.fill(0); cs.fill(0); hs.fill(0);
  assertClose(t, (await f).outputs, want.outputs, EXACT, 'forwardAsync: the inputs and state at the call');
  assertClose(t, (await b).grads.kernel, wantGrads.grads.kernel, EXACT, 'backwardAsync (queued): dOutputs at the call');
  assertClose(t, (await s).h, wantStep.h, EXACT, 'stepAsync (queued): x and state at the call');

  const stack = new StackedLSTM([cell, new WeightNormLSTMCell(3, { inputSize: 5, seed: 2 })]);
  const states = stack.zeroState(2).map((st) => ({ c: st.c.map(() => 0.3), h: st.h.map(() => -0.2) }));
  const wantStack = stack.forward(x, { batchSize: 2, initialStates: states }).outputs;
  const xs2 = x.slice();
  const fs2 = stack.forwardAsync(xs2, { batchSize: 2, initialStates: states });
  xs2.fill(0);
  for (const st of states) { st.c.fill(9); st.h.fill(9); } // the second layer's is read after an await
  assertClose(t, (await fs2).outputs, wantStack, EXACT, "StackedLSTM.forwardAsync: every layer's state at the call");

  const lm = new LanguageModel({ vocabSize: 9, embeddingSize: 4, hiddenSize: 5, layers: 2, norm: true, seed: 3 });
  const inputs = Int32Array.from({ length: 6 }, (_, i) => i % 9), targets = Int32Array.from({ length: 6 }, (_, i) => (i + 2) % 9);
  const wantLoss = lm.step(inputs, targets, 2, lm.zeroState(2), false).loss;
  const [ins, tgs] = [inputs.slice(), targets.slice()];
  const l = lm.stepAsync(ins, tgs, 2, lm.zeroState(2), true);
  ins.fill(0); tgs.fill(0);
  await t.rejects(lm.stepAsync(inputs, targets, 2, lm.zeroState(2), true), { code: 'ERR_WNLSTM_BUSY' },
    'a second training step while one is in flight is refused (it would replace the first one\'s masks)');
  t.throws(() => lm.step(inputs, targets, 2, lm.zeroState(2), false), { code: 'ERR_WNLSTM_BUSY' }, 'a sync step too');
  t.equal((await l).loss, wantLoss, 'LanguageModel.stepAsync: ids and targets at the call');
  const stacked = stack.forwardAsync(x, { batchSize: 2 });
  await t.rejects(stack.backwardAsync(new Float32Array(3 * 2 * 3)), { code: 'ERR_WNLSTM_BUSY' }, 'a stack refuses overlapping calls');
  await stacked;
  await t.rejects(stack.forwardAsync(x, { batchSize: 2, initialStates: [{ c: 5, h: {} } as never] }), { code: 'ERR_WNLSTM_TYPE' },
    'a state that is not an array: the cell\'s coded error');
  await t.rejects(cell.forwardAsync(new DataView(new ArrayBuffer(96)) as never, { batchSize: 2 }), { code: 'ERR_WNLSTM_TYPE' }, 'a DataView too');

  const session = new StreamingSession(cell, 2), ref = new StreamingSession(cell, 2);
  const frames = [x.slice(0, 8), x.slice(8, 16), x.slice(16, 24)];
  const wantFrames = frames.map((fr) => ref.step(fr));
  const buf = new Float32Array(8);
  const steps = frames.map((fr) => { buf.set(fr); const p = session.stepAsync(buf); return p; }); // one buffer, reused
  t.throws(() => session.step(frames[0]), { code: 'ERR_WNLSTM_BUSY' }, 'a sync step while async steps are in flight');
  const got = await Promise.all(steps);
  got.forEach((h, i) => assertClose(t, h, wantFrames[i], EXACT, `session step ${i}: queued in order, on the frame at its call`));

  const file = path.join(tmp, 'snapshot.ckpt');
  const w = Float32Array.of(1, 2, 3);
  const saved = saveCheckpointAsync(file, { meta: { n: 1 }, arrays: { w } });
  w.fill(0);
  await saved;
  t.same(Array.from((await loadCheckpointAsync(file)).arrays.w), [1, 2, 3], 'saveCheckpointAsync: the arrays at the call');
  cell.dispose();
});

t.test('the event loop stays responsive during async work and async training', async (t) => {
  const cell = new WeightNormLSTMCell(512, { inputSize: 512, seed: 1 });
  const x = randomArray(new Random(3), 64 * 64 * 512, 1, Float32Array);
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
  // A timer that asks for a turn every millisecond: a blocked loop would run it once per forward. (The
  // worst single delay is not asserted: on 2 cores the OS may pause the main thread for a time slice
  // while the forward's threads run, whatever the library does.)
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const start = Date.now();
  let work = 0;
  while (Date.now() - start < 1500) { await cell.forwardAsync(x, { batchSize: 64 }); work++; }
  clearInterval(timer);
  delay.disable();
  const ms = (q: number) => (delay.percentile(q) / 1e6).toFixed(1);
  t.ok(work >= 3, `${work} M-sized forwards (T64 B64 H512) in 1.5 s`);
  t.ok(ticks >= 20 * work, `the loop turned ${ticks} times during ${work} async forwards`);
  t.ok(delay.percentile(50) / 1e6 < 15, `event-loop delay median ${ms(50)} ms (p99 ${ms(99)}, max ${(delay.max / 1e6).toFixed(1)}) during async forwards`);
  cell.dispose();

  const corpus = path.join(tmp, 'tiny.txt');
  fs.writeFileSync(corpus, Array.from({ length: 300 }, (_, i) => `a quick test line ${i % 5}`).join('\n'));
  const options = { corpus, layers: 1, hidden: 32, embedding: 16, bptt: 20, batch: 8, steps: 60, evalEvery: 30, evalTokens: 1000, arms: ['wn' as const], out: '' };
  const d2 = monitorEventLoopDelay({ resolution: 5 });
  d2.enable();
  const seen: number[] = [];
  const asyncResult = await trainAsync(options, (p) => seen.push(p.step));
  d2.disable();
  const syncResult = train(options);
  t.same(asyncResult.arms[0].curve.map((p) => p.trainLoss), syncResult.arms[0].curve.map((p) => p.trainLoss), 'trainAsync gives the same losses as train');
  t.ok(seen.includes(60), 'progress arrives from the worker');
  t.ok(d2.percentile(99) / 1e6 < 60, `event-loop delay p99 ${(d2.percentile(99) / 1e6).toFixed(1)} ms (max ${(d2.max / 1e6).toFixed(1)}) during trainAsync`);
  await t.rejects(trainAsync({ ...options, steps: 0 }), { code: 'ERR_WNLSTM_CONFIG' }, 'errors in the worker reject with their code');
});

t.test('a language-model training step off the main thread equals the sync one', async (t) => {
  const make = () => new LanguageModel({ vocabSize: 9, embeddingSize: 5, hiddenSize: 7, layers: 2, norm: true, dropout: 0.3, seed: 3 });
  const a = make(), b = make();
  const inputs = Int32Array.from({ length: 12 }, (_, i) => i % 9), targets = Int32Array.from({ length: 12 }, (_, i) => (i + 1) % 9);
  const ra = a.step(inputs, targets, 3, a.zeroState(3), true);
  const rb = await b.stepAsync(inputs, targets, 3, b.zeroState(3), true);
  t.equal(rb.loss, ra.loss, 'same loss (same dropout masks from the same seed)');
  const ga = a.parameters(), gb = b.parameters();
  ga.forEach((block, i) => assertClose(t, gb[i].grad, block.grad, EXACT, `same gradient of ${block.name}`));
  assertClose(t, rb.state[1].h, ra.state[1].h, EXACT, 'same carried state');
});

t.test('training checkpoints keep the weights by TF name', async (t) => {
  const corpus = path.join(tmp, 'ck.txt');
  fs.writeFileSync(corpus, Array.from({ length: 200 }, (_, i) => `line ${i % 9} of text`).join('\n'));
  const prefix = path.join(tmp, 'named');
  train({ corpus, layers: 2, hidden: 8, embedding: 6, bptt: 10, batch: 4, steps: 10, evalEvery: 10, evalTokens: 500, arms: ['wn'], out: '', checkpoint: prefix });
  const names = Object.keys(loadCheckpointSync(`${prefix}.wn.ckpt`).arrays);
  for (const name of ['weights/lstm_0/kernel', 'weights/lstm_0/bias', 'weights/lstm_0/norm_0', 'weights/lstm_1/norm_1', 'weights/embedding', 'weights/softmax/kernel', 'weights/softmax/bias']) {
    t.ok(names.includes(name), name);
  }
  t.ok(names.some((n) => n.startsWith('opt/')) && names.some((n) => n.startsWith('state/')), 'optimizer state and carried LSTM state');
});

t.test('streaming sessions', async (t) => {
  const cells = [new WeightNormLSTMCell(9, { inputSize: 4, seed: 1 }), new WeightNormLSTMCell(6, { inputSize: 9, seed: 2, numProj: 5 })];
  const T = 5, B = 3, rng = new Random(4);
  const x = randomArray(rng, T * B * 4, 1, Float32Array);
  // Reference: the whole sequence through both layers with forward().
  const h1 = cells[0].forward(x, { batchSize: B, training: false }).outputs;
  const ref = cells[1].forward(h1, { batchSize: B, training: false }).outputs;
  const a = new StreamingSession(cells, B), b = new StreamingSession(cells, B);
  for (let s = 0; s < T; s++) {
    const frame = x.subarray(s * B * 4, (s + 1) * B * 4);
    const out = a.step(frame);
    assertClose(t, out, ref.subarray(s * B * 5, (s + 1) * B * 5), { rtol: 1e-5, atol: 1e-6 }, `step ${s} equals forward()`);
    assertClose(t, await b.stepAsync(frame), out, EXACT, `step ${s}: stepAsync on a second session over the same cells`);
  }
  const fresh = new StreamingSession(cells, B);
  assertClose(t, fresh.step(x.subarray(0, B * 4)), ref.subarray(0, B * 5), { rtol: 1e-5, atol: 1e-6 }, 'a new session starts from zero, whatever the others did');
  a.reset(1);
  t.ok(a.state[0].c.subarray(9, 18).every((v) => v === 0) && a.state[0].c.subarray(0, 9).some((v) => v !== 0), 'reset(stream) zeroes one stream only');
  // Sessions leave a training forward's saved activations alone.
  const dy = randomArray(rng, T * B * 9, 1, Float32Array);
  cells[0].forward(x, { batchSize: B });
  const g1 = cells[0].backward(dy);
  cells[0].forward(x, { batchSize: B });
  a.step(x.subarray(0, B * 4));
  assertClose(t, cells[0].backward(dy).grads.kernel, g1.grads.kernel, EXACT, 'training unaffected by a session step in between');
  t.throws(() => new StreamingSession([], 1), { code: 'ERR_WNLSTM_CONFIG' });
  t.throws(() => a.reset(7), { code: 'ERR_WNLSTM_RANGE' });

  const lm = new LanguageModel({ vocabSize: 11, embeddingSize: 4, hiddenSize: 6, layers: 2, norm: true, seed: 5 });
  const session = new LanguageModelSession(lm, 2);
  const ids = [[1, 2], [3, 4], [5, 6]];
  let p = new Float32Array(0);
  for (const step of ids) p = session.next(step);
  t.ok(Math.abs(p.subarray(0, 11).reduce((s, v) => s + v, 0) - 1) < 1e-5, 'next() gives probabilities');
  // The same tokens through the training path: the loss of target 0 after them is -log p[0].
  const inputs = Int32Array.from(ids.flat()), targets = Int32Array.from([0, 0, 0, 0, 0, 0]);
  const loss = lm.step(inputs, targets, 2, lm.zeroState(2), false).loss;
  t.ok(Number.isFinite(loss), 'the model still trains and evaluates beside sessions');
  const again = new LanguageModelSession(lm, 2);
  for (const step of ids.slice(0, -1)) again.next(step);
  assertClose(t, await again.nextAsync(ids[2]), p, { rtol: 1e-6, atol: 1e-7 }, 'nextAsync equals next');
});

// PyTorch's nn.LSTM, written from its documentation: gates i, f, g, o; c' = f c + i g; h = o tanh(c'),
// projected by weight_hr when proj_size > 0.
function torchLstm(w: Record<string, ArrayLike<number>>, x: ArrayLike<number>, T: number, B: number, I: number, H: number, P: number) {
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  let c = new Float64Array(B * H), h = new Float64Array(B * P);
  const out = new Float64Array(T * B * P);
  for (let t = 0; t < T; t++) {
    const c2 = new Float64Array(B * H), h2 = new Float64Array(B * P);
    for (let b = 0; b < B; b++) {
      const gate = (k: number, u: number) => {
        const row = k * H + u;
        let s = w.bias_ih_l0[row] + w.bias_hh_l0[row];
        for (let r = 0; r < I; r++) s += w.weight_ih_l0[row * I + r] * x[(t * B + b) * I + r];
        for (let r = 0; r < P; r++) s += w.weight_hh_l0[row * P + r] * h[b * P + r];
        return s;
      };
      const hh = new Float64Array(H);
      for (let u = 0; u < H; u++) {
        c2[b * H + u] = sig(gate(1, u)) * c[b * H + u] + sig(gate(0, u)) * Math.tanh(gate(2, u));
        hh[u] = sig(gate(3, u)) * Math.tanh(c2[b * H + u]);
      }
      for (let p = 0; p < P; p++) {
        let v = hh[p];
        if (w.weight_hr_l0) { v = 0; for (let u = 0; u < H; u++) v += w.weight_hr_l0[p * H + u] * hh[u]; }
        h2[b * P + p] = v;
        out[(t * B + b) * P + p] = v;
      }
    }
    c = c2; h = h2;
  }
  return out;
}

t.test("weights in PyTorch's and TensorFlow's layouts", async (t) => {
  for (const numProj of [undefined, 3]) {
    const I = 4, H = 5, P = numProj ?? H, T = 3, B = 2, rng = new Random(7);
    const torch: Record<string, Float64Array> = {
      weight_ih_l0: randomArray(rng, 4 * H * I, 0.5), weight_hh_l0: randomArray(rng, 4 * H * P, 0.5),
      bias_ih_l0: randomArray(rng, 4 * H, 0.5), bias_hh_l0: randomArray(rng, 4 * H, 0.5),
      ...(numProj ? { weight_hr_l0: randomArray(rng, P * H, 0.5) } : {}),
    };
    const x = randomArray(rng, T * B * I);
    const expected = torchLstm(torch, x, T, B, I, H, P);
    for (const norm of [true, false]) {
      const cell = new WeightNormLSTMCell(H, { inputSize: I, numProj, norm, dtype: 'float64', seed: 1, forgetBias: 1 });
      fromPyTorch(cell, torch);
      assertClose(t, cell.forward(x, { batchSize: B }).outputs, expected, { rtol: 1e-10, atol: 1e-12 },
        `norm=${norm} proj=${numProj ?? '-'}: imported PyTorch weights give PyTorch's outputs`);
      const back = toPyTorch(cell);
      for (const [name, values] of Object.entries(torch)) {
        // bias_ih and bias_hh come back summed into bias_ih.
        const want = name === 'bias_ih_l0' ? values.map((v, i) => v + torch.bias_hh_l0[i]) : name === 'bias_hh_l0' ? values.map(() => 0) : values;
        assertClose(t, back[name], want, { rtol: 1e-6, atol: 1e-6 }, `norm=${norm} proj=${numProj ?? '-'}: ${name} round-trips`);
      }
      const tf = toTensorFlow(cell);
      t.ok(Object.keys(tf).every((k) => k.startsWith(norm ? 'rnn/weight_norm_lstm_cell/' : 'rnn/lstm_cell/')), 'TF variable names under the scope');
      const other = new WeightNormLSTMCell(H, { inputSize: I, numProj, norm, dtype: 'float64', seed: 9 });
      fromTensorFlow(other, tf);
      assertClose(t, other.forward(x, { batchSize: B }).outputs, expected, { rtol: 1e-10, atol: 1e-12 }, 'TF export then import reproduces the cell');
    }
  }
  t.throws(() => toPyTorch(new LSTMCell(3, { inputSize: 2, usePeepholes: true })), { code: 'ERR_WNLSTM_CONFIG' }, 'peepholes have no PyTorch equivalent');
  t.throws(() => fromPyTorch(new LSTMCell(3, { inputSize: 2 }), { weight_ih_l0: new Float32Array(5) }), { code: 'ERR_WNLSTM_SHAPE' });
  t.throws(() => fromTensorFlow(new LSTMCell(3, { inputSize: 2 }), { 'other/kernel': new Float32Array(60) }), { code: 'ERR_WNLSTM_UNKNOWN_WEIGHT' });
});

t.test('async checkpoints', async (t) => {
  const file = path.join(tmp, 'a.ckpt');
  await saveCheckpointAsync(file, { meta: { n: 1 }, arrays: { w: Float32Array.of(1, 2) } });
  const back = await loadCheckpointAsync(file);
  t.same(Array.from(back.arrays.w), [1, 2]);
  fs.writeFileSync(file, fs.readFileSync(file).subarray(0, 20));
  await t.rejects(loadCheckpointAsync(file), { code: 'ERR_WNLSTM_CHECKPOINT' }, 'truncated');
});

t.test('fuzz: thousands of random and malformed calls give coded errors, never a crash', async (t) => {
  const rng = new Random(11);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng.uniform() * xs.length)];
  const junk = () => pick<unknown>([undefined, null, NaN, -1, 0, 1.5, 3, 1e12, 'x', {}, [], [1, 2], () => 1, Symbol('s'),
    new Float32Array(0), new Float32Array(3), new Float32Array(12).fill(NaN), new Float64Array(6), new Int32Array(2),
    new Float32Array(6).fill(0.5), { batchSize: pick([1, 2, -1, 'a']) }, { c: new Float32Array(3), h: null }]);
  const codes = new Map<string, number>();
  let calls = 0, ok = 0, unexpected = 0;
  const attempt = (fn: () => unknown) => {
    calls++;
    try { fn(); ok++; } catch (err) {
      if (isWnlstmError(err)) codes.set(err.code, (codes.get(err.code) ?? 0) + 1);
      else { unexpected++; if (unexpected < 5) t.fail(`not a coded error: ${String(err)}`); }
    }
  };
  const valid = () => new Float32Array(pick([3, 6, 12])).map(() => rng.uniform() - 0.5);
  const start = Date.now();
  while (Date.now() - start < 4000) {
    // Mostly a valid cell (so the calls reach deep), sometimes junk options.
    const options = rng.uniform() < 0.8 ? pick([{ inputSize: 3 }, { inputSize: 3, numProj: 2, projClip: 0.5 }, { inputSize: 3, usePeepholes: true, cellClip: 1 }])
      : pick([{ inputSize: junk() }, { inputSize: 3, numProj: junk() }, { inputSize: 3, cellClip: junk() }, junk()]);
    let cell: WeightNormLSTMCell | null = null;
    attempt(() => { cell = new WeightNormLSTMCell(rng.uniform() < 0.8 ? 2 : (junk() as number), options as never); });
    if (!cell) continue;
    const c: WeightNormLSTMCell = cell;
    for (let k = 0; k < 12; k++) {
      const arg = () => (rng.uniform() < 0.5 ? valid() : junk());
      const op = pick(['step', 'forward', 'backward', 'setWeights', 'getWeights', 'dispose', 'zeroState']);
      if (op === 'step') attempt(() => c.step(arg() as never, pick([undefined, junk(), c.zeroState(pick([1, 2, 4]))]) as never));
      else if (op === 'forward') attempt(() => c.forward(arg() as never, pick([{ batchSize: pick([1, 2, 3]) }, junk()]) as never));
      else if (op === 'backward') attempt(() => c.backward(arg() as never, junk() as never));
      else if (op === 'setWeights') attempt(() => c.setWeights(pick<unknown>([junk(), { kernel: junk() }, { bias: valid() }, { bias: junk(), nope: junk() }]) as never));
      else if (op === 'getWeights') attempt(() => c.getWeights());
      else if (op === 'zeroState') attempt(() => c.zeroState(junk() as never));
      else if (rng.uniform() < 0.2) attempt(() => c.dispose());
    }
  }
  t.equal(unexpected, 0, `${calls} random calls: ${ok} went through, the rest failed with codes ` +
    [...codes.entries()].map(([c, n]) => `${c} ${n}`).join(', '));
  t.ok(calls > 1000 && ok > 100, `enough calls (${calls}), and enough that went through (${ok})`);
});

t.test('soak: memory stays flat over many steps and many cells', async (t) => {
  const rss = () => process.memoryUsage().rss / 2 ** 20;
  const x = new Float32Array(20 * 8 * 32).fill(0.1), dy = new Float32Array(20 * 8 * 64).fill(0.01);
  const cycle = () => {
    const cell = new WeightNormLSTMCell(64, { inputSize: 32, seed: 1 });
    for (let i = 0; i < 5; i++) { cell.forward(x, { batchSize: 8 }); cell.backward(dy); }
    cell.dispose();
  };
  for (let i = 0; i < 50; i++) cycle(); // warm-up: allocator and JIT settle
  const before = rss();
  const start = Date.now();
  let cycles = 0;
  while (Date.now() - start < 4000) { cycle(); cycles++; }
  const after = rss();
  t.ok(after - before < 30, `RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MiB over ${cycles} create/train/dispose cycles (${cycles * 5} steps)`);
});
