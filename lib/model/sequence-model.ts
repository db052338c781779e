// A sequence model the way TF.js and Keras users expect one: an input (token ids through an embedding, or
// float features), stacked (weight-normalised) LSTM layers and a head for the task, trained with fit() and
// used with evaluate() and predict(). Every training step runs in the native runtime (nn/runtime.ts): the
// padded batch goes in, the loss and the head's outputs come out.
import { loadCheckpoint, loadCheckpointAsync, modelArrays, saveCheckpoint, saveCheckpointAsync, Checkpoint } from '../core/checkpoint';
import { wnlstmError } from '../core/errors';
import { Random } from '../core/init';
import type { EmbeddingProjection, FloatArray, NativeBatch } from '../core/native';
import type { BackendName, LSTMCell, WeightNormLSTMCell } from '../nn/cell';
import { ModelRuntime } from '../nn/runtime';
import { HasParameters, Optimizer, OPTIMIZER_NAMES, OptimizerName, OptimizerState, optimizerByName, ParamBlock } from '../optim';
import * as fs from 'node:fs';
import { exportOnnx } from './onnx';
import { batchOf, Dataset, DataShape, encode, isClassifier, isPerStep, Sequence, subset, Targets, Task } from './data';

export type { Task, Sequence, Targets } from './data';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const VERSION: string = require('../../package.json').version;

export interface SequenceModelConfig {
  /** Token ids in [0, vocabSize) through an embedding of `embeddingSize` (default 32), or `features`
   * floats per step. */
  input: { vocabSize: number; embeddingSize?: number } | { features: number };
  /** classification: a class per sequence (from its last step); regression: values per sequence;
   * tagging: a class per step; forecasting: values per step; next-token: each step predicts the next token
   * of its own sequence (a language model; no y). */
  task: Task;
  /** Classes (classification, tagging) or values per prediction (regression, forecasting; default 1).
   * next-token: the vocabulary. */
  outputs?: number;
  /** Units of each LSTM layer (default 64). */
  units?: number;
  /** Stacked LSTM layers (default 1). */
  layers?: number;
  /** Weight normalisation (WeightNormLSTMCell, the default) or plain LSTMCells. */
  norm?: boolean;
  /** Each layer reads the sequences both ways (Keras's Bidirectional, merge 'concat'): a second cell runs
   * over each sequence reversed, and the layer outputs both cells' h side by side (2 x units). Not for
   * next-token (it would see the token it predicts). Default false. */
  bidirectional?: boolean;
  /** Dropout on the input, between layers and before the head, while training (default 0). */
  dropout?: number;
  /** Longer sequences keep their first maxLength steps (default: no limit). */
  maxLength?: number;
  /** Initialisation, dropout and shuffling (default 1). */
  seed?: number;
  dtype?: 'float32' | 'float64';
  backend?: BackendName;
  device?: number;
  /** On CUDA with float32: 'tf32' runs the cells' products on TF32 tensor cores (default 'fp32', exact;
   * see the cell option). */
  precision?: 'fp32' | 'tf32';
  /** Token ids: how the first layer projects the embedded tokens, as LanguageModel's option: 'auto' (the
   * default) projects the embedding's table once per batch where the vocabulary is small against the batch's
   * tokens, 'table' or 'rows' choose. The same values either way, up to float rounding. */
  embeddingProjection?: EmbeddingProjection;
}

/** What fit() and evaluate() report (Keras's names): loss, and accuracy (classes), mae (values) or
 * perplexity (next-token); fit() adds val_ for the validation data. */
export type Logs = Record<string, number>;

export interface History { epoch: number[]; history: Record<string, number[]> }

export interface FitOptions {
  epochs?: number;
  batchSize?: number;
  /** Evaluated after each epoch: [x, y] (x alone for next-token). */
  validationData?: [unknown, unknown?];
  /** Or this fraction of the data, taken from the end before shuffling (Keras's validationSplit). */
  validationSplit?: number;
  /** Reorder the training sequences each epoch (default true). */
  shuffle?: boolean;
  /** Used on the first fit(); later fits go on with the same optimizer and its state (default 'adam'). */
  optimizer?: OptimizerName;
  /** Default: Keras's (adam 1e-3, sgd 0.01, ...). */
  learningRate?: number;
  /** Global-norm gradient clipping (default 5; 0: none). */
  clipNorm?: number;
  weightDecay?: number;
  /** The learning rate of each epoch (from 0), given the current one. */
  lrSchedule?: (epoch: number, learningRate: number) => number;
  /** Stop when `monitor` (default val_loss, or loss without validation) has not improved by minDelta for
   * `patience` epochs; restoreBestWeights puts back the weights of its best epoch. */
  earlyStopping?: { monitor?: string; patience?: number; minDelta?: number; restoreBestWeights?: boolean };
  callbacks?: {
    onEpochBegin?: (epoch: number) => unknown;
    onEpochEnd?: (epoch: number, logs: Logs) => unknown;
    onBatchEnd?: (batch: number, logs: Logs) => unknown;
  };
  /** 1: a progress bar and a line per epoch on stderr; 0: quiet (default: 1 on a terminal, else 0). */
  verbose?: 0 | 1;
}

type AnyCell = LSTMCell | WeightNormLSTMCell;
type OptimizerSettings = { optimizer: OptimizerName; clipNorm: number; weightDecay?: number };
/** A step the training or evaluation loop asks its driver to run (sync or async). */
type Request = { batch: NativeBatch; train: boolean };
type StepResult = { loss: number; outputs?: FloatArray };

/** Options given as an object (or nothing). */
function optionsOf<O extends object>(o: O | undefined, what: string): O {
  if (o === undefined) return {} as O;
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw wnlstmError('ERR_WNLSTM_TYPE', `${what} options must be an object`);
  return o;
}

/** An integer in [1, max]; larger ones are not meant (a million epochs, a batch past 2^31). */
const positiveInt = (v: unknown, name: string, max = 2 ** 31 - 1) => {
  if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > max) {
    throw wnlstmError('ERR_WNLSTM_CONFIG', `${name} must be an integer in [1, ${max}], got ${String(v)}`);
  }
  return v as number;
};

export class SequenceModel implements HasParameters {
  readonly config: Readonly<Required<Omit<SequenceModelConfig, 'backend' | 'device' | 'maxLength'>>> &
    Pick<SequenceModelConfig, 'backend' | 'device' | 'maxLength'>;
  /** Set true (e.g. in a callback) to end fit() after the current batch. */
  stopTraining = false;
  readonly #runtime: ModelRuntime;
  readonly #shape: DataShape;
  readonly #shuffle: Random;
  #optimizer: Optimizer | null = null;
  #tail: Promise<unknown> = Promise.resolve();
  /** What made #optimizer (saved with the model, to make it again on load). */
  #optimizerSettings: OptimizerSettings | null = null;

  constructor(config: SequenceModelConfig) {
    if (config === null || typeof config !== 'object') throw wnlstmError('ERR_WNLSTM_CONFIG', 'config must be an object');
    const { input, task } = config;
    const tasks: Task[] = ['classification', 'regression', 'tagging', 'forecasting', 'next-token'];
    if (!tasks.includes(task)) throw wnlstmError('ERR_WNLSTM_CONFIG', `task must be one of ${tasks.join(', ')}, got ${String(task)}`);
    if (input === null || typeof input !== 'object') throw wnlstmError('ERR_WNLSTM_CONFIG', 'input must be { vocabSize, embeddingSize? } or { features }');
    const ids = 'vocabSize' in input;
    const vocabSize = ids ? positiveInt(input.vocabSize, 'input.vocabSize') : 0;
    const inputSize = ids ? positiveInt(input.embeddingSize ?? 32, 'input.embeddingSize') : positiveInt((input as { features: number }).features, 'input.features');
    if (task === 'next-token' && !ids) throw wnlstmError('ERR_WNLSTM_CONFIG', 'next-token prediction needs token ids (input.vocabSize)');
    if (task === 'next-token' && config.outputs !== undefined && config.outputs !== vocabSize) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', 'next-token prediction has one output per token of the vocabulary');
    }
    const classes = isClassifier(task);
    if (classes && task !== 'next-token' && config.outputs === undefined) throw wnlstmError('ERR_WNLSTM_CONFIG', `${task} needs outputs: the number of classes`);
    const outputs = task === 'next-token' ? vocabSize : positiveInt(config.outputs ?? 1, 'outputs');
    const units = positiveInt(config.units ?? 64, 'units', 16384), layers = positiveInt(config.layers ?? 1, 'layers', 1024);
    const bidirectional = config.bidirectional ?? false;
    if (typeof bidirectional !== 'boolean') throw wnlstmError('ERR_WNLSTM_CONFIG', 'bidirectional must be a boolean');
    if (bidirectional && task === 'next-token') throw wnlstmError('ERR_WNLSTM_CONFIG', 'next-token prediction cannot be bidirectional (it would see the token it predicts)');
    const maxLength = config.maxLength === undefined ? undefined : positiveInt(config.maxLength, 'maxLength');
    const seed = config.seed ?? 1;
    if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) throw wnlstmError('ERR_WNLSTM_CONFIG', 'seed must be an integer in [0, 2^32)');
    const dtype = config.dtype ?? 'float32';
    if (dtype !== 'float32' && dtype !== 'float64') throw wnlstmError('ERR_WNLSTM_CONFIG', `dtype must be 'float32' or 'float64'`);
    // Checked where they are used: precision by the cells, embeddingProjection by the native model.
    const precision = config.precision ?? 'fp32', embeddingProjection = config.embeddingProjection ?? 'auto';
    this.config = Object.freeze({
      input: Object.freeze({ ...input }), task, outputs, units, layers, norm: config.norm ?? true, bidirectional, dropout: config.dropout ?? 0,
      maxLength, seed, dtype, precision, embeddingProjection, backend: config.backend, device: config.device,
    });
    // Glorot-uniform limits (Keras's default) for the cells' kernels and the head; embeddings ±0.05.
    const glorot = (fanIn: number, fanOut: number) => Math.sqrt(6 / (fanIn + fanOut));
    const D = bidirectional ? 2 : 1;
    const cellScale = glorot(Math.max(inputSize, units * D) + units, 4 * units);
    this.#runtime = new ModelRuntime({
      vocabSize, inputSize, hiddenSize: units, layers, outputSize: outputs, perStep: isPerStep(task),
      loss: classes ? 'crossEntropy' : 'squaredError', dropout: this.config.dropout, norm: this.config.norm, bidirectional, seed, dtype,
      precision, embeddingProjection, backend: config.backend, device: config.device, cellInitializer: { kind: 'uniform', min: -cellScale, max: cellScale },
      embeddingScale: 0.05, headScale: glorot(units * D, outputs),
    });
    this.#shape = { task, vocabSize, features: ids ? 0 : inputSize, outputs, maxLength: maxLength ?? 2 ** 31 - 1 };
    this.#shuffle = new Random(seed + 31);
  }

  /** The LSTM layers' cells: weights by TF name (getWeights/setWeights), streaming sessions. */
  get cells(): AnyCell[] { return this.#runtime.cells; }

  /** The model's blocks (embedding, lstm_<l>, dense): one arena, updated by one optimizer. */
  parameters(): ParamBlock[] { return this.#runtime.blocks; }

  /** The optimizer of the last fit() (null before). */
  get optimizer(): Optimizer | null { return this.#optimizer; }

  /** The number of parameters. */
  get parameterCount(): number { return this.#runtime.blocks.reduce((n, b) => n + b.size, 0); }

  /** A table of the layers, their output shapes and parameters (Keras's model.summary()). */
  summary(): string {
    const { input, task, units, layers, outputs, norm, bidirectional } = this.config;
    const D = bidirectional ? 2 : 1, perStep = isPerStep(task), sizes = Object.fromEntries(this.#runtime.blocks.map((b) => [b.name, b.size]));
    const rows: [string, string, number][] = [];
    if ('vocabSize' in input) rows.push([`embedding (${input.vocabSize} ids)`, `[steps, batch, ${input.embeddingSize ?? 32}]`, sizes.embedding]);
    else rows.push(['input (features)', `[steps, batch, ${input.features}]`, 0]);
    const cell = norm ? 'WeightNormLSTMCell' : 'LSTMCell';
    for (let l = 0; l < layers; l++) {
      rows.push([`lstm_${l}: ${bidirectional ? `bidirectional ${cell} x 2` : cell} (${units})`, `[steps, batch, ${units * D}]`,
        sizes[`lstm_${l}`] + (sizes[`lstm_${l}_backward`] ?? 0)]);
    }
    const head = `${isClassifier(task) ? 'dense + softmax' : 'dense'} (${perStep ? 'every step' : 'last step'})`;
    rows.push([head, perStep ? `[steps, batch, ${outputs}]` : `[batch, ${outputs}]`, sizes.dense]);
    const w = [Math.max(5, ...rows.map((r) => r[0].length)), Math.max(12, ...rows.map((r) => r[1].length))];
    const line = (a: string, b: string, c: string) => `${a.padEnd(w[0])}  ${b.padEnd(w[1])}  ${c}`;
    return [`SequenceModel (${task})`, line('layer', 'output shape', 'parameters'), ...rows.map((r) => line(r[0], r[1], r[2].toLocaleString('en-US'))),
      `total parameters: ${this.parameterCount.toLocaleString('en-US')}`].join('\n');
  }

  // ---- training ----

  /** Trains on x (sequences) and y (labels or targets; none for next-token); returns the history. */
  fit(x: Sequence[], y?: Targets, options?: FitOptions): History {
    return drive(this.#fit(x, y, optionsOf(options, 'fit')), (r) => this.#runtime.step(r.batch, r.train));
  }

  /** fit() with every step off the main thread; async callbacks are awaited. */
  fitAsync(x: Sequence[], y?: Targets, options?: FitOptions): Promise<History> {
    return this.#queued(this.#fit(x, y, optionsOf(options, 'fit')));
  }

  /** The mean loss and metrics over x and y. */
  evaluate(x: Sequence[], y?: Targets, options?: { batchSize?: number }): Logs {
    const { batchSize = 64 } = optionsOf(options, 'evaluate');
    return drive(this.#evaluate(this.#encode(x, y, 'x'), positiveInt(batchSize, 'batchSize')), (r) => this.#runtime.step(r.batch, r.train));
  }

  evaluateAsync(x: Sequence[], y?: Targets, options?: { batchSize?: number }): Promise<Logs> {
    const { batchSize = 64 } = optionsOf(options, 'evaluate');
    return this.#queued(this.#evaluate(this.#encode(x, y, 'x'), positiveInt(batchSize, 'batchSize')));
  }

  /** Predictions for each sequence: class probabilities (classification: [classes]; tagging and next-token:
   * [steps][classes]) or values ([outputs], or [steps][outputs] for forecasting), steps up to its length. */
  predict(x: Sequence[], options?: { batchSize?: number }): number[][] | number[][][] {
    const { batchSize = 64 } = optionsOf(options, 'predict');
    return drive(this.#predict(x, positiveInt(batchSize, 'batchSize')), (r) => this.#runtime.step(r.batch, r.train));
  }

  predictAsync(x: Sequence[], options?: { batchSize?: number }): Promise<number[][] | number[][][]> {
    const { batchSize = 64 } = optionsOf(options, 'predict');
    return this.#queued(this.#predict(x, positiveInt(batchSize, 'batchSize')));
  }

  /** The mean loss over x and y as one batch, and its gradient for every block (by name), without changing
   * the weights (dropout applies, as in training). For checking, and for optimizers of your own. */
  gradients(x: Sequence[], y?: Targets): { loss: number; grads: Record<string, FloatArray> } {
    const data = this.#encode(x, y, 'x');
    const batch = batchOf(this.#shape, data, Array.from({ length: data.size }, (_, i) => i), this.config.dtype);
    for (const b of this.#runtime.blocks) b.zeroGrad();
    const { loss } = this.#runtime.step(batch, true);
    return { loss, grads: Object.fromEntries(this.#runtime.blocks.map((b) => [b.name, b.grad])) };
  }

  /** Async calls run one after another (a service's overlapping requests wait their turn); each takes its
   * inputs at the call. A sync call while one is in flight throws ERR_WNLSTM_BUSY. */
  #queued<R>(gen: Generator<unknown, R, StepResult>): Promise<R> {
    const result = driveAsync(gen, (r) => this.#runtime.stepAsync(r.batch, r.train), this.#tail);
    this.#tail = result.catch(() => undefined);
    return result;
  }

  #encode(x: unknown, y: unknown, name: string): Dataset {
    if (this.config.task !== 'next-token' && (y === undefined || y === null)) {
      throw wnlstmError('ERR_WNLSTM_TYPE', `${this.config.task} needs ${name === 'x' ? 'y' : `${name}'s targets`}`);
    }
    return encode(this.#shape, x, y ?? null, name);
  }

  #makeOptimizer(options: FitOptions): Optimizer {
    const name = options.optimizer ?? 'adam';
    if (!OPTIMIZER_NAMES.includes(name)) throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer must be one of ${OPTIMIZER_NAMES.join(', ')}`);
    const clip = options.clipNorm ?? 5;
    if (!(clip >= 0)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'clipNorm must be a non-negative number');
    const opt = optimizerByName(name, this, { learningRate: options.learningRate, clipNorm: clip > 0 ? clip : undefined, weightDecay: options.weightDecay });
    this.#optimizerSettings = { optimizer: name, clipNorm: clip, weightDecay: options.weightDecay };
    return opt;
  }

  *#fit(x: Sequence[], y: Targets | undefined, options: FitOptions): Generator<Request | Promise<unknown> | unknown, History, StepResult> {
    const epochs = positiveInt(options.epochs ?? 1, 'epochs', 1e6), batchSize = positiveInt(options.batchSize ?? 32, 'batchSize');
    let train = this.#encode(x, y, 'x');
    let valid: Dataset | null = null;
    if (options.validationData !== undefined) {
      if (!Array.isArray(options.validationData)) throw wnlstmError('ERR_WNLSTM_TYPE', 'validationData must be [x, y]');
      valid = this.#encode(options.validationData[0], options.validationData[1], 'validationData');
    } else if (options.validationSplit !== undefined) {
      const f = options.validationSplit;
      if (!(f > 0 && f < 1)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'validationSplit must be in (0, 1)');
      const nValid = train.size - Math.floor(train.size * (1 - f)); // Keras: the last (1 - f) of the sequences train
      if (nValid < 1 || nValid >= train.size) throw wnlstmError('ERR_WNLSTM_SHAPE', `validationSplit ${f} of ${train.size} sequences leaves no training or no validation data`);
      const all = Array.from({ length: train.size }, (_, i) => i);
      valid = subset(train, all.slice(train.size - nValid), this.#shape);
      train = subset(train, all.slice(0, train.size - nValid), this.#shape);
    }
    const stop = options.earlyStopping;
    const monitor = stop?.monitor ?? (valid ? 'val_loss' : 'loss');
    const patience = stop?.patience ?? 0, minDelta = stop?.minDelta ?? 0;
    if (stop && (!Number.isInteger(patience) || patience < 0)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'earlyStopping.patience must be a non-negative integer');
    const reported = Object.keys(new Metrics(this.#shape).logs()).flatMap((k) => (valid ? [k, `val_${k}`] : [k]));
    if (stop && !reported.includes(monitor)) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `earlyStopping monitors '${monitor}', which fit() does not report here (${reported.join(', ')})`);
    }
    const verbose = options.verbose ?? (process.stderr.isTTY ? 1 : 0);
    if (!this.#optimizer) this.#optimizer = this.#makeOptimizer(options);
    else if (options.optimizer !== undefined && options.optimizer !== this.#optimizerSettings!.optimizer) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `this model trains with ${this.#optimizerSettings!.optimizer}: its optimizer state carries over between fit() calls`);
    }
    const opt = this.#optimizer;
    if (options.learningRate !== undefined) opt.learningRate = options.learningRate;
    const history: History = { epoch: [], history: {} };
    const higherIsBetter = /acc/.test(monitor);
    let best = Infinity, bestWeights: FloatArray[] | null = null, wait = 0;
    this.stopTraining = false;
    const cb = options.callbacks ?? {};
    for (let epoch = 0; epoch < epochs && !this.stopTraining; epoch++) {
      if (options.lrSchedule) {
        const lr = options.lrSchedule(epoch, opt.learningRate);
        if (!(typeof lr === 'number' && lr > 0 && Number.isFinite(lr))) throw wnlstmError('ERR_WNLSTM_CONFIG', `lrSchedule gave ${String(lr)} for epoch ${epoch}`);
        opt.learningRate = lr;
      }
      if (cb.onEpochBegin) yield cb.onEpochBegin(epoch);
      const order = Array.from({ length: train.size }, (_, i) => i);
      if (options.shuffle ?? true) {
        for (let i = order.length - 1; i > 0; i--) {
          const j = Math.floor(this.#shuffle.uniform() * (i + 1));
          [order[i], order[j]] = [order[j], order[i]];
        }
      }
      const metrics = new Metrics(this.#shape), batches = Math.ceil(train.size / batchSize), started = Date.now();
      for (let k = 0; k < batches && !this.stopTraining; k++) {
        const batch = batchOf(this.#shape, train, order.slice(k * batchSize, (k + 1) * batchSize), this.config.dtype);
        batch.outputs = true;
        opt.zeroGrad();
        const r: StepResult = yield { batch, train: true };
        metrics.add(batch, r);
        opt.step(); // throws ERR_WNLSTM_NOT_FINITE when the gradients are
        if (verbose) progress(epoch, epochs, k + 1, batches, metrics.logs(), started);
        if (cb.onBatchEnd) yield cb.onBatchEnd(k, metrics.logs()); // means over the epoch so far, as Keras
      }
      const logs: Logs = metrics.logs();
      if (valid) {
        const v: Logs = yield* this.#evaluate(valid, batchSize);
        for (const [k, value] of Object.entries(v)) logs[`val_${k}`] = value;
      }
      history.epoch.push(epoch);
      for (const [k, value] of Object.entries(logs)) (history.history[k] ??= []).push(value);
      if (verbose) process.stderr.write(`\repoch ${epoch + 1}/${epochs} ${formatLogs(logs)} ${((Date.now() - started) / 1000).toFixed(1)} s\x1b[K\n`);
      if (cb.onEpochEnd) yield cb.onEpochEnd(epoch, { ...logs });
      if (stop) {
        const value = higherIsBetter ? -logs[monitor] : logs[monitor];
        if (value < best - minDelta) {
          best = value;
          wait = 0;
          if (stop.restoreBestWeights) bestWeights = this.#runtime.blocks.map((b) => b.getValues());
        } else if (++wait >= patience) { // Keras: stop once `patience` epochs in a row have not improved
          break;
        }
      }
    }
    if (bestWeights) this.#runtime.blocks.forEach((b, i) => b.setValues(bestWeights![i]));
    return history;
  }

  *#evaluate(data: Dataset, batchSize: number): Generator<Request, Logs, StepResult> {
    const metrics = new Metrics(this.#shape);
    for (let start = 0; start < data.size; start += batchSize) {
      const indices = Array.from({ length: Math.min(batchSize, data.size - start) }, (_, i) => start + i);
      const batch = batchOf(this.#shape, data, indices, this.config.dtype);
      batch.outputs = true;
      metrics.add(batch, yield { batch, train: false });
    }
    return metrics.logs();
  }

  *#predict(x: Sequence[], batchSize: number): Generator<Request, number[][] | number[][][], StepResult> {
    const data = encode(this.#shape, x, null, 'x');
    const O = this.#shape.outputs, perStep = isPerStep(this.config.task), classes = isClassifier(this.config.task);
    const out: (number[] | number[][])[] = [];
    for (let start = 0; start < data.size; start += batchSize) {
      const indices = Array.from({ length: Math.min(batchSize, data.size - start) }, (_, i) => start + i);
      const batch = batchOf(this.#shape, data, indices, this.config.dtype);
      delete batch.labels;
      batch.outputs = true;
      const { outputs } = yield { batch, train: false };
      const B = indices.length;
      const row = (r: number) => {
        const v = Array.from(outputs!.subarray(r * O, (r + 1) * O));
        return classes ? softmax(v) : v;
      };
      for (let b = 0; b < B; b++) {
        out.push(perStep ? Array.from({ length: batch.lengths![b] }, (_, t) => row(t * B + b)) : row(b));
      }
    }
    return out as number[][] | number[][][];
  }

  // ---- saving ----

  #checkpoint(): Checkpoint {
    const state = this.#optimizer?.getState();
    const arrays = modelArrays(this.cells, this.#runtime.blocks,
      { name: 'dense', kernelSize: this.config.units * (this.config.bidirectional ? 2 : 1) * this.config.outputs }, state?.buffers);
    const optimizer: Omit<OptimizerState, 'buffers'> & OptimizerSettings | null = state
      ? { ...this.#optimizerSettings!, kind: state.kind, step: state.step, learningRate: state.learningRate } : null;
    const { backend: _b, device: _d, ...config } = this.config;
    return { meta: { format: 'wnlstm-sequence-model', config, optimizer, rng: this.#runtime.rngState, shuffle: this.#shuffle.getState() }, arrays };
  }

  /** Writes the architecture, the weights by name and the optimizer state (the checkpoint format). */
  save(file: string): void { saveCheckpoint(file, this.#checkpoint()); }
  saveAsync(file: string): Promise<void> { return saveCheckpointAsync(file, this.#checkpoint()); }

  /** A model saved by save(), on `backend` (default: the CPU's auto choice). */
  static load(file: string, options: { backend?: BackendName; device?: number } = {}): SequenceModel {
    return SequenceModel.#restore(file, loadCheckpoint(file), options);
  }
  static async loadAsync(file: string, options: { backend?: BackendName; device?: number } = {}): Promise<SequenceModel> {
    return SequenceModel.#restore(file, await loadCheckpointAsync(file), options);
  }

  static #restore(file: string, { meta, arrays }: Checkpoint, options: { backend?: BackendName; device?: number }): SequenceModel {
    const bad = (why: string) => wnlstmError('ERR_WNLSTM_CHECKPOINT', `${file}: ${why}`);
    const m = meta as { format?: string; config?: SequenceModelConfig; optimizer?: (OptimizerState & OptimizerSettings) | null;
      rng?: { model: number[]; stack: number[] }; shuffle?: number[] } | null;
    if (!m || m.format !== 'wnlstm-sequence-model' || !m.config) throw bad('not a sequence model (saved by SequenceModel.save?)');
    const expected = ModelRuntime.parameterCount(runtimeShape(m.config));
    const held = Object.entries(arrays).reduce((n, [name, a]) => n + (name.startsWith('weights/') ? a.length : 0), 0);
    if (!Number.isFinite(expected) || expected !== held) throw bad(`its weights (${held} values) do not fit the model its config describes`);
    let model: SequenceModel;
    try {
      model = new SequenceModel({ ...m.config, ...options });
    } catch (err) {
      throw bad((err as Error).message);
    }
    try {
      const need = (name: string) => {
        const a = arrays[name];
        if (!(a instanceof (model.config.dtype === 'float64' ? Float64Array : Float32Array))) throw bad(`'${name}' is missing or not ${model.config.dtype}`);
        return a as FloatArray;
      };
      for (const cell of model.cells) {
        cell.setWeights(Object.fromEntries(Object.keys(cell.getWeights()).map((name) => [name, need(`weights/${cell.name}/${name}`)])));
      }
      const blocks = Object.fromEntries(model.parameters().map((b) => [b.name, b]));
      if (blocks.embedding) blocks.embedding.setValues(need('weights/embedding'));
      const kernel = need('weights/dense/kernel'), bias = need('weights/dense/bias');
      const dense = new (kernel.constructor as Float32ArrayConstructor)(kernel.length + bias.length);
      dense.set(kernel);
      dense.set(bias, kernel.length);
      blocks.dense.setValues(dense);
      if (m.rng) model.#runtime.rngState = m.rng;
      if (Array.isArray(m.shuffle)) model.#shuffle.setState(m.shuffle);
      if (m.optimizer) {
        const o = m.optimizer;
        const opt = model.#makeOptimizer({ optimizer: o.optimizer, learningRate: o.learningRate, clipNorm: o.clipNorm, weightDecay: o.weightDecay });
        const buffers: OptimizerState['buffers'] = {};
        for (const b of model.parameters()) {
          const get = (k: number) => (arrays[`opt/${b.name}/${k}`] as FloatArray | undefined) ?? null;
          buffers[b.name] = [get(1), get(2)];
        }
        opt.setState({ kind: o.kind, step: o.step, learningRate: o.learningRate, buffers });
        model.#optimizer = opt;
      }
    } catch (err) {
      model.dispose();
      throw (err as { code?: string }).code === 'ERR_WNLSTM_CHECKPOINT' ? err : bad((err as Error).message);
    }
    return model;
  }

  // ---- ONNX ----

  /** The model as an ONNX file's bytes (opset 17, float32): inputs `input` (token ids [steps, batch] int32, or
   * features [steps, batch, features]) and `lengths` [batch] int32; output `output`: what predict() gives
   * (class probabilities or values), [batch, outputs] or [steps, batch, outputs] (past a sequence's length: the
   * head on a zero state, to be ignored). */
  toOnnx(): Uint8Array {
    const blocks = Object.fromEntries(this.#runtime.blocks.map((b) => [b.name, b]));
    return exportOnnx({ config: this.config, cells: this.cells, blockValues: (name) => blocks[name].getValues() }, VERSION);
  }

  /** Writes toOnnx() to a file. */
  saveOnnx(file: string): void { fs.writeFileSync(file, this.toOnnx()); }

  /** Frees the native memory now (otherwise the garbage collector does); later calls throw ERR_WNLSTM_DISPOSED. */
  dispose(): void { this.#runtime.dispose(); }
}

/** The runtime's sizes for a config (for checking a saved model's weights before making it). */
function runtimeShape(c: SequenceModelConfig) {
  const ids = c.input && 'vocabSize' in c.input;
  const vocabSize = ids ? Number((c.input as { vocabSize: number }).vocabSize) : 0;
  const inputSize = ids ? Number((c.input as { embeddingSize?: number }).embeddingSize ?? 32) : Number((c.input as { features: number })?.features);
  const outputs = c.task === 'next-token' ? vocabSize : Number(c.outputs ?? 1);
  return { vocabSize, inputSize, hiddenSize: Number(c.units ?? 64), layers: Number(c.layers ?? 1), outputSize: outputs, norm: c.norm ?? true,
    bidirectional: c.bidirectional === true };
}

/** Loss and metrics over batches, each weighted by the rows it counts. */
class Metrics {
  #rows = 0;
  #loss = 0;
  #hits = 0;
  #absError = 0;
  constructor(readonly shape: DataShape) {}

  add(batch: NativeBatch, { loss, outputs }: StepResult): void {
    const O = this.shape.outputs, B = batch.batchSize, perStep = isPerStep(this.shape.task);
    const rows = perStep ? batch.steps * B : B;
    let counted = 0;
    for (let r = 0; r < rows; r++) {
      const valid = perStep ? Math.floor(r / B) < batch.lengths![r % B] : true;
      if (!valid) continue;
      if (batch.labels) {
        const y = batch.labels[r];
        if (y < 0) continue;
        let arg = 0;
        for (let o = 1; o < O; o++) if (outputs![r * O + o] > outputs![r * O + arg]) arg = o;
        this.#hits += arg === y ? 1 : 0;
      } else {
        for (let o = 0; o < O; o++) this.#absError += Math.abs(outputs![r * O + o] - batch.targets![r * O + o]) / O;
      }
      counted++;
    }
    this.#loss += loss * counted;
    this.#rows += counted;
  }

  logs(): Logs {
    const n = Math.max(this.#rows, 1), loss = this.#loss / n;
    if (this.shape.task === 'next-token') return { loss, accuracy: this.#hits / n, perplexity: Math.exp(loss) };
    return isClassifier(this.shape.task) ? { loss, accuracy: this.#hits / n } : { loss, mae: this.#absError / n };
  }
}

function softmax(v: number[]): number[] {
  const max = Math.max(...v);
  const e = v.map((z) => Math.exp(z - max)), sum = e.reduce((a, b) => a + b, 0);
  return e.map((z) => z / sum);
}

const formatLogs = (logs: Logs) => Object.entries(logs).map(([k, v]) => `${k} ${v.toFixed(4)}`).join('  ');

function progress(epoch: number, epochs: number, done: number, total: number, logs: Logs, started: number): void {
  const width = 24, filled = Math.round((width * done) / total);
  const bar = '='.repeat(Math.max(filled - 1, 0)) + (filled > 0 ? '>' : '') + ' '.repeat(width - filled);
  process.stderr.write(`\repoch ${epoch + 1}/${epochs} [${bar}] ${done}/${total} ${formatLogs(logs)} ${((Date.now() - started) / 1000).toFixed(1)} s\x1b[K`);
}

// The loops above are generators that yield the steps to run (and callbacks' results): one loop, run by a
// synchronous driver or by an asynchronous one that awaits each step off the main thread.
function drive<R>(gen: Generator<unknown, R, StepResult>, step: (r: Request) => StepResult): R {
  let next = gen.next();
  while (!next.done) next = gen.next(isRequest(next.value) ? step(next.value) : (undefined as unknown as StepResult));
  return next.value;
}

/** Runs the generator up to its first step now (its inputs are checked and taken), the steps after `after`. */
async function driveAsync<R>(gen: Generator<unknown, R, StepResult>, step: (r: Request) => Promise<StepResult>, after: Promise<unknown>): Promise<R> {
  let next = gen.next();
  await after;
  while (!next.done) next = gen.next(isRequest(next.value) ? await step(next.value) : ((await next.value) as StepResult));
  return next.value;
}

function isRequest(v: unknown): v is Request {
  return v !== null && typeof v === 'object' && 'batch' in v && 'train' in v;
}
