// Layers around the cells for sequence models: embedding, dense, dropout, and a stack of cells
// (TF's MultiRNNCell). Row-major arrays of the layer's dtype; gradients accumulate until zeroGrad().
import { addon, FloatArray } from '../core/native';
import { wnlstmError } from '../core/errors';
import { Random } from '../core/init';
import { ArrayParams, HasParameters, ParamBlock } from '../optim';
import { Exclusive, snapshot } from '../core/serial';
import { Tensor } from '../core/tensor';
import type { DType, LSTMCell, LSTMState, TensorState, WeightNormLSTMCell } from './cell';

type AnyCell = LSTMCell | WeightNormLSTMCell;
interface StackOptions { batchSize: number; initialStates?: LSTMState[]; training?: boolean }
interface TensorStackOptions { initialStates?: TensorState[]; training?: boolean }
const arrayOf = (dtype: DType) => (dtype === 'float64' ? Float64Array : Float32Array);

/** y = x W + b with W [inSize, outSize]; uniform ±initScale init (bias 0). The weights are JS arrays; the
 * input may be a typed array or a tensor (then the output and dx are tensors on its device, where the
 * products run: the weights go there for each call and their gradients come back). */
export class Dense implements HasParameters {
  readonly params: ArrayParams;
  #x: FloatArray | Tensor | null = null;
  #rows = 0;
  constructor(readonly inSize: number, readonly outSize: number,
    { name = 'dense', seed = 1, initScale = 1 / Math.sqrt(inSize), dtype = 'float32' as DType } = {}) {
    const values = new (arrayOf(dtype))(inSize * outSize + outSize);
    const rng = new Random(seed);
    for (let i = 0; i < inSize * outSize; i++) values[i] = (2 * rng.uniform() - 1) * initScale;
    this.params = new ArrayParams(name, values);
  }
  get weight(): FloatArray { return this.params.values.subarray(0, this.inSize * this.outSize); }
  get bias(): FloatArray { return this.params.values.subarray(this.inSize * this.outSize); }
  parameters(): ParamBlock[] { return [this.params]; }

  /** x [rows, inSize] -> [rows, outSize]; keeps x for backward() unless `keep` is false (inference). A
   * tensor x is kept as it is: dispose it only after backward(). */
  forward(x: Tensor, rows?: number, keep?: boolean): Tensor;
  forward(x: FloatArray, rows: number, keep?: boolean): FloatArray;
  forward(x: FloatArray | Tensor, rows?: number, keep = true): FloatArray | Tensor {
    if (x instanceof Tensor) {
      const n = rows ?? x.size / this.inSize;
      if (x.shape.at(-1) !== this.inSize || n * this.inSize !== x.size) {
        throw wnlstmError('ERR_WNLSTM_SHAPE', `x must be a tensor [..., ${this.inSize}] of ${rows ?? 'its'} rows, got [${x.shape.join(', ')}]`);
      }
      const y = Tensor.wrap(addon.tensorDense(x.native, this.weight, this.bias, n, this.inSize, this.outSize), [n, this.outSize], x);
      if (keep) [this.#x, this.#rows] = [x, n];
      return y;
    }
    if (rows === undefined) throw wnlstmError('ERR_WNLSTM_TYPE', 'rows is needed with a typed array');
    const y = new (arrayOf(this.params.dtype))(rows * this.outSize);
    for (let r = 0; r < rows; r++) y.set(this.bias, r * this.outSize);
    addon.gemm(false, false, rows, this.outSize, this.inSize, x, this.weight, y, true);
    if (keep) {
      this.#x = x;
      this.#rows = rows;
    }
    return y;
  }

  /** dy [rows, outSize] -> dx [rows, inSize]; adds dW and db to the gradient. dy is a tensor after a
   * forward on a tensor (and dx then too). */
  backward(dy: Tensor): Tensor;
  backward(dy: FloatArray): FloatArray;
  backward(dy: FloatArray | Tensor): FloatArray | Tensor {
    if (!this.#x) throw wnlstmError('ERR_WNLSTM_NO_FORWARD', 'Dense.backward needs a forward first');
    const rows = this.#rows, I = this.inSize, O = this.outSize;
    const g = this.params.grad;
    if (this.#x instanceof Tensor || dy instanceof Tensor) {
      if (!(this.#x instanceof Tensor) || !(dy instanceof Tensor)) {
        throw wnlstmError('ERR_WNLSTM_TYPE', 'after a forward on a tensor, dy must be a tensor (and a typed array after one on a typed array)');
      }
      if (dy.shape.at(-1) !== O) throw wnlstmError('ERR_WNLSTM_SHAPE', `dy must be a tensor [..., ${O}], got [${dy.shape.join(', ')}]`);
      const dx = addon.tensorDenseBackward(this.#x.native, this.weight, dy.native, rows, I, O, g.subarray(0, I * O), g.subarray(I * O));
      return Tensor.wrap(dx, [rows, I], dy);
    }
    addon.gemm(true, false, I, O, rows, this.#x, dy, g.subarray(0, I * O), true);
    const db = g.subarray(I * O);
    for (let r = 0; r < rows; r++) for (let j = 0; j < O; j++) db[j] += dy[r * O + j];
    const dx = new (arrayOf(this.params.dtype))(rows * I);
    addon.gemm(false, true, rows, I, O, dy, this.weight, dx, false);
    return dx;
  }
}

/** Rows of a [vocabSize, dim] table, uniform ±initScale. The table is a JS array; forward() can hand the
 * rows to a device as a tensor (for the layers after it), and backward() take their gradient from there. */
export class Embedding implements HasParameters {
  readonly params: ArrayParams;
  #ids: Int32Array | null = null;
  constructor(readonly vocabSize: number, readonly dim: number,
    { name = 'embedding', seed = 1, initScale = 0.1, dtype = 'float32' as DType } = {}) {
    const values = new (arrayOf(dtype))(vocabSize * dim);
    const rng = new Random(seed);
    for (let i = 0; i < values.length; i++) values[i] = (2 * rng.uniform() - 1) * initScale;
    this.params = new ArrayParams(name, values);
  }
  parameters(): ParamBlock[] { return [this.params]; }

  /** Rows of the table [ids.length, dim]: a typed array, or with `options.backend` a tensor there; keeps
   * the ids for backward() unless `keep` is false (inference). */
  forward(ids: Int32Array, options: { backend: 'cpu' | 'cuda'; device?: number; keep?: boolean }): Tensor;
  forward(ids: Int32Array, keep?: boolean): FloatArray;
  forward(ids: Int32Array, options: boolean | { backend: 'cpu' | 'cuda'; device?: number; keep?: boolean } = true): FloatArray | Tensor {
    if (typeof options !== 'boolean' && (options === null || typeof options !== 'object')) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'the second argument is keep (a boolean) or options { backend, device?, keep? }');
    }
    const keep = typeof options === 'boolean' ? options : options.keep ?? true;
    let out: FloatArray | Tensor;
    if (typeof options === 'object') {
      const { backend, device = 0 } = options;
      if (backend !== 'cpu' && backend !== 'cuda') throw wnlstmError('ERR_WNLSTM_CONFIG', `backend must be 'cpu' or 'cuda', got ${String(backend)}`);
      if (!Number.isInteger(device) || device < 0 || (backend === 'cpu' && device !== 0)) throw wnlstmError('ERR_WNLSTM_CONFIG', `device must be a device index (0 on the CPU), got ${String(device)}`);
      const native = addon.tensorEmbedding(this.params.values, this.dim, ids, backend === 'cpu' ? 'cpu' : `cuda:${device}`); // checks every id
      out = Tensor.wrap(native, [ids.length, this.dim], { dtype: this.params.dtype, backend, device });
    } else {
      out = addon.embeddingForward(this.params.values, this.dim, ids); // checks every id
    }
    if (keep) this.#ids = ids.slice();
    return out;
  }

  /** Adds dy [ids, dim] (a typed array or a tensor) into the rows of the table's gradient (repeated ids add up). */
  backward(dy: FloatArray | Tensor): void {
    if (!this.#ids) throw wnlstmError('ERR_WNLSTM_NO_FORWARD', 'Embedding.backward needs a forward first');
    if (dy instanceof Tensor) {
      if (dy.shape.at(-1) !== this.dim) throw wnlstmError('ERR_WNLSTM_SHAPE', `dy must be a tensor [..., ${this.dim}], got [${dy.shape.join(', ')}]`);
      addon.tensorEmbeddingBackward(dy.native, this.dim, this.#ids, this.params.grad);
    }
    else addon.embeddingBackward(dy, this.dim, this.#ids, this.params.grad);
  }
}

/** Inverted dropout: zeroes a fraction `rate` of x in place and scales the rest by 1/(1-rate).
 * Returns the mask (already scaled) for the backward pass, or null when rate is 0. */
export function dropout(x: FloatArray, rate: number, rng: Random): FloatArray | null {
  if (rate <= 0) return null;
  // The native op draws from the same generator (sfc32), one uniform() per element, and moves it on.
  const state = Uint32Array.from(rng.getState());
  const mask = addon.dropout(x, rate, state);
  rng.setState(state);
  return mask;
}

export function applyMask(dx: FloatArray, mask: FloatArray | null): FloatArray {
  if (mask) for (let i = 0; i < dx.length; i++) dx[i] *= mask[i];
  return dx;
}

/** Copies of the layers' states (they are read after an await: the caller may reuse its arrays). */
function copyStates(states: LSTMState[] | undefined): LSTMState[] | undefined {
  return Array.isArray(states) ? states.map((s) => (s && typeof s === 'object' ? { c: snapshot(s.c), h: snapshot(s.h) } : s)) : states;
}

/** A stack of cells, each feeding the next (TF's MultiRNNCell), with dropout between layers
 * (Zaremba et al.: on the non-recurrent connections only). */
export class StackedLSTM implements HasParameters {
  readonly #masks: (FloatArray | null)[] = [];
  readonly #tensorMasks: (Tensor | null)[] = [];
  constructor(readonly cells: AnyCell[], readonly options: { dropout?: number; seed?: number } = {}) {
    if (cells.length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'a stack needs at least one cell');
    for (let l = 1; l < cells.length; l++) {
      if (cells[l].inputSize !== cells[l - 1].outputSize) {
        throw wnlstmError('ERR_WNLSTM_CONFIG', `layer ${l} takes ${cells[l].inputSize} inputs, layer ${l - 1} gives ${cells[l - 1].outputSize}`);
      }
    }
    this.#rng = new Random(options.seed ?? 1);
  }
  #rng: Random;
  get outputSize(): number { return this.cells[this.cells.length - 1].outputSize; }
  parameters(): ParamBlock[] { return this.cells.flatMap((c) => c.parameters()); }
  zeroState(batchSize: number): LSTMState[] { return this.cells.map((c) => c.zeroState(batchSize)); }

  /** inputs [T, B, I] -> outputs [T, B, P_last]; states: one per layer (zeros when omitted). Dropout
   * applies between layers when `training`. With a tensor on the cells' device, every layer's output and
   * the dropout stay on the device (the layers between are freed as soon as the next one has run). */
  forward(inputs: Tensor, options?: TensorStackOptions): { outputs: Tensor; states: TensorState[] };
  forward(inputs: FloatArray, options: StackOptions): { outputs: FloatArray; states: LSTMState[] };
  forward(inputs: FloatArray | Tensor, options?: StackOptions | TensorStackOptions) {
    this.#exclusive.check();
    if (inputs instanceof Tensor) {
      const { initialStates, training = true } = (options ?? {}) as TensorStackOptions;
      this.#startTensors();
      let x = inputs;
      const states: TensorState[] = [];
      this.cells.forEach((cell, l) => {
        const r = cell.forward(this.#layerInputTensor(x, l, training), { initialState: initialStates?.[l], training });
        if (l > 0) x.dispose();
        x = r.outputs;
        states.push(r.state);
      });
      return { outputs: x, states };
    }
    const { batchSize, initialStates, training = true } = options as StackOptions;
    let x = inputs;
    const states: LSTMState[] = [];
    this.#masks.length = 0;
    this.cells.forEach((cell, l) => {
      const r = cell.forward(this.#layerInput(x, l, training), { batchSize, initialState: initialStates?.[l], training });
      x = r.outputs;
      states.push(r.state);
    });
    return { outputs: x, states };
  }

  /** forward() with each layer off the main thread (see WeightNormLSTMCell.forwardAsync). Typed-array
   * inputs and states are taken as they are at the call. */
  async forwardAsync(inputs: Tensor, options?: TensorStackOptions): Promise<{ outputs: Tensor; states: TensorState[] }>;
  async forwardAsync(inputs: FloatArray, options: StackOptions): Promise<{ outputs: FloatArray; states: LSTMState[] }>;
  async forwardAsync(inputs: FloatArray | Tensor, options?: StackOptions | TensorStackOptions) {
    return this.#exclusive.run(async () => {
      if (inputs instanceof Tensor) {
        const { initialStates, training = true } = (options ?? {}) as TensorStackOptions;
        this.#startTensors();
        let x = inputs;
        const states: TensorState[] = [];
        for (let l = 0; l < this.cells.length; l++) {
          const r = await this.cells[l].forwardAsync(this.#layerInputTensor(x, l, training), { initialState: initialStates?.[l], training });
          if (l > 0) x.dispose();
          x = r.outputs;
          states.push(r.state);
        }
        return { outputs: x, states };
      }
      const { batchSize, training = true } = options as StackOptions;
      const initialStates = copyStates((options as StackOptions).initialStates);
      let x = inputs;
      const states: LSTMState[] = [];
      this.#masks.length = 0;
      for (let l = 0; l < this.cells.length; l++) {
        const r = await this.cells[l].forwardAsync(this.#layerInput(x, l, training), { batchSize, initialState: initialStates?.[l], training });
        x = r.outputs;
        states.push(r.state);
      }
      return { outputs: x, states };
    });
  }

  /** Gradient of the outputs (and optionally of the final states) -> gradient of the inputs: typed arrays,
   * or tensors after a forward on tensors. */
  backward(dOutputs: Tensor, dFinalStates?: Partial<TensorState>[]): Tensor;
  backward(dOutputs: FloatArray, dFinalStates?: LSTMState[]): FloatArray;
  backward(dOutputs: FloatArray | Tensor, dFinalStates?: LSTMState[] | Partial<TensorState>[]): FloatArray | Tensor {
    this.#exclusive.check();
    if (dOutputs instanceof Tensor) {
      let d = dOutputs;
      for (let l = this.cells.length - 1; l >= 0; l--) {
        const r = this.cells[l].backward(d, (dFinalStates as Partial<TensorState>[] | undefined)?.[l]);
        d = this.#layerGradTensor(r, d !== dOutputs ? d : null, l);
      }
      return d;
    }
    let d = dOutputs;
    for (let l = this.cells.length - 1; l >= 0; l--) d = this.#layerGrad(this.cells[l].backward(d, (dFinalStates as LSTMState[] | undefined)?.[l]).dInputs, l);
    return d;
  }

  /** backward() with each layer off the main thread; typed-array gradients are taken as they are at the call. */
  async backwardAsync(dOutputs: Tensor, dFinalStates?: Partial<TensorState>[]): Promise<Tensor>;
  async backwardAsync(dOutputs: FloatArray, dFinalStates?: LSTMState[]): Promise<FloatArray>;
  async backwardAsync(dOutputs: FloatArray | Tensor, dFinalStates?: LSTMState[] | Partial<TensorState>[]): Promise<FloatArray | Tensor> {
    return this.#exclusive.run(async () => {
      if (dOutputs instanceof Tensor) {
        let d = dOutputs;
        for (let l = this.cells.length - 1; l >= 0; l--) {
          const r = await this.cells[l].backwardAsync(d, (dFinalStates as Partial<TensorState>[] | undefined)?.[l]);
          d = this.#layerGradTensor(r, d !== dOutputs ? d : null, l);
        }
        return d;
      }
      const states = copyStates(dFinalStates as LSTMState[] | undefined);
      let d = dOutputs;
      for (let l = this.cells.length - 1; l >= 0; l--) d = this.#layerGrad((await this.cells[l].backwardAsync(d, states?.[l])).dInputs, l);
      return d;
    });
  }

  /** A forward on tensors: the masks of the last one are freed. */
  #startTensors(): void {
    for (const m of this.#tensorMasks) m?.dispose();
    this.#tensorMasks.length = 0;
  }

  /** Layer l's input on the device: the previous layer's output (which only this stack holds), with dropout
   * in place between layers when training. */
  #layerInputTensor(x: Tensor, l: number, training: boolean): Tensor {
    if (l === 0) return x;
    const rate = this.options.dropout ?? 0;
    if (!training || rate <= 0) {
      this.#tensorMasks.push(null);
      return x;
    }
    const state = Uint32Array.from(this.#rng.getState());
    this.#tensorMasks.push(Tensor.wrap(addon.tensorDropout(x.native, rate, state), x.shape, x));
    this.#rng.setState(state);
    return x;
  }

  /** The gradient for the layer below: dInputs, masked; frees what is no longer needed (the gradient that
   * went in, unless it is the caller's, and the initial state's). */
  #layerGradTensor(r: { dInputs: Tensor; dInitialState: TensorState }, used: Tensor | null, l: number): Tensor {
    used?.dispose();
    r.dInitialState.c.dispose();
    r.dInitialState.h.dispose();
    const mask = l > 0 ? this.#tensorMasks[l - 1] : null;
    if (mask) addon.tensorMultiply(r.dInputs.native, mask.native);
    return r.dInputs;
  }

  // A forward keeps its dropout masks (and each cell its activations) for the backward that follows: a
  // second call while one is in flight would replace them.
  readonly #exclusive = new Exclusive('stack');

  /** Layer l's input: the previous layer's output, with dropout between layers when training. */
  #layerInput(x: FloatArray, l: number, training: boolean): FloatArray {
    if (l === 0) return x;
    const y = x.slice();
    this.#masks.push(training ? dropout(y, this.options.dropout ?? 0, this.#rng) : null);
    return y;
  }

  #layerGrad(d: FloatArray, l: number): FloatArray { return l > 0 ? applyMask(d, this.#masks[l - 1]) : d; }

  /** Random state for dropout (checkpoints). */
  get rng(): Random { return this.#rng; }
}
