// Shared test tools: seeded data, and closeness checks that report the worst error (NaN never passes).
import { Random } from '../lib/index';

export interface Tolerance { rtol: number; atol: number }

export function randomArray(rng: Random, n: number, scale = 1, Type: Float32ArrayConstructor | Float64ArrayConstructor = Float64Array) {
  const a = new Type(n);
  for (let i = 0; i < n; i++) a[i] = (2 * rng.uniform() - 1) * scale;
  return a;
}

/** Worst violation of |a - e| <= atol + rtol |e|, as a message, or null when every element passes. */
export function closeness(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance): string | null {
  if (actual.length !== expected.length) return `length ${actual.length} != ${expected.length}`;
  let worst = -1, worstExcess = 0, maxAbs = 0, maxRel = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i], diff = Math.abs(a - e);
    if (!Number.isFinite(a) || !Number.isFinite(e)) return `non-finite at ${i}: ${a} vs ${e}`;
    maxAbs = Math.max(maxAbs, diff);
    maxRel = Math.max(maxRel, diff / Math.max(Math.abs(e), 1e-30));
    const excess = diff - (tol.atol + tol.rtol * Math.abs(e));
    if (excess > worstExcess) { worstExcess = excess; worst = i; }
  }
  if (worst < 0) return null;
  return `element ${worst}: ${actual[worst]} vs ${expected[worst]} (max abs err ${maxAbs.toExponential(2)}, ` +
    `max rel err ${maxRel.toExponential(2)}, tolerance atol ${tol.atol} rtol ${tol.rtol})`;
}

export function assertClose(t: { ok(ok: boolean, message: string): unknown }, actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, what: string) {
  const problem = closeness(actual, expected, tol);
  t.ok(problem === null, problem === null ? what : `${what}: ${problem}`);
}
