// Losses for models built from the layers (the language model computes its own in the backend): each
// returns the mean loss and its gradient with respect to the predictions (or logits), ready for a
// layer's backward(). The work runs in the native ops (native/include/wnlstm/ops.h).
import { addon, FloatArray } from '../core/native';
import { wnlstmError } from '../core/errors';

export interface LossResult {
  /** The mean loss. */
  loss: number;
  /** d loss / d (logits or predictions), the same shape and dtype. */
  grad: FloatArray;
}

function floats(a: unknown, name: string): FloatArray {
  if (!(a instanceof Float32Array || a instanceof Float64Array)) throw wnlstmError('ERR_WNLSTM_TYPE', `${name} must be a Float32Array or a Float64Array`);
  if (a.length === 0) throw wnlstmError('ERR_WNLSTM_SHAPE', `${name} must not be empty`);
  return a;
}

/** Softmax cross-entropy of logits [rows, classes] against class ids [rows] (each in [0, classes), or -1 for
 * a row without loss), averaged over the rows (nats). */
export function softmaxCrossEntropy(logits: FloatArray, targets: Int32Array | ArrayLike<number>, classes: number): LossResult {
  floats(logits, 'logits');
  if (!Number.isInteger(classes) || classes < 1) throw wnlstmError('ERR_WNLSTM_RANGE', `classes must be a positive integer, got ${classes}`);
  if (logits.length % classes !== 0) throw wnlstmError('ERR_WNLSTM_SHAPE', `logits has ${logits.length} values: not a multiple of classes (${classes})`);
  const rows = logits.length / classes;
  if (!ArrayBuffer.isView(targets) && !Array.isArray(targets)) throw wnlstmError('ERR_WNLSTM_TYPE', 'targets must be an Int32Array or an array of class ids');
  if (targets.length !== rows) throw wnlstmError('ERR_WNLSTM_SHAPE', `targets needs ${rows} class ids (one per row), got ${targets.length}`);
  const ids = Int32Array.from(targets as ArrayLike<number>);
  for (let r = 0; r < rows; r++) {
    if (ids[r] !== (targets as ArrayLike<number>)[r]) throw wnlstmError('ERR_WNLSTM_RANGE', `targets[${r}] = ${(targets as ArrayLike<number>)[r]} is not a class id`);
  }
  const grad = logits.slice();
  const loss = addon.softmaxCrossEntropy(grad, ids, classes, 1 / rows) / rows;
  return { loss, grad };
}

/** Mean squared error over all elements of predictions and targets (same dtype and length). */
export function meanSquaredError(predictions: FloatArray, targets: FloatArray): LossResult {
  const n = floats(predictions, 'predictions').length;
  const r = addon.squaredError(predictions, targets, 1 / n);
  return { loss: r.sum / n, grad: r.grad };
}
