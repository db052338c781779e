// The native model runtime seen from JavaScript: one backend-owned arena of a model's parameters,
// gradients and optimizer state (native/include/wnlstm/model.h), the cells that read their weights from
// it, and its blocks as ParamBlocks for the optimizers. LanguageModel and SequenceModel are built on it.
import { addon, FloatArray, NativeBatch, NativeModel, NativeModelConfig, RngState } from '../core/native';
import { wnlstmError } from '../core/errors';
import { columnNorms, Initializer, Random } from '../core/init';
import { ParamArena, ParamBlock } from '../optim';
import { BackendName, nativeCellOf, WeightNormLSTMCell } from './cell';

export interface RuntimeConfig extends Omit<NativeModelConfig, 'dropout'> {
  dropout: number;
  /** Two cells per layer, forward and over the reversed sequence (see NativeModelConfig). */
  bidirectional?: boolean;
  /** Weight normalisation in every cell (each gain starts at its column's norm: the same function as
   * without it) or none. */
  norm: boolean;
  seed: number;
  dtype: 'float32' | 'float64';
  backend?: BackendName;
  device?: number;
  /** The cells' products on CUDA: 'fp32' (default) or 'tf32' (see the cell option). */
  precision?: 'fp32' | 'tf32';
  /** The cells' kernels. */
  cellInitializer: Initializer;
  /** Embedding rows and the head's kernel: uniform in ±these. */
  embeddingScale: number;
  headScale: number;
}

export class ModelRuntime {
  /** The cells, per layer and direction (forward first): their weights by TF name live in the arena. */
  readonly cells: WeightNormLSTMCell[];
  readonly blocks: ParamBlock[];
  readonly #native: NativeModel;
  #disposed = false;

  constructor(readonly config: RuntimeConfig) {
    const { vocabSize, inputSize, hiddenSize, layers, outputSize, norm, seed, dtype } = config;
    for (const [k, v] of Object.entries({ inputSize, hiddenSize, layers, outputSize })) {
      if (!Number.isInteger(v) || v < 1) throw wnlstmError('ERR_WNLSTM_CONFIG', `${k} must be a positive integer`);
    }
    const d = config.dropout;
    if (typeof d !== 'number' || !(d >= 0 && d < 1)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'dropout must be a number in [0, 1)');
    const uniform = (n: number, scale: number, rngSeed: number) => {
      const values = new (dtype === 'float64' ? Float64Array : Float32Array)(n), rng = new Random(rngSeed);
      for (let i = 0; i < n; i++) values[i] = (2 * rng.uniform() - 1) * scale;
      return values;
    };
    const D = config.bidirectional ? 2 : 1;
    const cells = Array.from({ length: layers * D }, (_, k) => {
      const l = Math.floor(k / D), d = k % D;
      const cell = new WeightNormLSTMCell(hiddenSize, {
        inputSize: l === 0 ? inputSize : hiddenSize * D, norm, seed: (seed + 101 * (l + 1) + 7919 * d) >>> 0, dtype,
        backend: config.backend, device: config.device, name: `lstm_${l}${d ? '_backward' : ''}`, initializer: config.cellInitializer,
        precision: config.precision,
      });
      cell.setWeights({ bias: new Float64Array(4 * hiddenSize) });
      if (norm) { // gains = column norms: W = V at the start, the same function as the plain arm
        const w = cell.getWeights(), G = 4 * hiddenSize, I = cell.inputSize;
        cell.setWeights({ norm_0: columnNorms(w.kernel, 0, I, G), norm_1: columnNorms(w.kernel, I, I + hiddenSize, G) });
      }
      return cell;
    });
    this.cells = cells;
    const embedding = vocabSize > 0 ? uniform(vocabSize * inputSize, config.embeddingScale, seed) : null;
    const dense = uniform(hiddenSize * D * outputSize + outputSize, config.headScale, seed + 13);
    dense.fill(0, hiddenSize * D * outputSize);
    const { perStep, loss, embeddingProjection } = config;
    try {
      this.#native = new addon.NativeModel({ vocabSize, inputSize, hiddenSize, layers, outputSize, perStep, loss, dropout: config.dropout,
        bidirectional: D === 2, embeddingProjection },
        dtype, cells.map(nativeCellOf), { model: new Random(seed + 17).getState(), stack: new Random(seed + 7).getState() });
    } catch (err) { // a config the native model refuses: the cells made for it go too
      for (const c of cells) c.dispose();
      throw err;
    }
    if (embedding) this.#native.setValues('embedding', embedding);
    this.#native.setValues('dense', dense);
    this.blocks = this.#makeBlocks(dtype);
  }

  /** The number of parameters of a runtime of this config (embedding, cells, head). */
  static parameterCount({ vocabSize, inputSize, hiddenSize: H, layers, outputSize: O, norm, bidirectional }: Pick<RuntimeConfig,
    'vocabSize' | 'inputSize' | 'hiddenSize' | 'layers' | 'outputSize' | 'norm' | 'bidirectional'>): number {
    const D = bidirectional ? 2 : 1;
    let n = vocabSize * inputSize + H * D * O + O;
    for (let l = 0; l < layers; l++) n += D * (((l === 0 ? inputSize : H * D) + H) * 4 * H + 4 * H + (norm ? 8 * H : 0));
    return n;
  }

  /** The native model (throws ERR_WNLSTM_DISPOSED after dispose()). */
  get native(): NativeModel {
    if (this.#disposed) throw wnlstmError('ERR_WNLSTM_DISPOSED', 'this model has been disposed');
    return this.#native;
  }

  get disposed(): boolean { return this.#disposed; }

  #makeBlocks(dtype: 'float32' | 'float64'): ParamBlock[] {
    const model = () => this.native;
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

  /** The random state of the dropout masks: input and head (`model`), between layers (`stack`). */
  get rngState(): RngState { return this.native.getRng(); }
  set rngState(state: RngState) { this.native.setRng(state); }

  step(batch: NativeBatch, train: boolean) { return this.native.step(batch, train); }
  stepAsync(batch: NativeBatch, train: boolean) { return this.native.stepAsync(batch, train); }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#native.dispose();
    for (const c of this.cells) c.dispose();
  }
}
