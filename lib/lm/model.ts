// An RNN language model (Zaremba et al. 2014 / char-rnn): embedding -> dropout -> stacked LSTM cells ->
// dropout -> dense -> softmax, trained by truncated BPTT with the state carried between windows.
import { addon, EmbeddingProjection, FloatArray, NativeBatch, RngState } from '../core/native';
import { LSTMState, BackendName } from '../nn/cell';
import { wnlstmError } from '../core/errors';
import { columnNorms, Random } from '../core/init';
import { StackedLSTM } from '../nn/layers';
import { ModelRuntime } from '../nn/runtime';
import { HasParameters, ParamBlock } from '../optim';

export interface LMConfig {
  vocabSize: number;
  embeddingSize: number;
  hiddenSize: number;
  layers: number;
  /** Weight normalisation in every cell (WeightNormLSTMCell) or none (LSTMCell). */
  norm: boolean;
  /** Dropout on the non-recurrent connections (embedding output, between layers, before the softmax). */
  dropout?: number;
  /** All weights start uniform in ±initScale; with norm, each gain starts at its column's norm, so both
   * parametrisations start as the same function. */
  initScale?: number;
  seed?: number;
  backend?: BackendName;
  /** With backend 'cuda': the device's index (default 0). */
  device?: number;
  dtype?: 'float32' | 'float64';
  /** On CUDA with float32: 'tf32' runs the cells' products on TF32 tensor cores (default 'fp32'). */
  precision?: 'fp32' | 'tf32';
  /** How the first layer projects the embedded characters or words: 'auto' (the default) projects the
   * embedding's table once per batch and gathers its rows by id where the vocabulary has at most half as many
   * rows as the window has tokens (the same values for less work), else each step's row; 'table' and 'rows'
   * choose (training steps with dropout take the rows: each token's row is then its own). */
  embeddingProjection?: EmbeddingProjection;
}

/** B parallel streams of a token sequence (Zaremba's batching): stream b is ids[b*L .. (b+1)*L). */
export function batchify(ids: Int32Array, batchSize: number): { streams: Int32Array; length: number } {
  const length = Math.floor(ids.length / batchSize);
  if (length < 2) throw wnlstmError('ERR_WNLSTM_CONFIG', `${ids.length} tokens are too few for batch size ${batchSize}`);
  const streams = new Int32Array(length * batchSize); // time-major [length, B]
  for (let b = 0; b < batchSize; b++) for (let t = 0; t < length; t++) streams[t * batchSize + b] = ids[b * length + t];
  return { streams, length };
}

/** The window starting at time t0 of batchified streams: inputs [T, B] and targets (shifted by one). */
export function window(data: { streams: Int32Array; length: number }, batchSize: number, t0: number, steps: number) {
  const T = Math.min(steps, data.length - 1 - t0);
  return {
    T,
    inputs: data.streams.subarray(t0 * batchSize, (t0 + T) * batchSize),
    targets: data.streams.subarray((t0 + 1) * batchSize, (t0 + 1 + T) * batchSize),
  };
}

/** The model's weights, gradients and optimizer state live in the backend, in one buffer each (an
 * arena, native/include/wnlstm/model.h), and a training step runs there: token ids go in, the loss and
 * the final state come out. The cells (`stack.cells`) read their weights from the arena too. */
export class LanguageModel implements HasParameters {
  readonly #runtime: ModelRuntime;
  /** The recurrent layers (for streaming sessions and for reading or setting a cell's weights by TF name). */
  readonly stack: StackedLSTM;

  constructor(readonly config: LMConfig) {
    const { vocabSize, embeddingSize, hiddenSize, layers, norm, seed = 1, initScale = 0.08, dtype = 'float32' } = config;
    if (!Number.isInteger(vocabSize) || vocabSize < 1) throw wnlstmError('ERR_WNLSTM_CONFIG', 'vocabSize must be a positive integer');
    this.#runtime = new ModelRuntime({
      vocabSize, inputSize: embeddingSize, hiddenSize, layers, outputSize: vocabSize, perStep: true, loss: 'crossEntropy',
      dropout: config.dropout ?? 0, norm, seed, dtype, backend: config.backend, device: config.device,
      embeddingProjection: config.embeddingProjection, precision: config.precision,
      cellInitializer: { kind: 'uniform', min: -initScale, max: initScale }, embeddingScale: initScale, headScale: initScale,
    });
    this.stack = new StackedLSTM(this.#runtime.cells); // the cells as a group: the runtime's step draws its own dropout masks
  }


  /** The number of parameters a model of this config has (embedding, cells, softmax layer). */
  static parameterCount({ vocabSize, embeddingSize, hiddenSize, layers, norm }: LMConfig): number {
    return ModelRuntime.parameterCount({ vocabSize, inputSize: embeddingSize, hiddenSize, layers, outputSize: vocabSize, norm });
  }

  /** The blocks of the arena: embedding [V,E], lstm_<l> (the cell's weights in getWeights() order), dense
   * (kernel [H,V], then bias [V]). Their values and gradients are read and written as copies; an optimizer
   * updates all of them in one call. */
  parameters(): ParamBlock[] { return this.#runtime.blocks; }

  /** The random state of the dropout masks (checkpoints): embedding and head (`model`), between layers (`stack`). */
  get rngState(): RngState { return this.#runtime.rngState; }
  set rngState(state: RngState) { this.#runtime.rngState = state; }

  zeroState(batchSize: number): LSTMState[] { return this.stack.zeroState(batchSize); }

  /** Mean loss (nats per token) of one window (inputs and targets [T, batchSize], time-major) from `state`
   * (one per layer); with `train`, dropout on and the gradients accumulated. Returns the final state. */
  step(inputs: Int32Array, targets: Int32Array, batchSize: number, state: LSTMState[] | null, train: boolean) {
    const r = this.#runtime.step(this.#batch(inputs, targets, batchSize, state), train);
    return { loss: r.loss, state: r.states as LSTMState[] };
  }

  /** step() off the main thread: the inputs, targets and state are taken as they are now. The model and
   * its cells refuse other calls (ERR_WNLSTM_BUSY) until it settles. */
  async stepAsync(inputs: Int32Array, targets: Int32Array, batchSize: number, state: LSTMState[] | null, train: boolean) {
    const r = await this.#runtime.stepAsync(this.#batch(inputs, targets, batchSize, state), train);
    return { loss: r.loss, state: r.states as LSTMState[] };
  }

  #batch(inputs: Int32Array, targets: Int32Array, batchSize: number, states: LSTMState[] | null): NativeBatch {
    if (!(inputs instanceof Int32Array) || !(targets instanceof Int32Array)) throw wnlstmError('ERR_WNLSTM_TYPE', 'inputs and targets must be Int32Arrays');
    if (!Number.isInteger(batchSize) || batchSize < 1) throw wnlstmError('ERR_WNLSTM_RANGE', `batchSize must be a positive integer, got ${String(batchSize)}`);
    if (inputs.length === 0 || inputs.length % batchSize !== 0) {
      throw wnlstmError('ERR_WNLSTM_SHAPE', `inputs has ${inputs.length} ids: not a positive multiple of batchSize (${batchSize})`);
    }
    if (targets.length !== inputs.length) throw wnlstmError('ERR_WNLSTM_SHAPE', `targets must have as many ids as inputs (${inputs.length})`);
    return { steps: inputs.length / batchSize, batchSize, ids: inputs, labels: targets, states };
  }

  /** Embedding rows of token ids: [ids.length, embeddingSize]. */
  embed(ids: Int32Array): FloatArray { return this.#runtime.native.embed(ids); }

  /** The softmax layer's logits for h [rows, hiddenSize]: [rows, vocabSize]. */
  logits(h: FloatArray, rows: number): FloatArray { return this.#runtime.native.head(h, rows); }

  /** Mean loss over a whole token sequence, in windows of `steps`, state carried. */
  evaluate(ids: Int32Array, { batchSize = 10, steps = 50, maxTokens = Infinity } = {}): number {
    const data = batchify(maxTokens < ids.length ? ids.subarray(0, maxTokens) : ids, batchSize);
    let state = this.zeroState(batchSize), total = 0, count = 0;
    for (let t0 = 0; t0 < data.length - 1; t0 += steps) {
      const w = window(data, batchSize, t0, steps);
      const r = this.step(w.inputs, w.targets, batchSize, state, false);
      state = r.state;
      total += r.loss * w.inputs.length;
      count += w.inputs.length;
    }
    return total / count;
  }

  /** Samples `length` tokens after `prefix` (ids) at `temperature`. */
  sample(prefix: Int32Array, length: number, { temperature = 1, rng = new Random(1) } = {}): Int32Array {
    if (!(temperature > 0)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'temperature must be positive');
    if (prefix.length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'sampling needs a prefix of at least one token');
    const V = this.config.vocabSize, cells = this.stack.cells;
    let states = this.zeroState(1);
    const out = new Int32Array(length);
    let next = 0;
    const feed = (id: number) => {
      let x = this.embed(Int32Array.of(id));
      states = cells.map((cell, l) => { const s = cell.step(x, states[l]); x = s.h; return s; });
      return this.logits(x, 1);
    };
    let logits = this.logits(new (this.config.dtype === 'float64' ? Float64Array : Float32Array)(this.config.hiddenSize), 1);
    for (const id of prefix) logits = feed(id);
    for (let i = 0; i < length; i++) {
      let max = -Infinity;
      for (let v = 0; v < V; v++) max = Math.max(max, logits[v] / temperature);
      let sum = 0;
      const p = new Float64Array(V);
      for (let v = 0; v < V; v++) sum += (p[v] = Math.exp(logits[v] / temperature - max));
      let u = rng.uniform() * sum;
      next = V - 1;
      for (let v = 0; v < V; v++) if ((u -= p[v]) <= 0) { next = v; break; }
      out[i] = next;
      logits = feed(next);
    }
    return out;
  }

  /** Salimans & Kingma's data-dependent init, for the input block of each weight-normalised cell:
   * v ~ N(0, 0.05), t = x·v/‖v‖ over one minibatch, g = 1/sqrt(var(t) + 1e-10), bias = -mean(t)·g.
   * The recurrent block keeps g = ‖v‖ (not advised there: its input, h, depends on the very weights
   * being set). Layer by layer, each from its actual input. */
  dataDependentInit(inputs: Int32Array, batchSize: number): void {
    if (!this.config.norm) throw wnlstmError('ERR_WNLSTM_CONFIG', 'data-dependent init needs weight normalisation');
    let x = this.embed(inputs);
    const rows = inputs.length, rng = new Random((this.config.seed ?? 1) + 29);
    for (const cell of this.stack.cells) {
      const I = cell.inputSize, G = 4 * cell.numUnits, w = cell.getWeights();
      for (let r = 0; r < I; r++) for (let j = 0; j < G; j++) w.kernel[r * G + j] = 0.05 * rng.normal();
      const norms = columnNorms(w.kernel, 0, I, G);
      const vn = new (x.constructor as Float32ArrayConstructor)(I * G);
      for (let r = 0; r < I; r++) for (let j = 0; j < G; j++) vn[r * G + j] = w.kernel[r * G + j] / norms[j];
      const t = new (x.constructor as Float32ArrayConstructor)(rows * G);
      addon.gemm(false, false, rows, G, I, x, vn, t, false);
      const g = new Float64Array(G), bias = new Float64Array(G);
      for (let j = 0; j < G; j++) {
        let mean = 0, sq = 0;
        for (let r = 0; r < rows; r++) mean += t[r * G + j];
        mean /= rows;
        for (let r = 0; r < rows; r++) sq += (t[r * G + j] - mean) ** 2;
        g[j] = 1 / Math.sqrt(sq / rows + 1e-10);
        bias[j] = -mean * g[j];
      }
      cell.setWeights({ kernel: w.kernel, norm_0: g, bias });
      x = cell.forward(x, { batchSize, training: false }).outputs;
    }
  }

  /** Frees the native memory now (otherwise the garbage collector does); later calls throw ERR_WNLSTM_DISPOSED. */
  dispose(): void { this.#runtime.dispose(); }
}
