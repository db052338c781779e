// The cells: TensorFlow 1.x WeightNormLSTMCell and LSTMCell (SPEC section 1), over the native backend.
import { addon, BackendInfo, FloatArray, NativeCell, NativeParam, NativeTensor } from '../core/native';
import { wnlstmError } from '../core/errors';
import { CallQueue } from '../core/serial';
import { Tensor } from '../core/tensor';
import { columnNorms, Initializer, initialValues, Random, Shape } from '../core/init';
import type { ParamBlock } from '../optim';

export type { FloatArray } from '../core/native';
export type Activation = 'tanh' | 'sigmoid' | 'relu' | 'softsign' | 'linear';
export type DType = 'float32' | 'float64';
export type BackendName = 'auto' | 'cpu' | 'cuda';

export interface LSTMCellOptions {
  /** Width of the input x (TF infers it at the first call; here it is given up front). */
  inputSize: number;
  usePeepholes?: boolean;
  cellClip?: number;
  /** TF semantics: initialises kernel, gains and peepholes; bias starts at 0. See README for the default. */
  initializer?: Initializer;
  numProj?: number;
  projClip?: number;
  /** Added inside the forget gate's sigmoid at every step. Default 1. */
  forgetBias?: number;
  activation?: Activation;
  /** Seed of the initialisation; random when omitted (see `cell.seed`). */
  seed?: number;
  /** 'auto' (default): the CPU in this version, since the CUDA kernels are built but not yet verified on a
   *  GPU; 'cuda' runs them when a device answers (else throws ERR_WNLSTM_BACKEND_UNAVAILABLE). */
  backend?: BackendName;
  /** With backend 'cuda': which device, an index into backendInfo().cuda.devices (default 0). */
  device?: number;
  /** 'float64' is slower; it exists for gradient checks and for users who need it. */
  dtype?: DType;
  /** 'fp32' (default, exact) or 'tf32': on CUDA with float32, the matrix products on TF32 tensor cores
   *  (compute capability 8.0 or later), each input rounded to 10 bits of mantissa, sums in fp32. The CPU
   *  computes in fp32 either way. */
  precision?: 'fp32' | 'tf32';
  /** Name of the cell's parameter block (optimizer state and checkpoints); default 'lstm_cell'. */
  name?: string;
}

export interface WeightNormLSTMCellOptions extends LSTMCellOptions {
  /** Weight normalisation on (default) or off (then identical to LSTMCell). */
  norm?: boolean;
}

/** c is [batch, numUnits]; h is [batch, outputSize], row-major. */
export interface LSTMState { c: FloatArray; h: FloatArray }

export interface ForwardOptions {
  batchSize: number;
  /** Zeros when omitted. */
  initialState?: LSTMState;
  /** Per row of the batch, in [0, steps]: as TF's dynamic_rnn, outputs are zero past it and the final
   * state is the one after the row's last valid step. */
  sequenceLength?: Int32Array | ArrayLike<number>;
  /** Keep activations for backward() (default true). false saves memory for inference. */
  training?: boolean;
}

export interface ForwardResult {
  /** [steps, batch, outputSize], time-major. */
  outputs: FloatArray;
  state: LSTMState;
  steps: number;
}

export interface BackwardResult {
  /** Gradient of every parameter, by TF name and layout. */
  grads: Record<string, FloatArray>;
  /** [steps, batch, inputSize]. */
  dInputs: FloatArray;
  dInitialState: LSTMState;
}

/** A state as tensors on the cell's device: c [batch, numUnits], h [batch, outputSize]. */
export interface TensorState { c: Tensor; h: Tensor }

export interface TensorForwardOptions {
  /** Zeros when omitted. */
  initialState?: TensorState;
  sequenceLength?: Int32Array | ArrayLike<number>;
  training?: boolean;
}

export interface TensorForwardResult {
  /** [steps, batch, outputSize], on the cell's device. */
  outputs: Tensor;
  state: TensorState;
  steps: number;
}

export interface TensorBackwardResult {
  /** Gradient of every parameter, by TF name and layout (host arrays: they are small). */
  grads: Record<string, FloatArray>;
  /** [steps, batch, inputSize], on the cell's device. */
  dInputs: Tensor;
  dInitialState: TensorState;
}

let backendInfoCache: BackendInfo | undefined;
/** What this machine and build offer: the CPU's vector ISA and threads, and CUDA's status with a reason. */
export function backendInfo(): BackendInfo {
  backendInfoCache ??= addon.info();
  return structuredClone(backendInfoCache);
}

/** The native cell behind a cell, for the model runtime (lib/lm/model.ts): not part of the public API. */
const nativeCells = new WeakMap<object, NativeCell>();
export function nativeCellOf(cell: LSTMCell | WeightNormLSTMCell): NativeCell {
  const native = nativeCells.get(cell);
  if (!native) throw wnlstmError('ERR_WNLSTM_TYPE', 'not a wnlstm cell');
  return native;
}

const OPTION_NAMES = ['inputSize', 'usePeepholes', 'cellClip', 'initializer', 'numProj', 'projClip',
  'forgetBias', 'activation', 'seed', 'backend', 'device', 'dtype', 'precision', 'name'];

abstract class LSTMCellBase {
  readonly numUnits: number;
  readonly inputSize: number;
  /** Width of h and of the outputs: numProj when set, else numUnits. */
  readonly outputSize: number;
  readonly norm: boolean;
  readonly usePeepholes: boolean;
  readonly cellClip: number | undefined;
  readonly numProj: number | undefined;
  readonly projClip: number | undefined;
  readonly forgetBias: number;
  readonly activation: Activation;
  readonly dtype: DType;
  readonly precision: 'fp32' | 'tf32';
  readonly seed: number;
  /** The backend that runs this cell. */
  readonly backend: 'cpu' | 'cuda';
  /** The device's index on that backend (0 on the CPU): tensors given to the cell must be there. */
  readonly device: number;
  /** Why this backend was chosen (e.g. why CUDA was not used). */
  readonly backendReason: string;
  readonly name: string;
  readonly #native: NativeCell;
  #disposed = false;
  #grad: FloatArray | null = null;
  #saved: [steps: number, batch: number] | null = null;  // of the last training forward, for the tensors' shapes
  readonly #queue = new CallQueue();
  readonly #layout: Map<string, NativeParam>;

  protected constructor(numUnits: number, options: WeightNormLSTMCellOptions, norm: boolean, names: string[]) {
    if (options === null || typeof options !== 'object') {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'options must be an object with at least inputSize');
    }
    for (const key of Object.keys(options)) {
      if (!names.includes(key)) throw wnlstmError('ERR_WNLSTM_CONFIG', `unknown option '${key}'`);
    }
    const o = options;
    for (const key of ['usePeepholes', 'norm'] as const) {
      if (o[key] !== undefined && typeof o[key] !== 'boolean') {
        throw wnlstmError('ERR_WNLSTM_TYPE', `${key} must be a boolean`);
      }
    }
    const dtype = o.dtype ?? 'float32';
    if (dtype !== 'float32' && dtype !== 'float64') {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `dtype must be 'float32' or 'float64', got ${String(dtype)}`);
    }
    if (o.precision === 'tf32' && dtype !== 'float32') {
      throw wnlstmError('ERR_WNLSTM_CONFIG', "precision 'tf32' is for float32 cells");  // on every backend alike
    }
    const requested = o.backend ?? 'auto';
    if (!['auto', 'cpu', 'cuda'].includes(requested)) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `backend must be 'auto', 'cpu' or 'cuda', got ${String(requested)}`);
    }
    if (o.device !== undefined && !(Number.isInteger(o.device) && o.device >= 0 && o.device < 1024)) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `device must be a device index (an integer from 0), got ${String(o.device)}`);
    }
    const cuda = backendInfo().cuda;
    if (requested === 'cuda' && !cuda.available) {
      throw wnlstmError('ERR_WNLSTM_BACKEND_UNAVAILABLE', `backend 'cuda' is not available: ${cuda.reason}`);
    }
    if (o.seed !== undefined && !(Number.isInteger(o.seed) && o.seed >= 0 && o.seed < 2 ** 32)) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', 'seed must be an integer in [0, 2^32)');
    }

    // The addon validates sizes, clips and the activation name, and throws ERR_WNLSTM_CONFIG.
    this.#native = new addon.NativeCell({
      inputSize: o.inputSize, numUnits, numProj: o.numProj, norm, usePeepholes: o.usePeepholes ?? false,
      cellClip: o.cellClip, projClip: o.projClip, forgetBias: o.forgetBias ?? 1, activation: o.activation ?? 'tanh',
      precision: o.precision ?? 'fp32',
    }, dtype, requested === 'cuda' ? 'cuda' : 'cpu', o.device ?? 0);
    this.numUnits = numUnits;
    this.inputSize = o.inputSize;
    this.numProj = o.numProj ?? undefined;
    this.outputSize = this.numProj ?? numUnits;
    this.norm = norm;
    this.usePeepholes = o.usePeepholes ?? false;
    this.cellClip = o.cellClip ?? undefined;
    this.projClip = o.projClip ?? undefined;
    this.forgetBias = o.forgetBias ?? 1;
    this.activation = o.activation ?? 'tanh';
    this.dtype = dtype;
    this.precision = o.precision ?? 'fp32';
    this.seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
    this.name = o.name ?? 'lstm_cell';
    this.backend = requested === 'cuda' ? 'cuda' : 'cpu';
    this.device = this.backend === 'cuda' ? o.device ?? 0 : 0;
    this.backendReason = requested === 'cuda' ? `backend 'cuda' (device ${o.device ?? 0}) was asked for: ${cuda.reason}`
      : requested === 'cpu' ? "backend 'cpu' was asked for"
      : cuda.available ? "CUDA not used: 'auto' keeps the CPU until the CUDA kernels are verified on a GPU (ask for backend 'cuda' to use them)"
      : `CUDA not used: ${cuda.reason}`;
    this.#layout = new Map(this.#native.layout().map((p) => [p.name, p]));
    nativeCells.set(this, this.#native);
    this.#initialise(o.initializer);
  }

  get disposed(): boolean { return this.#disposed; }

  /** Frees the native memory (otherwise the garbage collector does): now, or once the async calls already
   * issued have settled. Later calls throw ERR_WNLSTM_DISPOSED. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#queue.pending === 0) this.#native.dispose();
    else this.#queue.settled.then(() => this.#native.dispose());
  }

  [Symbol.dispose](): void { this.dispose(); }

  /** Parameter names in TF's order, with their TF shapes. */
  get weightShapes(): Record<string, Shape> {
    const out: Record<string, Shape> = {};
    for (const p of this.#layout.values()) out[p.name] = p.cols === 1 ? [p.rows] : [p.rows, p.cols];
    return out;
  }

  get numParams(): number {
    let n = 0;
    for (const p of this.#layout.values()) n += p.rows * p.cols;
    return n;
  }

  /** Copies of every parameter, by TF name, row-major in TF's layout. */
  getWeights(): Record<string, FloatArray> {
    return this.#split(this.#cell().getParams());
  }

  /** Sets any subset of the parameters by TF name. All names, lengths and values are checked before
   * anything is written, so a failed call leaves the cell unchanged. */
  setWeights(weights: Record<string, ArrayLike<number>>): void {
    const cell = this.#cell();
    if (weights === null || typeof weights !== 'object') {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'setWeights expects an object of arrays by TF name');
    }
    const flat = cell.getParams();
    for (const [name, values] of Object.entries(weights)) {
      const p = this.#layout.get(name);
      if (!p) {
        throw wnlstmError('ERR_WNLSTM_UNKNOWN_WEIGHT',
          `this cell has no weight '${name}' (it has: ${[...this.#layout.keys()].join(', ')})`);
      }
      if (!ArrayBuffer.isView(values) && !Array.isArray(values)) {
        throw wnlstmError('ERR_WNLSTM_TYPE', `weight '${name}' must be a typed array or an array of numbers`);
      }
      const size = p.rows * p.cols;
      if (values.length !== size) {
        throw wnlstmError('ERR_WNLSTM_SHAPE', `weight '${name}' needs ${size} values, got ${values.length}`);
      }
      for (let i = 0; i < size; i++) {
        const v = values[i];
        if (typeof v !== 'number' || !Number.isFinite(v)) {
          throw wnlstmError(typeof v === 'number' ? 'ERR_WNLSTM_NOT_FINITE' : 'ERR_WNLSTM_TYPE',
            `weight '${name}'[${i}] is ${String(v)}`);
        }
      }
      flat.set(values, p.offset);
    }
    cell.setParams(flat, 0);
  }

  /** Zero state for a batch. */
  zeroState(batchSize: number): LSTMState {
    const B = this.#batchSize(batchSize);
    const Array = this.dtype === 'float64' ? Float64Array : Float32Array;
    return { c: new Array(B * this.numUnits), h: new Array(B * this.outputSize) };
  }

  /** One step for a batch: x [batch, inputSize]; state zeros when omitted. Returns the new state; h is the
   * output. Inference only: it keeps nothing for backward() (and leaves a forward()'s saved state alone). */
  step(x: FloatArray, state?: LSTMState): LSTMState {
    const r = this.#cell().forward(...this.#stepArgs(x, state));
    return { c: r.c, h: r.h };
  }

  /** step() off the main thread. */
  stepAsync(x: FloatArray, state?: LSTMState): Promise<LSTMState> {
    return this.#enqueue(() => this.#stepArgs(x, state), async (args) => {
      const r = await this.#native.forwardAsync(...args);
      return { c: r.c, h: r.h };
    });
  }

  /** Runs the cell over time-major inputs [steps, batch, inputSize]: a typed array (with options.batchSize),
   * or a tensor of that shape on the cell's device, whose results are then tensors there too (on CUDA the
   * data never leaves the device). */
  forward(inputs: Tensor, options?: TensorForwardOptions): TensorForwardResult;
  forward(inputs: FloatArray, options: ForwardOptions): ForwardResult;
  forward(inputs: FloatArray | Tensor, options?: ForwardOptions | TensorForwardOptions): ForwardResult | TensorForwardResult {
    if (inputs instanceof Tensor) {
      const args = this.#tensorArgs(inputs, options as TensorForwardOptions | undefined);
      return this.#tensorResult(this.#cell().forwardTensors(...args), args);
    }
    const args = this.#forwardArgs(inputs, options as ForwardOptions);
    const r = this.#cell().forward(...args);
    if (args[6]) this.#saved = [args[1], args[2]];
    return { outputs: r.y, state: { c: r.c, h: r.h }, steps: args[1] };
  }

  /** forward() off the main thread: the work runs on libuv's thread pool, so the event loop stays free.
   * Typed-array inputs are taken as they are at the call (copied), so the caller may reuse its buffers at
   * once; tensors are read when the call runs, and the promise settles when the device has finished.
   * Async calls on one cell run in order; a sync call meanwhile throws ERR_WNLSTM_BUSY. */
  forwardAsync(inputs: Tensor, options?: TensorForwardOptions): Promise<TensorForwardResult>;
  forwardAsync(inputs: FloatArray, options: ForwardOptions): Promise<ForwardResult>;
  forwardAsync(inputs: FloatArray | Tensor, options?: ForwardOptions | TensorForwardOptions): Promise<ForwardResult | TensorForwardResult> {
    if (inputs instanceof Tensor) {
      return this.#enqueue(() => this.#tensorArgs(inputs, options as TensorForwardOptions | undefined),
        async (args) => this.#tensorResult(await this.#native.forwardTensorsAsync(...args), args));
    }
    return this.#enqueue(() => this.#forwardArgs(inputs, options as ForwardOptions), async (args) => {
      const r = await this.#native.forwardAsync(...args);
      if (args[6]) this.#saved = [args[1], args[2]];
      return { outputs: r.y, state: { c: r.c, h: r.h }, steps: args[1] };
    });
  }

  #tensorArgs(inputs: Tensor, options: TensorForwardOptions | undefined): Parameters<NativeCell['forwardTensors']> {
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'forward(tensor, options) takes an options object');
    }
    if (inputs.shape.length !== 3 || inputs.shape[2] !== this.inputSize) {
      throw wnlstmError('ERR_WNLSTM_SHAPE', `inputs must be a tensor [steps, batch, ${this.inputSize}], got [${inputs.shape.join(', ')}]`);
    }
    const [steps, batch] = inputs.shape;
    const state = options?.initialState;
    if (state !== undefined && (state === null || typeof state !== 'object')) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'initialState must be { c, h } (tensors)');
    }
    const seqLen = options?.sequenceLength === undefined || options.sequenceLength === null
      ? null : this.#sequenceLength(options.sequenceLength, batch, steps);
    return [inputs.native, steps, batch, this.#nativeOf(state?.c, 'initialState.c'), this.#nativeOf(state?.h, 'initialState.h'),
      seqLen, options?.training ?? true];
  }

  #nativeOf(t: Tensor | undefined | null, name: string): NativeTensor | null {
    if (t === undefined || t === null) return null;
    if (!(t instanceof Tensor)) throw wnlstmError('ERR_WNLSTM_TYPE', `${name} must be a Tensor`);
    return t.native;
  }

  #tensorResult(r: ReturnType<NativeCell['forwardTensors']>, args: Parameters<NativeCell['forwardTensors']>): TensorForwardResult {
    const [, steps, batch] = args;
    if (args[6]) this.#saved = [steps, batch];
    return {
      outputs: Tensor.wrap(r.y, [steps, batch, this.outputSize], this),
      state: { c: Tensor.wrap(r.c, [batch, this.numUnits], this), h: Tensor.wrap(r.h, [batch, this.outputSize], this) },
      steps,
    };
  }

  #stepArgs(x: FloatArray, state?: LSTMState): Parameters<NativeCell['forward']> {
    const batch = this.#batchOf(x, 'x', 1);
    return [x, 1, batch, state?.c ?? null, state?.h ?? null, null, false];
  }

  #forwardArgs(inputs: FloatArray, options: ForwardOptions): Parameters<NativeCell['forward']> {
    if (options === null || typeof options !== 'object') {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'forward(inputs, { batchSize }) needs an options object');
    }
    const batch = this.#batchSize(options.batchSize);
    const steps = this.#batchOf(inputs, 'inputs', batch) / batch;
    let seqLen: Int32Array | null = null;
    if (options.sequenceLength !== undefined && options.sequenceLength !== null) {
      seqLen = this.#sequenceLength(options.sequenceLength, batch, steps);
    }
    const state = options.initialState;
    if (state !== undefined && (state === null || typeof state !== 'object')) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'initialState must be { c, h }');
    }
    return [inputs, steps, batch, state?.c ?? null, state?.h ?? null, seqLen, options.training ?? true];
  }

  /** Checks and takes the arguments now, then runs the native call in turn (see CallQueue): one that
   * starts at once hands the caller's arrays to the addon, which copies them before returning. */
  #enqueue<A extends unknown[], R>(takeArgs: () => A, call: (args: A) => Promise<R>): Promise<R> {
    if (this.#disposed) return Promise.reject(wnlstmError('ERR_WNLSTM_DISPOSED', 'this cell has been disposed'));
    let args: A;
    try {
      args = takeArgs();
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#queue.run(args, call);
  }

  /** Gradients of the last training forward(), given the gradient of its outputs [steps, batch, outputSize]
   * and optionally of its final state (zeros when omitted): typed arrays, or tensors on the cell's device
   * (then dInputs and dInitialState are tensors there too). */
  backward(dOutputs: Tensor, dFinalState?: Partial<TensorState>): TensorBackwardResult;
  backward(dOutputs: FloatArray, dFinalState?: Partial<LSTMState>): BackwardResult;
  backward(dOutputs: FloatArray | Tensor, dFinalState?: Partial<LSTMState> | Partial<TensorState>): BackwardResult | TensorBackwardResult {
    if (dOutputs instanceof Tensor) {
      return this.#afterTensorBackward(this.#cell().backwardTensors(...this.#tensorBackwardArgs(dOutputs, dFinalState)));
    }
    return this.#afterBackward(this.#cell().backward(...this.#backwardArgs(dOutputs, dFinalState as Partial<LSTMState>)));
  }

  /** backward() off the main thread (see forwardAsync). */
  backwardAsync(dOutputs: Tensor, dFinalState?: Partial<TensorState>): Promise<TensorBackwardResult>;
  backwardAsync(dOutputs: FloatArray, dFinalState?: Partial<LSTMState>): Promise<BackwardResult>;
  backwardAsync(dOutputs: FloatArray | Tensor, dFinalState?: Partial<LSTMState> | Partial<TensorState>): Promise<BackwardResult | TensorBackwardResult> {
    if (dOutputs instanceof Tensor) {
      return this.#enqueue(() => this.#tensorBackwardArgs(dOutputs, dFinalState),
        async (args) => this.#afterTensorBackward(await this.#native.backwardTensorsAsync(...args)));
    }
    return this.#enqueue(() => this.#backwardArgs(dOutputs, dFinalState as Partial<LSTMState>),
      async (args) => this.#afterBackward(await this.#native.backwardAsync(...args)));
  }

  #tensorBackwardArgs(dOutputs: Tensor, dFinalState?: Partial<LSTMState> | Partial<TensorState>): Parameters<NativeCell['backwardTensors']> {
    if (dFinalState !== undefined && (dFinalState === null || typeof dFinalState !== 'object')) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'dFinalState must be { c?, h? } (tensors)');
    }
    return [dOutputs.native, this.#nativeOf(dFinalState?.c as Tensor | undefined, 'dFinalState.c'),
      this.#nativeOf(dFinalState?.h as Tensor | undefined, 'dFinalState.h')];
  }

  #afterTensorBackward(r: ReturnType<NativeCell['backwardTensors']>): TensorBackwardResult {
    const [steps, batch] = this.#saved ?? [0, 0];
    const { grads } = this.#afterBackward({ ...r, dx: r.grads, dc0: r.grads, dh0: r.grads });
    return {
      grads,
      dInputs: Tensor.wrap(r.dx, [steps, batch, this.inputSize], this),
      dInitialState: { c: Tensor.wrap(r.dc0, [batch, this.numUnits], this), h: Tensor.wrap(r.dh0, [batch, this.outputSize], this) },
    };
  }

  #backwardArgs(dOutputs: FloatArray, dFinalState?: Partial<LSTMState>): Parameters<NativeCell['backward']> {
    if (dFinalState !== undefined && (dFinalState === null || typeof dFinalState !== 'object')) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'dFinalState must be { c?, h? }');
    }
    return [dOutputs, dFinalState?.c ?? null, dFinalState?.h ?? null];
  }

  #afterBackward(r: ReturnType<NativeCell['backward']>): BackwardResult {
    // Accumulated for the optimizers until zeroGrad(), as PyTorch does.
    if (this.#grad === null) this.#grad = r.grads.slice();
    else for (let i = 0; i < r.grads.length; i++) this.#grad[i] += r.grads[i];
    return { grads: this.#split(r.grads), dInputs: r.dx, dInitialState: { c: r.dc0, h: r.dh0 } };
  }

  /** The cell's parameters as one block for the optimizers (lib/optim), in getWeights() order. */
  parameters(): ParamBlock[] {
    const self = this;
    const zeros = () => (this.dtype === 'float64' ? new Float64Array(this.numParams) : new Float32Array(this.numParams));
    return [{
      name: this.name,
      size: this.numParams,
      dtype: this.dtype,
      get grad() { return (self.#grad ??= zeros()); },
      zeroGrad: () => { this.#grad?.fill(0); },
      getValues: () => this.#cell().getParams(),
      setValues: (values) => {
        if (values.length !== this.numParams) throw wnlstmError('ERR_WNLSTM_SHAPE', `${this.name}: ${values.length} values for ${this.numParams}`);
        this.#cell().setParams(values, 0);
      },
      applyUpdate: (settings, s1, s2) => { this.#cell().update(this.#grad ?? zeros(), s1, s2, settings); },
    }];
  }

  /** The native cell for a sync call: not after dispose(), not while async calls are pending. */
  #cell(): NativeCell {
    if (this.#disposed) throw wnlstmError('ERR_WNLSTM_DISPOSED', 'this cell has been disposed');
    if (this.#queue.pending > 0) throw wnlstmError('ERR_WNLSTM_BUSY', 'async calls on this cell are in flight: await them first');
    return this.#native;
  }

  #split(flat: FloatArray): Record<string, FloatArray> {
    const out: Record<string, FloatArray> = {};
    for (const p of this.#layout.values()) out[p.name] = flat.slice(p.offset, p.offset + p.rows * p.cols);
    return out;
  }

  #batchSize(value: unknown): number {
    if (typeof value !== 'number') throw wnlstmError('ERR_WNLSTM_TYPE', 'batchSize must be a number');
    if (!Number.isInteger(value) || value < 1 || value > 2 ** 31) {
      throw wnlstmError('ERR_WNLSTM_RANGE', `batchSize must be an integer >= 1, got ${value}`);
    }
    return value;
  }

  /** Checks the array's type and that its length is a positive multiple of rows x inputSize; returns
   * the number of input rows. */
  #batchOf(x: unknown, name: string, rows: number): number {
    const Expected = this.dtype === 'float64' ? Float64Array : Float32Array;
    if (!(x instanceof Expected)) {
      throw wnlstmError('ERR_WNLSTM_TYPE', `${name} must be a ${Expected.name} (this cell's dtype is ${this.dtype})`);
    }
    const width = rows * this.inputSize;
    if (x.length === 0 || x.length % width !== 0) {
      throw wnlstmError('ERR_WNLSTM_SHAPE',
        `${name} has ${x.length} values: not a positive multiple of ${rows === 1 ? '' : 'batchSize x '}inputSize (${width})`);
    }
    return x.length / this.inputSize;
  }

  #sequenceLength(value: Int32Array | ArrayLike<number>, batch: number, steps: number): Int32Array {
    if (!ArrayBuffer.isView(value) && !Array.isArray(value)) {
      throw wnlstmError('ERR_WNLSTM_TYPE', 'sequenceLength must be an Int32Array or an array of integers');
    }
    if (value.length !== batch) {
      throw wnlstmError('ERR_WNLSTM_SHAPE', `sequenceLength needs batchSize (${batch}) values, got ${value.length}`);
    }
    const out = new Int32Array(batch);
    for (let b = 0; b < batch; b++) {
      const n = value[b];
      if (!Number.isInteger(n) || n < 0 || n > steps) {
        throw wnlstmError('ERR_WNLSTM_RANGE', `sequenceLength[${b}] = ${n} is not an integer in [0, ${steps}]`);
      }
      out[b] = n;
    }
    return out;
  }

  /** TF semantics with an initializer; otherwise glorot-uniform kernels and gains equal to the initial
   * column norms, so that the normalised weights start equal to the raw ones (as PyTorch's weight_norm). */
  #initialise(initializer: Initializer | undefined): void {
    const rng = new Random(this.seed);
    const init = initializer ?? 'glorotUniform';
    const values: Record<string, Float64Array> = {};
    for (const [name, shape] of Object.entries(this.weightShapes)) {
      if (name === 'bias') values[name] = new Float64Array(shape[0]);
      else if (initializer !== undefined || !name.includes('norm_')) values[name] = initialValues(init, shape, name, rng);
    }
    if (initializer === undefined && this.norm) {
      const H4 = 4 * this.numUnits;
      values.norm_0 = columnNorms(values.kernel, 0, this.inputSize, H4);
      values.norm_1 = columnNorms(values.kernel, this.inputSize, this.inputSize + this.outputSize, H4);
      if (this.numProj !== undefined) {
        values['projection/norm_0'] = columnNorms(values['projection/kernel'], 0, this.numUnits, this.numProj);
      }
    }
    this.setWeights(values);
  }
}

/** TF's tf.contrib.rnn.WeightNormLSTMCell: LSTMCell's options plus `norm` (default true). */
export class WeightNormLSTMCell extends LSTMCellBase {
  constructor(numUnits: number, options: WeightNormLSTMCellOptions) {
    super(numUnits, options, options?.norm ?? true, [...OPTION_NAMES, 'norm']);
  }
}

/** TF's tf.nn.rnn_cell.LSTMCell (state_is_tuple): identical to WeightNormLSTMCell with norm: false. */
export class LSTMCell extends LSTMCellBase {
  constructor(numUnits: number, options: LSTMCellOptions) {
    super(numUnits, options, false, OPTION_NAMES);
  }
}
