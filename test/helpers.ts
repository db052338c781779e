// Shared test tools: seeded data, and closeness checks that report the worst error (NaN never passes).
import type { Random } from '../lib/index';

export interface Tolerance { rtol: number; atol: number }

// eslint-disable-next-line @typescript-eslint/no-require-imports
const shared = require('./closeness.js') as {
  randomArray(rng: Random, n: number, scale?: number, Type?: Float32ArrayConstructor | Float64ArrayConstructor): Float64Array | Float32Array;
  closeness(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance): string | null;
};
/** n values uniform in [-scale, scale), as a Float64Array (or the given Type). */
export const randomArray = shared.randomArray as {
  (rng: Random, n: number, scale?: number): Float64Array;
  (rng: Random, n: number, scale: number, Type: Float32ArrayConstructor): Float32Array;
  (rng: Random, n: number, scale: number, Type: Float64ArrayConstructor): Float64Array;
};
/** Worst violation of |a - e| <= atol + rtol |e|, as a message, or null when every element passes. */
export const closeness = shared.closeness;

export function assertClose(t: { ok(ok: boolean, message: string): unknown }, actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, what: string) {
  const problem = closeness(actual, expected, tol);
  t.ok(problem === null, problem === null ? what : `${what}: ${problem}`);
}

/** Central differences of a scalar function of x, element by element (float64). */
export function centralDifferences(f: (x: Float64Array) => number, x: Float64Array, eps = 1e-6): Float64Array {
  return Float64Array.from(x, (_, i) => {
    const up = x.slice(), down = x.slice();
    up[i] += eps;
    down[i] -= eps;
    return (f(up) - f(down)) / (2 * eps);
  });
}
