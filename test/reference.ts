// An independent float64 reference of SPEC section 1, written from the spec with plain loops and an
// explicitly normalised kernel: the native backends are checked against it, not against themselves.
export interface RefConfig {
  inputSize: number; numUnits: number; numProj?: number; norm: boolean; usePeepholes?: boolean;
  cellClip?: number; projClip?: number; forgetBias?: number; activation?: string;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const acts: Record<string, (x: number) => number> = {
  tanh: Math.tanh, sigmoid, relu: (x) => Math.max(x, 0), softsign: (x) => x / (1 + Math.abs(x)), linear: (x) => x,
};

/** W[:, j] = g[j] V[:, j] / sqrt(max(sum V[:, j]^2, 1e-12)) over rows [r0, r1) of a [*, cols] matrix. */
function normalise(V: ArrayLike<number>, r0: number, r1: number, cols: number, g: ArrayLike<number>, out: Float64Array) {
  for (let j = 0; j < cols; j++) {
    let ss = 0;
    for (let r = r0; r < r1; r++) ss += V[r * cols + j] ** 2;
    const inv = 1 / Math.sqrt(Math.max(ss, 1e-12));
    for (let r = r0; r < r1; r++) out[r * cols + j] = V[r * cols + j] * inv * g[j];
  }
}

export function referenceForward(cfg: RefConfig, w: Record<string, ArrayLike<number>>, x: ArrayLike<number>,
  steps: number, batch: number, c0?: ArrayLike<number>, h0?: ArrayLike<number>, seqLen?: ArrayLike<number>) {
  const I = cfg.inputSize, H = cfg.numUnits, P = cfg.numProj ?? H, K = I + P, G = 4 * H;
  const act = acts[cfg.activation ?? 'tanh'];
  const fb = cfg.forgetBias ?? 1;
  const clip = (v: number, m?: number) => (m === undefined ? v : Math.min(Math.max(v, -m), m));
  const W = new Float64Array(K * G);
  const Wp = cfg.numProj ? new Float64Array(H * P) : undefined;
  if (cfg.norm) {
    normalise(w.kernel, 0, I, G, w.norm_0, W);
    normalise(w.kernel, I, K, G, w.norm_1, W);
    if (Wp) normalise(w['projection/kernel'], 0, H, P, w['projection/norm_0'], Wp);
  } else {
    W.set(w.kernel);
    if (Wp) Wp.set(w['projection/kernel']);
  }
  const zero = new Float64Array(H);
  const wi = w.w_i_diag ?? zero, wf = w.w_f_diag ?? zero, wo = w.w_o_diag ?? zero;
  let c = Float64Array.from(c0 ?? new Float64Array(batch * H));
  let h = Float64Array.from(h0 ?? new Float64Array(batch * P));
  const y = new Float64Array(steps * batch * P);
  for (let t = 0; t < steps; t++) {
    const cNext = Float64Array.from(c), hNext = Float64Array.from(h);
    for (let b = 0; b < batch; b++) {
      if (seqLen && t >= seqLen[b]) continue; // finished: state kept, output stays 0
      const xh = [...Array.from({ length: I }, (_, k) => x[(t * batch + b) * I + k]),
        ...Array.from({ length: P }, (_, k) => h[b * P + k])];
      const z = new Float64Array(G);
      for (let g = 0; g < G; g++) {
        let s = w.bias[g];
        for (let k = 0; k < K; k++) s += xh[k] * W[k * G + g];
        z[g] = s;
      }
      const hh = new Float64Array(H);
      for (let u = 0; u < H; u++) {
        const cp = c[b * H + u];
        let cn = cp * sigmoid(z[2 * H + u] + fb + wf[u] * cp) + sigmoid(z[u] + wi[u] * cp) * act(z[H + u]);
        cn = clip(cn, cfg.cellClip);
        cNext[b * H + u] = cn;
        hh[u] = sigmoid(z[3 * H + u] + wo[u] * cn) * act(cn);
      }
      for (let p = 0; p < P; p++) {
        let v = hh[p];
        if (Wp) {
          v = 0;
          for (let u = 0; u < H; u++) v += hh[u] * Wp[u * P + p];
          v = clip(v, cfg.projClip);
        }
        hNext[b * P + p] = v;
        y[(t * batch + b) * P + p] = v;
      }
    }
    c = cNext; h = hNext;
  }
  return { y, c, h };
}
