// Users' data for SequenceModel: variable-length sequences (token ids, or float features per step) and
// their labels or targets, checked once and packed flat; then padded batches, time-major, for the runtime.
import { wnlstmError } from '../core/errors';
import type { NativeBatch } from '../core/native';

export type Task = 'classification' | 'regression' | 'tagging' | 'forecasting' | 'next-token';

/** One sequence: token ids, or its steps' features (nested, or flat [steps * features]). */
export type Sequence = ArrayLike<number> | ArrayLike<ArrayLike<number>>;
/** Labels or targets: one per sequence (classification, regression) or one per step (tagging,
 * forecasting); a prediction of several values is an array of them. */
export type Targets = ArrayLike<number> | ArrayLike<ArrayLike<number>> | ArrayLike<ArrayLike<ArrayLike<number>>>;

export interface DataShape {
  task: Task;
  /** Token ids in [0, vocabSize), or 0: features. */
  vocabSize: number;
  /** Features per step (with features). */
  features: number;
  /** Classes (classification, tagging, next-token) or values per prediction (regression, forecasting). */
  outputs: number;
  /** Longer sequences keep their first maxLength steps. */
  maxLength: number;
}

/** Sequences and their labels or targets, packed: sequence i is steps [offsets[i], offsets[i] + lengths[i]). */
export interface Dataset {
  size: number;
  lengths: Int32Array;
  offsets: Int32Array;
  ids?: Int32Array;
  features?: Float64Array;
  /** Class per sequence or per step (packed like the steps). */
  labels?: Int32Array;
  /** Values per sequence or per step, `outputs` each. */
  targets?: Float64Array;
}

export const isClassifier = (task: Task) => task === 'classification' || task === 'tagging' || task === 'next-token';
export const isPerStep = (task: Task) => task !== 'classification' && task !== 'regression';

const fail = (code: 'ERR_WNLSTM_TYPE' | 'ERR_WNLSTM_SHAPE' | 'ERR_WNLSTM_RANGE' | 'ERR_WNLSTM_NOT_FINITE', message: string) => {
  throw wnlstmError(code, message);
};
const isList = (v: unknown): v is ArrayLike<unknown> => Array.isArray(v) || (ArrayBuffer.isView(v) && !(v instanceof DataView));

/** The largest float32: a larger value would become Infinity in a float32 model. */
const FLOAT32_MAX = 3.4028234663852886e38;

function finite(v: unknown, where: string): number {
  if (typeof v !== 'number') fail('ERR_WNLSTM_TYPE', `${where} must be a number, got ${typeof v}`);
  if (!(Math.abs(v as number) <= FLOAT32_MAX)) fail('ERR_WNLSTM_NOT_FINITE', `${where} is ${String(v)}${Number.isFinite(v) ? ' (past float32)' : ''}`);
  return v as number;
}

function classId(v: unknown, classes: number, where: string): number {
  const c = finite(v, where);
  if (!Number.isInteger(c) || c < 0 || c >= classes) fail('ERR_WNLSTM_RANGE', `${where} = ${c} is not a class in [0, ${classes})`);
  return c;
}

/** Values of one prediction: a number (outputs 1) or `outputs` numbers. */
function values(v: unknown, outputs: number, where: string, out: Float64Array, at: number): void {
  if (!isList(v)) {
    if (outputs !== 1) fail('ERR_WNLSTM_SHAPE', `${where} needs ${outputs} values, got one number`);
    out[at] = finite(v, where);
    return;
  }
  if (v.length !== outputs) fail('ERR_WNLSTM_SHAPE', `${where} needs ${outputs} values, got ${v.length}`);
  for (let o = 0; o < outputs; o++) out[at + o] = finite(v[o], `${where}[${o}]`);
}

/** Checks and packs x (and y, unless the task needs none or `y` is null: prediction). */
export function encode(shape: DataShape, x: unknown, y: unknown, name = 'x'): Dataset {
  const { task, vocabSize, features, outputs, maxLength } = shape;
  if (!isList(x)) fail('ERR_WNLSTM_TYPE', `${name} must be an array of sequences`);
  const xs = x as ArrayLike<unknown>, n = xs.length;
  if (n === 0) fail('ERR_WNLSTM_SHAPE', `${name} has no sequences`);
  const lengths = new Int32Array(n), offsets = new Int32Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const s = xs[i];
    if (!isList(s)) fail('ERR_WNLSTM_TYPE', `${name}[${i}] must be an array (a sequence)`);
    const seq = s as ArrayLike<unknown>;
    const flat = vocabSize === 0 && seq.length > 0 && !isList(seq[0]);
    let steps = flat ? seq.length / features : seq.length;
    if (flat && !Number.isInteger(steps)) fail('ERR_WNLSTM_SHAPE', `${name}[${i}] has ${seq.length} values: not a multiple of ${features} features`);
    if (steps === 0) fail('ERR_WNLSTM_SHAPE', `${name}[${i}] is empty`);
    steps = Math.min(steps, maxLength);
    lengths[i] = steps;
    offsets[i] = total;
    total += steps;
  }
  if (total * Math.max(features, outputs, 1) > 2 ** 31 - 1) throw wnlstmError('ERR_WNLSTM_SIZE', `${name} has ${total} steps: too many values for one dataset`);
  const data: Dataset = { size: n, lengths, offsets };
  if (vocabSize > 0) {
    const ids = (data.ids = new Int32Array(total));
    for (let i = 0; i < n; i++) {
      const seq = xs[i] as ArrayLike<unknown>;
      for (let t = 0; t < lengths[i]; t++) ids[offsets[i] + t] = classId(seq[t], vocabSize, `${name}[${i}][${t}] (a token id)`);
    }
  } else {
    const f = (data.features = new Float64Array(total * features));
    for (let i = 0; i < n; i++) {
      const seq = xs[i] as ArrayLike<unknown>;
      const flat = !isList(seq[0]);
      for (let t = 0; t < lengths[i]; t++) {
        const at = (offsets[i] + t) * features;
        if (flat) {
          for (let k = 0; k < features; k++) f[at + k] = finite(seq[t * features + k], `${name}[${i}][${t * features + k}]`);
        } else {
          const step = seq[t] as ArrayLike<unknown>;
          if (!isList(step) || step.length !== features) fail('ERR_WNLSTM_SHAPE', `${name}[${i}][${t}] must be ${features} features`);
          for (let k = 0; k < features; k++) f[at + k] = finite(step[k], `${name}[${i}][${t}][${k}]`);
        }
      }
    }
  }
  if (task === 'next-token') { // the labels are the inputs, one step ahead; the last step has none
    const labels = (data.labels = new Int32Array(total));
    for (let i = 0; i < n; i++) {
      const o = offsets[i], seq = xs[i] as ArrayLike<number>;
      for (let t = 0; t < lengths[i]; t++) labels[o + t] = t + 1 < seq.length ? classId(seq[t + 1], vocabSize, `${name}[${i}][${t + 1}]`) : -1;
    }
    return data;
  }
  if (y === null) return data;
  const yName = name === 'x' ? 'y' : `${name}'s targets`;
  if (!isList(y)) fail('ERR_WNLSTM_TYPE', `${yName} must be an array (one entry per sequence)`);
  const ys = y as ArrayLike<unknown>;
  if (ys.length !== n) fail('ERR_WNLSTM_SHAPE', `${yName} has ${ys.length} entries for ${n} sequences`);
  const perStep = isPerStep(task), rows = perStep ? total : n;
  if (isClassifier(task)) {
    const labels = (data.labels = new Int32Array(rows));
    for (let i = 0; i < n; i++) {
      if (!perStep) { labels[i] = classId(ys[i], outputs, `${yName}[${i}]`); continue; }
      const row = ys[i];
      if (!isList(row) || row.length < lengths[i]) fail('ERR_WNLSTM_SHAPE', `${yName}[${i}] needs a label for each of its ${lengths[i]} steps`);
      for (let t = 0; t < lengths[i]; t++) labels[offsets[i] + t] = classId((row as ArrayLike<unknown>)[t], outputs, `${yName}[${i}][${t}]`);
    }
  } else {
    const targets = (data.targets = new Float64Array(rows * outputs));
    for (let i = 0; i < n; i++) {
      if (!perStep) { values(ys[i], outputs, `${yName}[${i}]`, targets, i * outputs); continue; }
      const row = ys[i];
      if (!isList(row) || row.length < lengths[i]) fail('ERR_WNLSTM_SHAPE', `${yName}[${i}] needs targets for each of its ${lengths[i]} steps`);
      for (let t = 0; t < lengths[i]; t++) values((row as ArrayLike<unknown>)[t], outputs, `${yName}[${i}][${t}]`, targets, (offsets[i] + t) * outputs);
    }
  }
  return data;
}

/** The sequences `indices` of a dataset as one padded batch, time-major (steps = the longest). */
export function batchOf(shape: DataShape, data: Dataset, indices: ArrayLike<number>, dtype: 'float32' | 'float64'): NativeBatch {
  const B = indices.length, F = shape.features, O = shape.outputs;
  let steps = 0;
  for (let b = 0; b < B; b++) steps = Math.max(steps, data.lengths[indices[b]]);
  const Floats = dtype === 'float64' ? Float64Array : Float32Array;
  const lengths = new Int32Array(B);
  for (let b = 0; b < B; b++) lengths[b] = data.lengths[indices[b]];
  const batch: NativeBatch = { steps, batchSize: B, lengths };
  if (data.ids) {
    const ids = (batch.ids = new Int32Array(steps * B)); // padding: id 0 (never read: past the length)
    for (let b = 0; b < B; b++) for (let t = 0, o = data.offsets[indices[b]]; t < lengths[b]; t++) ids[t * B + b] = data.ids[o + t];
  } else {
    const f = (batch.features = new Floats(steps * B * F));
    for (let b = 0; b < B; b++) {
      for (let t = 0, o = data.offsets[indices[b]]; t < lengths[b]; t++) f.set(data.features!.subarray((o + t) * F, (o + t + 1) * F), (t * B + b) * F);
    }
  }
  const perStep = isPerStep(shape.task);
  if (data.labels) {
    const labels = (batch.labels = new Int32Array(perStep ? steps * B : B).fill(-1));
    for (let b = 0; b < B; b++) {
      const i = indices[b];
      if (!perStep) labels[b] = data.labels[i];
      else for (let t = 0; t < lengths[b]; t++) labels[t * B + b] = data.labels[data.offsets[i] + t];
    }
  }
  if (data.targets) {
    const targets = (batch.targets = new Floats((perStep ? steps * B : B) * O));
    for (let b = 0; b < B; b++) {
      const i = indices[b];
      if (!perStep) targets.set(data.targets.subarray(i * O, (i + 1) * O), b * O);
      else for (let t = 0; t < lengths[b]; t++) targets.set(data.targets.subarray((data.offsets[i] + t) * O, (data.offsets[i] + t + 1) * O), (t * B + b) * O);
    }
  }
  return batch;
}

/** The sequences `indices` of a dataset. */
export function subset(data: Dataset, indices: ArrayLike<number>, shape: DataShape): Dataset {
  const n = indices.length, lengths = new Int32Array(n), offsets = new Int32Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) { lengths[k] = data.lengths[indices[k]]; offsets[k] = total; total += lengths[k]; }
  const out: Dataset = { size: n, lengths, offsets };
  const perStep = isPerStep(shape.task), O = shape.outputs, F = shape.features;
  const copySteps = <A extends Int32Array | Float64Array>(src: A, width: number, make: (len: number) => A) => {
    const dst = make(total * width);
    for (let k = 0; k < n; k++) dst.set(src.subarray(data.offsets[indices[k]] * width, (data.offsets[indices[k]] + lengths[k]) * width), offsets[k] * width);
    return dst;
  };
  if (data.ids) out.ids = copySteps(data.ids, 1, (len) => new Int32Array(len));
  if (data.features) out.features = copySteps(data.features, F, (len) => new Float64Array(len));
  if (data.labels) {
    out.labels = perStep ? copySteps(data.labels, 1, (len) => new Int32Array(len)) : Int32Array.from(indices, (i) => data.labels![i]);
  }
  if (data.targets) {
    if (perStep) out.targets = copySteps(data.targets, O, (len) => new Float64Array(len));
    else {
      out.targets = new Float64Array(n * O);
      for (let k = 0; k < n; k++) out.targets.set(data.targets.subarray(indices[k] * O, (indices[k] + 1) * O), k * O);
    }
  }
  return out;
}
