// Seeded data and the closeness check, in plain JavaScript so that test/cuda-compare.js can use them on
// the GPU machine (which has no tsx); test/helpers.ts re-exports them with types.
'use strict';

/** n values uniform in [-scale, scale) from rng (a lib Random), as a Float64Array or the given Type. */
function randomArray(rng, n, scale = 1, Type = Float64Array) {
  const a = new Type(n);
  for (let i = 0; i < n; i++) a[i] = (2 * rng.uniform() - 1) * scale;
  return a;
}

/** Worst violation of |a - e| <= atol + rtol |e|, as a message, or null when every element passes. */
function closeness(actual, expected, tol) {
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

module.exports = { randomArray, closeness };
