// An RNN language model (Zaremba et al. 2014 / char-rnn): embedding -> dropout -> stacked LSTM cells ->
// dropout -> dense -> softmax, trained by truncated BPTT with the state carried between windows.
import { addon, FloatArray, NativeModel, RngState } from '../core/native';
import { WeightNormLSTMCell, LSTMState, BackendName, nativeCellOf } from '../nn/cell';
import { wnlstmError } from '../core/errors';
import { columnNorms, Random } from '../core/init';
import { Dense, Embedding, StackedLSTM } from '../nn/layers';
import { HasParameters, ParamArena, ParamBlock } from '../optim';

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
  /** The recurrent layers (for streaming sessions and for reading or setting a cell's weights by TF name). */
  readonly stack: StackedLSTM;
  readonly #native: NativeModel;
  readonly #blocks: ParamBlock[];
  #disposed = false;

  constructor(readonly config: LMConfig) {
    const { vocabSize, embeddingSize, hiddenSize, layers, norm, seed = 1, initScale = 0.08, dtype = 'float32' } = config;
    for (const [k, v] of Object.entries({ vocabSize, embeddingSize, hiddenSize, layers })) {
      if (!Number.isInteger(v) || v < 1) throw wnlstmError('ERR_WNLSTM_CONFIG', `${k} must be a positive integer`);
    }
    const d = config.dropout ?? 0;
    if (!(d >= 0 && d < 1)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'dropout must be in [0, 1)');
    const embedding = new Embedding(vocabSize, embeddingSize, { seed, initScale, dtype }).params.values;
    const cells = Array.from({ length: layers }, (_, l) => {
      const cell = new WeightNormLSTMCell(hiddenSize, {
        inputSize: l === 0 ? embeddingSize : hiddenSize, norm, seed: (seed + 101 * (l + 1)) >>> 0, dtype,
        backend: config.backend, device: config.device, name: `lstm_${l}`, initializer: { kind: 'uniform', min: -initScale, max: initScale },
      });
      cell.setWeights({ bias: new Float64Array(4 * hiddenSize) });
      if (norm) { // gains = column norms: W = V at the start, the same function as the plain arm
        const w = cell.getWeights(), G = 4 * hiddenSize, I = cell.inputSize;
        cell.setWeights({ norm_0: columnNorms(w.kernel, 0, I, G), norm_1: columnNorms(w.kernel, I, I + hiddenSize, G) });
      }
      return cell;
    });
    this.stack = new StackedLSTM(cells); // the cells as a group: the model's step draws its own dropout masks
    const dense = new Dense(hiddenSize, vocabSize, { seed: seed + 13, initScale, dtype }).params.values;
    this.#native = new addon.NativeModel({ vocabSize, embeddingSize, hiddenSize, layers, dropout: d }, dtype,
      cells.map(nativeCellOf), { model: new Random(seed + 17).getState(), stack: new Random(seed + 7).getState() });
    this.#native.setValues('embedding', embedding);
    this.#native.setValues('dense', dense);
    this.#blocks = this.#makeBlocks(dtype);
  }

  /** The number of parameters a model of this config has (embedding, cells, softmax layer). */
  static parameterCount({ vocabSize: V, embeddingSize: E, hiddenSize: H, layers, norm }: LMConfig): number {
    let n = V * E + H * V + V;
    for (let l = 0; l < layers; l++) n += ((l === 0 ? E : H) + H) * 4 * H + 4 * H + (norm ? 8 * H : 0);
    return n;
  }

  /** The blocks of the arena: embedding [V,E], lstm_<l> (the cell's weights in getWeights() order), dense
   * (kernel [H,V], then bias [V]). Their values and gradients are read and written as copies; an optimizer
   * updates all of them in one call. */
  parameters(): ParamBlock[] { return this.#blocks; }

  #makeBlocks(dtype: 'float32' | 'float64'): ParamBlock[] {
    const model = () => this.#model();
    const blocks = this.#native.blocks();
    const arena: ParamArena = {
      blockNames: blocks.map((b) => b.name),
      gradSumSquares: () => model().gradSumSquares(),
      update: (settings) => model().update(settings),
      getMoments: (name) => model().getMoments(name),
      setMoments: (name, s1, s2) => model().setMoments(name, s1, s2),
      clearMoments: () => model().clearMoments(),
    };
    return blocks.map(({ name, size }) => ({
      name, size, dtype, arena,
      get grad() { return model().getGrad(name); },
      zeroGrad: () => model().zeroGrad(name),
      getValues: () => model().getValues(name),
      setValues: (values: FloatArray) => model().setValues(name, values),
    }));
  }

  /** The random state of the dropout masks (checkpoints): embedding and head (`model`), between layers (`stack`). */
  get rngState(): RngState { return this.#model().getRng(); }
  set rngState(state: RngState) { this.#model().setRng(state); }

  zeroState(batchSize: number): LSTMState[] { return this.stack.zeroState(batchSize); }

  /** Mean loss (nats per token) of one window (inputs and targets [T, batchSize], time-major) from `state`
   * (one per layer); with `train`, dropout on and the gradients accumulated. Returns the final state. */
  step(inputs: Int32Array, targets: Int32Array, batchSize: number, state: LSTMState[] | null, train: boolean) {
    const r = this.#model().step(inputs, targets, batchSize, state, train);
    return { loss: r.loss, state: r.states as LSTMState[] };
  }

  /** step() off the main thread: the inputs, targets and state are taken as they are now. The model and
   * its cells refuse other calls (ERR_WNLSTM_BUSY) until it settles. */
  async stepAsync(inputs: Int32Array, targets: Int32Array, batchSize: number, state: LSTMState[] | null, train: boolean) {
    const r = await this.#model().stepAsync(inputs, targets, batchSize, state, train);
    return { loss: r.loss, state: r.states as LSTMState[] };
  }

  /** Embedding rows of token ids: [ids.length, embeddingSize]. */
  embed(ids: Int32Array): FloatArray { return this.#model().embed(ids); }

  /** The softmax layer's logits for h [rows, hiddenSize]: [rows, vocabSize]. */
  logits(h: FloatArray, rows: number): FloatArray { return this.#model().logits(h, rows); }

  #model(): NativeModel {
    if (this.#disposed) throw wnlstmError('ERR_WNLSTM_DISPOSED', 'this model has been disposed');
    return this.#native;
  }

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
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#native.dispose();
    for (const c of this.stack.cells) c.dispose();
  }
}
