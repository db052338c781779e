// Initializers with TensorFlow's semantics, drawn from a seeded generator so that a seed reproduces
// a cell exactly.
import { wnlstmError } from './errors';

export type Shape = [number] | [number, number];

/** A number is a constant; a function receives the variable's TF shape and name. */
export type Initializer =
  | number
  | 'glorotUniform'
  | 'glorotNormal'
  | 'zeros'
  | 'ones'
  | { kind: 'constant'; value: number }
  | { kind: 'uniform'; min?: number; max?: number }
  | { kind: 'normal'; mean?: number; stddev?: number }
  | { kind: 'truncatedNormal'; mean?: number; stddev?: number }
  | ((shape: Shape, name: string) => ArrayLike<number>);

/** sfc32, seeded through splitmix32: small, fast, and good enough for weight init. */
export class Random {
  private a: number; private b: number; private c: number; private d: number;
  constructor(seed: number) {
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next(); this.b = next(); this.c = next(); this.d = next();
    for (let i = 0; i < 12; i++) this.uint32();
  }
  uint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }
  /** The generator's state, to resume a sequence exactly (checkpoints). */
  getState(): [number, number, number, number] { return [this.a, this.b, this.c, this.d]; }
  setState(state: ArrayLike<number>): void { [this.a, this.b, this.c, this.d] = Array.from(state, (v) => v >>> 0); }
  /** Uniform in [0, 1). */
  uniform(): number { return (this.uint32() + (this.uint32() >>> 11) / 2097152) / 4294967296; }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.uniform(), v = this.uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

/** TF's _compute_fans: [rows, cols] -> (rows, cols); [n] -> (n, n). */
function fans(shape: Shape): [number, number] {
  return shape.length === 2 ? [shape[0], shape[1]] : [shape[0], shape[0]];
}

export function initialValues(init: Initializer, shape: Shape, name: string, rng: Random): Float64Array {
  const n = shape.length === 2 ? shape[0] * shape[1] : shape[0];
  const out = new Float64Array(n);
  const fill = (draw: () => number) => { for (let i = 0; i < n; i++) out[i] = draw(); return out; };
  if (typeof init === 'number') return out.fill(init);
  if (typeof init === 'function') {
    const values = init(shape, name);
    if (!values || typeof values.length !== 'number' || values.length !== n) {
      throw wnlstmError('ERR_WNLSTM_CONFIG',
        `initializer returned ${values?.length ?? typeof values} values for ${name}, expected ${n}`);
    }
    for (let i = 0; i < n; i++) out[i] = Number(values[i]);
    return out;
  }
  const [fanIn, fanOut] = fans(shape);
  const spec = typeof init === 'string' ? { kind: init } : init;
  switch (spec.kind) {
    case 'zeros': return out;
    case 'ones': return out.fill(1);
    case 'constant': return out.fill(spec.value);
    case 'glorotUniform': {
      const limit = Math.sqrt(6 / (fanIn + fanOut));
      return fill(() => (2 * rng.uniform() - 1) * limit);
    }
    case 'glorotNormal': { // TF: truncated normal with stddev sqrt(2 / (in + out)) / .87962566
      const stddev = Math.sqrt(2 / (fanIn + fanOut)) / 0.87962566103423978;
      return fill(() => truncated(rng) * stddev);
    }
    case 'uniform': { // TF random_uniform_initializer defaults: [0, 1)
      const min = spec.min ?? 0, max = spec.max ?? 1;
      return fill(() => min + (max - min) * rng.uniform());
    }
    case 'normal': return fill(() => (spec.mean ?? 0) + (spec.stddev ?? 1) * rng.normal());
    case 'truncatedNormal': return fill(() => (spec.mean ?? 0) + (spec.stddev ?? 1) * truncated(rng));
    default:
      throw wnlstmError('ERR_WNLSTM_CONFIG', `unknown initializer ${JSON.stringify(init)}`);
  }
}

/** Standard normal redrawn outside two standard deviations, as TF's truncated_normal. */
function truncated(rng: Random): number {
  for (;;) {
    const z = rng.normal();
    if (Math.abs(z) <= 2) return z;
  }
}

/** L2 norm of each column of rows [r0, r1) of a row-major matrix with `cols` columns. */
export function columnNorms(m: ArrayLike<number>, r0: number, r1: number, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let r = r0; r < r1; r++) for (let j = 0; j < cols; j++) out[j] += m[r * cols + j] ** 2;
  return out.map(Math.sqrt);
}
