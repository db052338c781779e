// Optimizers over parameter blocks, PyTorch's formulas, one fused native update per block and step
// (native/include/wnlstm/training.h), with global-norm gradient clipping folded into that update.
import { addon, FloatArray } from './native';
import { wnlstmError } from './errors';

/** A flat block of parameters with its accumulated gradient: a cell, or a layer's weights. */
export interface ParamBlock {
  readonly name: string;
  readonly size: number;
  readonly dtype: 'float32' | 'float64';
  /** Accumulated by backward(), zeroed by zeroGrad(). */
  readonly grad: FloatArray;
  zeroGrad(): void;
  getValues(): FloatArray;
  setValues(values: FloatArray): void;
  /** One fused optimizer step in place (hyper: see Optimizer). */
  applyUpdate(hyper: Float64Array, s1: FloatArray | null, s2: FloatArray | null): void;
}

/** Something that owns parameter blocks (a cell, a layer, a model). */
export interface HasParameters { parameters(): ParamBlock[] }

/** A block over JS-owned typed arrays (embeddings, dense layers). */
export class ArrayParams implements ParamBlock {
  readonly grad: FloatArray;
  constructor(readonly name: string, readonly values: FloatArray) {
    this.grad = new (values.constructor as Float32ArrayConstructor)(values.length);
  }
  get size(): number { return this.values.length; }
  get dtype(): 'float32' | 'float64' { return this.values instanceof Float64Array ? 'float64' : 'float32'; }
  zeroGrad(): void { this.grad.fill(0); }
  getValues(): FloatArray { return this.values.slice(); }
  setValues(values: FloatArray): void {
    if (values.length !== this.values.length) throw wnlstmError('ERR_WNLSTM_SHAPE', `${this.name}: ${values.length} values for ${this.values.length}`);
    this.values.set(values);
  }
  applyUpdate(hyper: Float64Array, s1: FloatArray | null, s2: FloatArray | null): void {
    addon.optimizerUpdate(this.values, this.grad, s1, s2, hyper);
  }
}

const KIND = { sgd: 0, adam: 1, adamw: 2, rmsprop: 3, adagrad: 4 } as const;
type Kind = keyof typeof KIND;

export interface OptimizerOptions {
  learningRate?: number;
  weightDecay?: number;
  /** Global-norm clipping: gradients are scaled by min(1, clipNorm / ‖all gradients‖). */
  clipNorm?: number;
}

/** Global L2 norm of the gradients of all blocks. */
export function globalNorm(blocks: ParamBlock[]): number {
  let sum = 0;
  for (const b of blocks) sum += addon.sumSquares(b.grad);
  return Math.sqrt(sum);
}

export interface OptimizerState {
  kind: Kind;
  step: number;
  learningRate: number;
  /** Per block, by name: its state buffers (s1, s2), null where unused. */
  buffers: Record<string, [FloatArray | null, FloatArray | null]>;
}

export abstract class Optimizer {
  learningRate: number;
  /** Number of steps taken. */
  stepCount = 0;
  readonly blocks: ParamBlock[];
  protected readonly weightDecay: number;
  protected readonly clipNorm: number | undefined;
  readonly #state = new Map<ParamBlock, [FloatArray | null, FloatArray | null]>();

  protected constructor(readonly kind: Kind, params: ParamBlock[] | HasParameters, options: OptimizerOptions, defaultLr: number) {
    this.blocks = Array.isArray(params) ? params : params.parameters();
    if (this.blocks.length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'the optimizer got no parameters');
    if (new Set(this.blocks.map((b) => b.name)).size !== this.blocks.length) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', 'parameter blocks need distinct names (for the optimizer state)');
    }
    this.learningRate = positive(options.learningRate ?? defaultLr, 'learningRate', true);
    this.weightDecay = positive(options.weightDecay ?? 0, 'weightDecay', false);
    this.clipNorm = options.clipNorm === undefined ? undefined : positive(options.clipNorm, 'clipNorm', true);
  }

  /** The hyper-parameters of this kind: [beta1, beta2, eps, momentum, nesterov]. */
  protected abstract hyper(): [number, number, number, number, number];
  /** Which state buffers this kind keeps. */
  protected abstract buffers(): [boolean, boolean];

  /** Applies the accumulated gradients; returns their global norm (before clipping). */
  step(): number {
    const norm = globalNorm(this.blocks);
    if (!Number.isFinite(norm)) {
      throw wnlstmError('ERR_WNLSTM_NOT_FINITE', `the gradients are not finite (norm ${norm}): training diverged`);
    }
    const scale = this.clipNorm !== undefined && norm > this.clipNorm ? this.clipNorm / norm : 1;
    this.stepCount++;
    const [b1, b2, eps, momentum, nesterov] = this.hyper();
    const hyper = Float64Array.from([KIND[this.kind], this.learningRate, b1, b2, eps, this.weightDecay, momentum,
      this.stepCount, nesterov, scale]);
    const [needs1, needs2] = this.buffers();
    for (const block of this.blocks) {
      let state = this.#state.get(block);
      if (!state) {
        const Array = block.dtype === 'float64' ? Float64Array : Float32Array;
        state = [needs1 ? new Array(block.size) : null, needs2 ? new Array(block.size) : null];
        this.#state.set(block, state);
      }
      block.applyUpdate(hyper, state[0], state[1]);
    }
    return norm;
  }

  zeroGrad(): void { for (const b of this.blocks) b.zeroGrad(); }

  /** Copies of the optimizer's state, for checkpoints. */
  getState(): OptimizerState {
    const buffers: OptimizerState['buffers'] = {};
    for (const b of this.blocks) {
      const s = this.#state.get(b);
      buffers[b.name] = [s?.[0]?.slice() ?? null, s?.[1]?.slice() ?? null];
    }
    return { kind: this.kind, step: this.stepCount, learningRate: this.learningRate, buffers };
  }

  setState(state: OptimizerState): void {
    if (state.kind !== this.kind) throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer state of ${state.kind}, not ${this.kind}`);
    for (const b of this.blocks) {
      const s = state.buffers[b.name];
      if (!s) throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer state has no block '${b.name}'`);
      for (const buf of s) {
        if (buf && buf.length !== b.size) throw wnlstmError('ERR_WNLSTM_SHAPE', `optimizer state of '${b.name}' has the wrong size`);
      }
      // After a step, the moments this kind keeps exist: without them the next step would start over.
      const needs = this.buffers();
      if (state.step > 0 && needs.some((need, k) => need && !s[k])) {
        throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer state of '${b.name}' lacks a buffer that ${this.kind} keeps`);
      }
    }
    for (const b of this.blocks) {
      const [s1, s2] = state.buffers[b.name];
      this.#state.set(b, [s1?.slice() ?? null, s2?.slice() ?? null]);
    }
    this.stepCount = state.step;
    this.learningRate = state.learningRate;
  }
}

function positive(v: unknown, name: string, strict: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (strict && v === 0)) {
    throw wnlstmError('ERR_WNLSTM_CONFIG', `${name} must be a ${strict ? 'positive' : 'non-negative'} finite number`);
  }
  return v;
}

export class SGD extends Optimizer {
  readonly momentum: number; readonly nesterov: boolean;
  constructor(params: ParamBlock[] | HasParameters, options: OptimizerOptions & { momentum?: number; nesterov?: boolean } = {}) {
    super('sgd', params, options, 0.01);
    this.momentum = positive(options.momentum ?? 0, 'momentum', false);
    this.nesterov = options.nesterov ?? false;
    if (this.nesterov && this.momentum === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'nesterov needs a momentum');
  }
  protected hyper(): [number, number, number, number, number] { return [0, 0, 0, this.momentum, this.nesterov ? 1 : 0]; }
  protected buffers(): [boolean, boolean] { return [this.momentum !== 0, false]; }
}

export interface AdamOptions extends OptimizerOptions { beta1?: number; beta2?: number; epsilon?: number }

export class Adam extends Optimizer {
  readonly beta1: number; readonly beta2: number; readonly epsilon: number;
  constructor(params: ParamBlock[] | HasParameters, options: AdamOptions = {}, kind: 'adam' | 'adamw' = 'adam') {
    super(kind, params, kind === 'adamw' ? { weightDecay: 0.01, ...options } : options, 1e-3);
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.epsilon = options.epsilon ?? 1e-8;
    for (const [k, v] of [['beta1', this.beta1], ['beta2', this.beta2]] as const) {
      if (!(v >= 0 && v < 1)) throw wnlstmError('ERR_WNLSTM_CONFIG', `${k} must be in [0, 1)`);
    }
  }
  protected hyper(): [number, number, number, number, number] { return [this.beta1, this.beta2, this.epsilon, 0, 0]; }
  protected buffers(): [boolean, boolean] { return [true, true]; }
}

/** Adam with decoupled weight decay (default 0.01). */
export class AdamW extends Adam {
  constructor(params: ParamBlock[] | HasParameters, options: AdamOptions = {}) { super(params, options, 'adamw'); }
}

export class RMSProp extends Optimizer {
  readonly alpha: number; readonly epsilon: number; readonly momentum: number;
  constructor(params: ParamBlock[] | HasParameters, options: OptimizerOptions & { alpha?: number; epsilon?: number; momentum?: number } = {}) {
    super('rmsprop', params, options, 0.01);
    this.alpha = options.alpha ?? 0.99;
    this.epsilon = options.epsilon ?? 1e-8;
    this.momentum = positive(options.momentum ?? 0, 'momentum', false);
    if (!(this.alpha >= 0 && this.alpha < 1)) throw wnlstmError('ERR_WNLSTM_CONFIG', 'alpha must be in [0, 1)');
  }
  protected hyper(): [number, number, number, number, number] { return [this.alpha, 0, this.epsilon, this.momentum, 0]; }
  protected buffers(): [boolean, boolean] { return [true, this.momentum !== 0]; }
}

export class Adagrad extends Optimizer {
  readonly epsilon: number;
  constructor(params: ParamBlock[] | HasParameters, options: OptimizerOptions & { epsilon?: number } = {}) {
    super('adagrad', params, options, 0.01);
    this.epsilon = options.epsilon ?? 1e-10;
  }
  protected hyper(): [number, number, number, number, number] { return [0, 0, this.epsilon, 0, 0]; }
  protected buffers(): [boolean, boolean] { return [true, false]; }
}

/** Zaremba et al.'s PTB schedule: `initial` for the first `after` epochs, then times `factor` each epoch. */
export function stepDecay({ initial, factor, after }: { initial: number; factor: number; after: number }) {
  return (epoch: number) => initial * factor ** Math.max(epoch + 1 - after, 0);
}

/** initial * rate^(step / steps). */
export function exponentialDecay({ initial, rate, steps }: { initial: number; rate: number; steps: number }) {
  return (_epoch: number, step: number) => initial * rate ** (step / steps);
}
