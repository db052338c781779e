// Weights in other frameworks' layouts.
// - TensorFlow: our own names and layouts under a variable scope (`rnn/weight_norm_lstm_cell/kernel`, ...).
// - PyTorch nn.LSTM (one layer): weight_ih [4H, I], weight_hh [4H, P], bias_ih, bias_hh [4H], gate
//   order i, f, g, o; weight_hr [P, H] with proj_size. PyTorch has no peepholes, clipping, other
//   activations or forget bias: export refuses the first three and folds the forget bias into bias_ih.
//   A weight-normalised cell exports its effective weights g·v/‖v‖; importing into one sets v = W and
//   g = ‖W‖ per column, which reproduces W exactly.
import type { FloatArray, LSTMCell, WeightNormLSTMCell } from './cell';
import { wnlstmError } from '../core/errors';
import { columnNorms } from '../core/init';

type AnyCell = LSTMCell | WeightNormLSTMCell;

/** Our gate order is TF's (i, j, f, o); PyTorch's is (i, f, g, o) with g = j. */
const TF_GATE_OF_TORCH = [0, 2, 1, 3];

export function toTensorFlow(cell: AnyCell, scope = cell.norm ? 'rnn/weight_norm_lstm_cell' : 'rnn/lstm_cell'): Record<string, FloatArray> {
  const out: Record<string, FloatArray> = {};
  for (const [name, values] of Object.entries(cell.getWeights())) out[`${scope}/${name}`] = values;
  return out;
}

export function fromTensorFlow(cell: AnyCell, variables: Record<string, ArrayLike<number>>,
  scope = cell.norm ? 'rnn/weight_norm_lstm_cell' : 'rnn/lstm_cell'): void {
  const weights: Record<string, ArrayLike<number>> = {};
  for (const [name, values] of Object.entries(variables)) {
    if (!name.startsWith(`${scope}/`)) throw wnlstmError('ERR_WNLSTM_UNKNOWN_WEIGHT', `variable '${name}' is not under scope '${scope}'`);
    weights[name.slice(scope.length + 1)] = values;
  }
  cell.setWeights(weights);
}

/** The effective (normalised) kernel [K, 4H] and projection [H, P] of a cell. */
function effectiveWeights(cell: AnyCell) {
  const w = cell.getWeights(), I = cell.inputSize, P = cell.outputSize, G = 4 * cell.numUnits;
  const kernel = Float64Array.from(w.kernel);
  let proj = w['projection/kernel'] ? Float64Array.from(w['projection/kernel']) : undefined;
  if (cell.norm) {
    const scale = (m: Float64Array, r0: number, r1: number, cols: number, g: ArrayLike<number>) => {
      const norms = columnNorms(m, r0, r1, cols);
      for (let r = r0; r < r1; r++) for (let j = 0; j < cols; j++) m[r * cols + j] *= g[j] / Math.sqrt(Math.max(norms[j] ** 2, 1e-12));
    };
    scale(kernel, 0, I, G, w.norm_0);
    scale(kernel, I, I + P, G, w.norm_1);
    if (proj) scale(proj, 0, cell.numUnits, P, w['projection/norm_0']);
  }
  return { kernel, bias: w.bias, proj };
}

export function toPyTorch(cell: AnyCell, layer = 0): Record<string, Float32Array> {
  const reasons = [cell.usePeepholes && 'peepholes', cell.cellClip !== undefined && 'cellClip', cell.projClip !== undefined && 'projClip',
    cell.activation !== 'tanh' && `activation '${cell.activation}'`].filter(Boolean);
  if (reasons.length) throw wnlstmError('ERR_WNLSTM_CONFIG', `PyTorch's nn.LSTM has no ${reasons.join(', ')}`);
  const { kernel, bias, proj } = effectiveWeights(cell);
  const H = cell.numUnits, I = cell.inputSize, P = cell.outputSize, G = 4 * H;
  const ih = new Float32Array(G * I), hh = new Float32Array(G * P), bih = new Float32Array(G), bhh = new Float32Array(G);
  for (let gate = 0; gate < 4; gate++) {
    const tf = TF_GATE_OF_TORCH[gate];
    for (let u = 0; u < H; u++) {
      const row = gate * H + u, col = tf * H + u;
      for (let r = 0; r < I; r++) ih[row * I + r] = kernel[r * G + col];
      for (let r = 0; r < P; r++) hh[row * P + r] = kernel[(I + r) * G + col];
      bih[row] = bias[col] + (tf === 2 ? cell.forgetBias : 0);
    }
  }
  const out: Record<string, Float32Array> = { [`weight_ih_l${layer}`]: ih, [`weight_hh_l${layer}`]: hh, [`bias_ih_l${layer}`]: bih, [`bias_hh_l${layer}`]: bhh };
  if (proj) {
    const hr = new Float32Array(P * H);
    for (let u = 0; u < H; u++) for (let p = 0; p < P; p++) hr[p * H + u] = proj[u * P + p];
    out[`weight_hr_l${layer}`] = hr;
  }
  return out;
}

export function fromPyTorch(cell: AnyCell, state: Record<string, ArrayLike<number>>, layer = 0): void {
  const H = cell.numUnits, I = cell.inputSize, P = cell.outputSize, G = 4 * H, K = I + P;
  const get = (name: string, n: number) => {
    const v = state[`${name}_l${layer}`];
    if (!v) throw wnlstmError('ERR_WNLSTM_UNKNOWN_WEIGHT', `missing ${name}_l${layer}`);
    if (v.length !== n) throw wnlstmError('ERR_WNLSTM_SHAPE', `${name}_l${layer} has ${v.length} values, this cell needs ${n}`);
    return v;
  };
  const ih = get('weight_ih', G * I), hh = get('weight_hh', G * P), bih = get('bias_ih', G), bhh = get('bias_hh', G);
  if (cell.numProj === undefined && state[`weight_hr_l${layer}`]) throw wnlstmError('ERR_WNLSTM_CONFIG', 'the state has a projection (weight_hr) and this cell has none');
  const kernel = new Float64Array(K * G), bias = new Float64Array(G);
  for (let gate = 0; gate < 4; gate++) {
    const tf = TF_GATE_OF_TORCH[gate];
    for (let u = 0; u < H; u++) {
      const row = gate * H + u, col = tf * H + u;
      for (let r = 0; r < I; r++) kernel[r * G + col] = ih[row * I + r];
      for (let r = 0; r < P; r++) kernel[(I + r) * G + col] = hh[row * P + r];
      bias[col] = bih[row] + bhh[row] - (tf === 2 ? cell.forgetBias : 0);
    }
  }
  const weights: Record<string, Float64Array> = { kernel, bias };
  if (cell.numProj !== undefined) {
    const hr = get('weight_hr', P * H), proj = new Float64Array(H * P);
    for (let u = 0; u < H; u++) for (let p = 0; p < P; p++) proj[u * P + p] = hr[p * H + u];
    weights['projection/kernel'] = proj;
    if (cell.norm) weights['projection/norm_0'] = columnNorms(proj, 0, H, P);
  }
  if (cell.norm) {
    weights.norm_0 = columnNorms(kernel, 0, I, G);
    weights.norm_1 = columnNorms(kernel, I, K, G);
  }
  cell.setWeights(weights);
}
