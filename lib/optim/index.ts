// Optimizers over parameter blocks, PyTorch's formulas, one fused native update per step for all the
// blocks of a model's arena (and one per block elsewhere), with global-norm gradient clipping folded into
// that update (native/include/wnlstm/ops.h).
import { addon, FloatArray, UpdateSettings } from '../core/native';
import { wnlstmError } from '../core/errors';

export type { UpdateSettings } from '../core/native';

/** A flat block of parameters with its accumulated gradient: a cell, a layer's weights, or a block of a
 * model's arena. */
export interface ParamBlock {
  readonly name: string;
  readonly size: number;
  readonly dtype: 'float32' | 'float64';
  /** Accumulated by backward(), zeroed by zeroGrad(). A copy for a block of an arena. */
  readonly grad: FloatArray;
  zeroGrad(): void;
  getValues(): FloatArray;
  setValues(values: FloatArray): void;
  /** One fused optimizer step on this block alone, with its state buffers (blocks outside an arena). */
  applyUpdate?(settings: UpdateSettings, s1: FloatArray | null, s2: FloatArray | null): void;
  /** The arena that holds this block: its blocks are updated together, in one call. */
  readonly arena?: ParamArena;
}

/** Parameters, gradients and optimizer state of a model in one backend buffer each (lib/lm/model.ts). */
export interface ParamArena {
  readonly blockNames: readonly string[];
  /** Sum of the squared gradients of all its blocks. */
  gradSumSquares(): number;
  update(settings: UpdateSettings): void;
  /** Copies of a block's optimizer state (null: none yet). */
  getMoments(name: string): [FloatArray | null, FloatArray | null];
  setMoments(name: string, s1: FloatArray | null, s2: FloatArray | null): void;
  /** Drops the optimizer state: the next update starts from zeros. */
  clearMoments(): void;
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
  applyUpdate(settings: UpdateSettings, s1: FloatArray | null, s2: FloatArray | null): void {
    addon.optimizerUpdate(this.values, this.grad, s1, s2, settings);
  }
}

type Kind = UpdateSettings['kind'];
type Moments = [FloatArray | null, FloatArray | null];
/** What an optimizer kind adds to the settings of a step. */
type KindSettings = Pick<UpdateSettings, 'beta1' | 'beta2' | 'epsilon' | 'momentum' | 'nesterov'>;

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
  buffers: Record<string, Moments>;
}

/** What one fused update covers: an arena (all its blocks), or one block with JS-held state. */
interface UpdateGroup {
  gradSumSquares(): number;
  update(settings: UpdateSettings, needs: [boolean, boolean]): void;
  getMoments(name: string): Moments;
  setMoments(name: string, s1: FloatArray | null, s2: FloatArray | null): void;
}

class BlockGroup implements UpdateGroup {
  #moments: Moments = [null, null];
  constructor(readonly block: ParamBlock & Required<Pick<ParamBlock, 'applyUpdate'>>) {}
  gradSumSquares(): number { return addon.sumSquares(this.block.grad); }
  update(settings: UpdateSettings, needs: [boolean, boolean]): void {
    const Array = this.block.dtype === 'float64' ? Float64Array : Float32Array;
    this.#moments = this.#moments.map((m, k) => m ?? (needs[k] ? new Array(this.block.size) : null)) as Moments;
    this.block.applyUpdate(settings, ...this.#moments);
  }
  getMoments(): Moments { return [this.#moments[0]?.slice() ?? null, this.#moments[1]?.slice() ?? null]; }
  setMoments(_name: string, s1: FloatArray | null, s2: FloatArray | null): void { this.#moments = [s1?.slice() ?? null, s2?.slice() ?? null]; }
}

class ArenaGroup implements UpdateGroup {
  constructor(readonly arena: ParamArena) {}
  gradSumSquares(): number { return this.arena.gradSumSquares(); }
  update(settings: UpdateSettings): void { this.arena.update(settings); }
  getMoments(name: string): Moments { return this.arena.getMoments(name); }
  setMoments(name: string, s1: FloatArray | null, s2: FloatArray | null): void { this.arena.setMoments(name, s1, s2); }
}

export abstract class Optimizer {
  learningRate: number;
  /** Number of steps taken. */
  stepCount = 0;
  readonly blocks: ParamBlock[];
  protected readonly weightDecay: number;
  protected readonly clipNorm: number | undefined;
  readonly #groups: UpdateGroup[] = [];
  readonly #groupOf = new Map<ParamBlock, UpdateGroup>();

  protected constructor(readonly kind: Kind, params: ParamBlock[] | HasParameters, options: OptimizerOptions, defaultLr: number) {
    this.blocks = Array.isArray(params) ? params : params.parameters();
    if (this.blocks.length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'the optimizer got no parameters');
    if (new Set(this.blocks.map((b) => b.name)).size !== this.blocks.length) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', 'parameter blocks need distinct names (for the optimizer state)');
    }
    const arenas = new Map<ParamArena, ArenaGroup>();
    for (const b of this.blocks) {
      let group: UpdateGroup;
      if (b.arena) {
        group = arenas.get(b.arena) ?? new ArenaGroup(b.arena);
        if (!arenas.has(b.arena)) {
          arenas.set(b.arena, group as ArenaGroup);
          this.#groups.push(group);
          const missing = b.arena.blockNames.filter((name) => !this.blocks.some((x) => x.arena === b.arena && x.name === name));
          if (missing.length) {
            throw wnlstmError('ERR_WNLSTM_CONFIG', `a model's blocks are updated together: give the optimizer the model (missing: ${missing.join(', ')})`);
          }
        }
      } else if (b.applyUpdate) {
        group = new BlockGroup(b as ParamBlock & Required<Pick<ParamBlock, 'applyUpdate'>>);
        this.#groups.push(group);
      } else {
        throw wnlstmError('ERR_WNLSTM_CONFIG', `parameter block '${b.name}' can be updated neither alone nor in an arena`);
      }
      this.#groupOf.set(b, group);
    }
    this.learningRate = positive(options.learningRate ?? defaultLr, 'learningRate', true);
    this.weightDecay = positive(options.weightDecay ?? 0, 'weightDecay', false);
    this.clipNorm = options.clipNorm === undefined ? undefined : positive(options.clipNorm, 'clipNorm', true);
    // An arena holds its optimizer state: a new optimizer starts from zeros, as one over JS-held blocks does.
    for (const arena of arenas.keys()) arena.clearMoments();
  }

  /** The settings of this kind. */
  protected abstract settings(): KindSettings;
  /** Which state buffers this kind keeps. */
  protected abstract buffers(): [boolean, boolean];

  /** Applies the accumulated gradients; returns their global norm (before clipping). */
  step(): number {
    let sum = 0;
    for (const g of this.#groups) sum += g.gradSumSquares();
    const norm = Math.sqrt(sum);
    if (!Number.isFinite(norm)) {
      throw wnlstmError('ERR_WNLSTM_NOT_FINITE', `the gradients are not finite (norm ${norm}): training diverged`);
    }
    const gradScale = this.clipNorm !== undefined && norm > this.clipNorm ? this.clipNorm / norm : 1;
    this.stepCount++;
    const settings: UpdateSettings = { kind: this.kind, learningRate: this.learningRate, weightDecay: this.weightDecay,
      step: this.stepCount, gradScale, ...this.settings() };
    const needs = this.buffers();
    for (const g of this.#groups) g.update(settings, needs);
    return norm;
  }

  zeroGrad(): void { for (const b of this.blocks) b.zeroGrad(); }

  /** Copies of the optimizer's state, for checkpoints. */
  getState(): OptimizerState {
    const buffers: OptimizerState['buffers'] = {};
    for (const b of this.blocks) buffers[b.name] = this.#groupOf.get(b)!.getMoments(b.name);
    return { kind: this.kind, step: this.stepCount, learningRate: this.learningRate, buffers };
  }

  setState(state: OptimizerState): void {
    if (state.kind !== this.kind) throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer state of ${state.kind}, not ${this.kind}`);
    for (const b of this.blocks) {
      const s = state.buffers[b.name];
      if (!s) throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer state has no block '${b.name}'`);
      for (const buf of s) {
        if (buf && buf.length !== b.size) throw wnlstmError('ERR_WNLSTM_SHAPE', `optimizer state of '${b.name}' has the wrong size`);
        if (buf && !(buf instanceof (b.dtype === 'float64' ? Float64Array : Float32Array))) {
          throw wnlstmError('ERR_WNLSTM_TYPE', `optimizer state of '${b.name}' must be a ${b.dtype} array`);
        }
      }
      // After a step, the moments this kind keeps exist: without them the next step would start over.
      const needs = this.buffers();
      if (state.step > 0 && needs.some((need, k) => need && !s[k])) {
        throw wnlstmError('ERR_WNLSTM_CONFIG', `optimizer state of '${b.name}' lacks a buffer that ${this.kind} keeps`);
      }
    }
    for (const b of this.blocks) this.#groupOf.get(b)!.setMoments(b.name, ...state.buffers[b.name]);
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
  protected settings(): KindSettings { return { beta1: 0, beta2: 0, epsilon: 0, momentum: this.momentum, nesterov: this.nesterov }; }
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
  protected settings(): KindSettings { return { beta1: this.beta1, beta2: this.beta2, epsilon: this.epsilon, momentum: 0, nesterov: false }; }
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
  protected settings(): KindSettings { return { beta1: this.alpha, beta2: 0, epsilon: this.epsilon, momentum: this.momentum, nesterov: false }; }
  protected buffers(): [boolean, boolean] { return [true, this.momentum !== 0]; }
}

export class Adagrad extends Optimizer {
  readonly epsilon: number;
  constructor(params: ParamBlock[] | HasParameters, options: OptimizerOptions & { epsilon?: number } = {}) {
    super('adagrad', params, options, 0.01);
    this.epsilon = options.epsilon ?? 1e-10;
  }
  protected settings(): KindSettings { return { beta1: 0, beta2: 0, epsilon: this.epsilon, momentum: 0, nesterov: false }; }
  protected buffers(): [boolean, boolean] { return [true, false]; }
}

export type OptimizerName = 'sgd' | 'momentum' | 'adam' | 'adamw' | 'rmsprop' | 'adagrad';
export const OPTIMIZER_NAMES: readonly OptimizerName[] = ['sgd', 'momentum', 'adam', 'adamw', 'rmsprop', 'adagrad'];

/** An optimizer by name, as the command line and SequenceModel.fit() name them: 'momentum' is SGD with
 * momentum 0.9, 'rmsprop' has alpha 0.95 (char-rnn's); the rest take their defaults. */
export function optimizerByName(name: OptimizerName, params: ParamBlock[] | HasParameters, options: OptimizerOptions = {}): Optimizer {
  switch (name) {
    case 'sgd': return new SGD(params, options);
    case 'momentum': return new SGD(params, { ...options, momentum: 0.9 });
    case 'adam': return new Adam(params, options);
    case 'adamw': return new AdamW(params, options);
    case 'rmsprop': return new RMSProp(params, { ...options, alpha: 0.95 });
    case 'adagrad': return new Adagrad(params, options);
    default: throw wnlstmError('ERR_WNLSTM_CONFIG', `unknown optimizer '${String(name)}' (one of ${OPTIMIZER_NAMES.join(', ')})`);
  }
}

/** Zaremba et al.'s PTB schedule: `initial` for the first `after` epochs, then times `factor` each epoch. */
export function stepDecay({ initial, factor, after }: { initial: number; factor: number; after: number }) {
  return (epoch: number) => initial * factor ** Math.max(epoch + 1 - after, 0);
}

/** initial * rate^(step / steps). */
export function exponentialDecay({ initial, rate, steps }: { initial: number; rate: number; steps: number }) {
  return (_epoch: number, step: number) => initial * rate ** (step / steps);
}
