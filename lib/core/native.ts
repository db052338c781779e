// Loads the addon and types its surface. The addon checks every array it is given; this file only
// finds it, trying each place a build or a prebuild can be and reporting every failed attempt.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { wnlstmError } from './errors';

export type FloatArray = Float32Array | Float64Array;

export interface NativeConfig {
  inputSize: number;
  numUnits: number;
  numProj?: number;
  norm: boolean;
  usePeepholes: boolean;
  cellClip?: number;
  projClip?: number;
  forgetBias: number;
  activation: string;
  /** 'fp32' (default) or 'tf32' (CUDA float32 only). */
  precision?: string;
}

export interface NativeParam { name: string; rows: number; cols: number; offset: number }

export interface NativeCell {
  layout(): NativeParam[];
  getParams(): FloatArray;
  setParams(values: FloatArray, offset: number): void;
  forward(x: FloatArray, steps: number, batch: number, c0: FloatArray | null, h0: FloatArray | null,
    seqLen: Int32Array | null, training: boolean): { y: FloatArray; c: FloatArray; h: FloatArray };
  backward(dy: FloatArray, dc: FloatArray | null, dh: FloatArray | null):
    { grads: FloatArray; dx: FloatArray; dc0: FloatArray; dh0: FloatArray };
  /** The same, off the main thread (inputs copied); the cell is busy until the promise settles. */
  forwardAsync(...args: Parameters<NativeCell['forward']>): Promise<ReturnType<NativeCell['forward']>>;
  backwardAsync(...args: Parameters<NativeCell['backward']>): Promise<ReturnType<NativeCell['backward']>>;
  /** forward/backward on tensors of the cell's device and dtype (the data stays on the device). */
  forwardTensors(x: NativeTensor, steps: number, batch: number, c0: NativeTensor | null, h0: NativeTensor | null,
    seqLen: Int32Array | null, training: boolean): { y: NativeTensor; c: NativeTensor; h: NativeTensor };
  backwardTensors(dy: NativeTensor, dc: NativeTensor | null, dh: NativeTensor | null):
    { grads: FloatArray; dx: NativeTensor; dc0: NativeTensor; dh0: NativeTensor };
  forwardTensorsAsync(...args: Parameters<NativeCell['forwardTensors']>): Promise<ReturnType<NativeCell['forwardTensors']>>;
  backwardTensorsAsync(...args: Parameters<NativeCell['backwardTensors']>): Promise<ReturnType<NativeCell['backwardTensors']>>;
  /** One fused optimizer step on the parameters. */
  update(grads: FloatArray, s1: FloatArray | null, s2: FloatArray | null, settings: UpdateSettings): void;
  dispose(): void;
}

/** A tensor's data in a backend's memory ('cpu' or 'cuda:<index>'); lib/core/tensor.ts keeps its shape. */
export interface NativeTensor {
  read(): FloatArray;
  write(values: FloatArray): void;
  dispose(): void;
}

/** One optimizer step's settings, as the addon takes them (PyTorch's formulas: native/include/wnlstm/ops.h). */
export interface UpdateSettings {
  kind: 'sgd' | 'adam' | 'adamw' | 'rmsprop' | 'adagrad';
  learningRate: number;
  /** Adam's beta1, or RMSProp's alpha. */
  beta1: number;
  beta2: number;
  epsilon: number;
  weightDecay: number;
  momentum: number;
  nesterov: boolean;
  /** The step number, from 1. */
  step: number;
  /** Multiplies every gradient first (global-norm clipping). */
  gradScale: number;
}

export interface NativeModelConfig {
  /** Token ids in through an embedding of this many rows, or 0: float features in. */
  vocabSize: number;
  /** The embedding's width, or the features per step. */
  inputSize: number;
  hiddenSize: number;
  layers: number;
  /** The head's outputs: classes (cross-entropy) or values (squared error). */
  outputSize: number;
  /** The head on every step's output, or on each sequence's last valid output. */
  perStep: boolean;
  loss: 'crossEntropy' | 'squaredError';
  dropout: number;
  /** Two cells per layer: one forward, one over each sequence reversed within its length; outputs side by
   * side [.., 2 * hiddenSize]. The cells are given per layer, forward first. */
  bidirectional?: boolean;
  /** How the first layer projects embedded ids (native/include/wnlstm/model.h): each step's row, or the
   * table's rows once per batch, gathered by id (the same values, less work for a small vocabulary).
   * Default 'auto': the table when the vocabulary has at most half as many rows as the batch has tokens
   * (steps x batch). Steps with dropout on the input always take the rows. */
  embeddingProjection?: EmbeddingProjection;
}
export type EmbeddingProjection = 'auto' | 'table' | 'rows';
export interface RngState { model: number[]; stack: number[] }
type States = { c: FloatArray; h: FloatArray }[];

/** One batch, time-major (see native/include/wnlstm/model.h's Batch): a head row is one step of one
 * sequence (perStep) or one sequence. */
export interface NativeBatch {
  steps: number;
  batchSize: number;
  ids?: Int32Array;
  features?: FloatArray;
  /** Each sequence's length in [0, steps]: the steps past it are padding (no output, no loss). */
  lengths?: Int32Array;
  /** Cross-entropy: a class per head row, -1 for none. */
  labels?: Int32Array;
  /** Squared error: [head rows * outputSize]. */
  targets?: FloatArray;
  states?: States | null;
  /** True: return the head's outputs (logits or values) [head rows * outputSize]. */
  outputs?: boolean;
}
export interface RngState { model: number[]; stack: number[] }

/** A sequence model whose parameters, gradients and optimizer state live in the backend
 * (native/include/wnlstm/model.h); blocks by name: embedding (with ids), lstm_<l>, dense. Getters return copies. */
export interface NativeModel {
  blocks(): { name: string; offset: number; size: number }[];
  getValues(name: string): FloatArray;
  getGrad(name: string): FloatArray;
  setValues(name: string, values: FloatArray): void;
  zeroGrad(name?: string): void;
  gradSumSquares(): number;
  update(settings: UpdateSettings): void;
  getMoments(name: string): [FloatArray | null, FloatArray | null];
  setMoments(name: string, s1: FloatArray | null, s2: FloatArray | null): void;
  /** No optimizer state: the next update starts from zeros. */
  clearMoments(): void;
  getRng(): RngState;
  setRng(state: RngState): void;
  /** The mean loss (NaN without labels or targets), the final states and, when asked, the head's outputs. */
  step(batch: NativeBatch, train: boolean): { loss: number; states: States; outputs?: FloatArray };
  /** The same off the main thread (inputs copied at the call); the model and its cells are busy meanwhile. */
  stepAsync(...args: Parameters<NativeModel['step']>): Promise<ReturnType<NativeModel['step']>>;
  embed(ids: Int32Array): FloatArray;
  /** The head (logits or values) on outputs h [rows, hiddenSize * directions] of the last layer. */
  head(h: FloatArray, rows: number): FloatArray;
  dispose(): void;
}

export interface BackendInfo {
  cpu: { isa: 'avx512' | 'avx2' | 'generic'; threads: number };
  cuda: { compiled: boolean; available: boolean; reason: string; driverVersion: number; devices: string[] };
}

interface Addon {
  NativeCell: new (config: NativeConfig, dtype: 'float32' | 'float64', backend: 'cpu' | 'cuda', device?: number) => NativeCell;
  NativeTensor: new (device: string, dtype: 'float32' | 'float64', length: number, values?: FloatArray) => NativeTensor;
  NativeModel: new (config: NativeModelConfig, dtype: 'float32' | 'float64', cells: NativeCell[], rng: RngState) => NativeModel;
  info(): BackendInfo;
  optimizerUpdate(params: FloatArray, grads: FloatArray, s1: FloatArray | null, s2: FloatArray | null, settings: UpdateSettings): void;
  sumSquares(a: FloatArray): number;
  /** Summed loss; the logits are overwritten with d(loss * gradScale)/d logits. */
  softmaxCrossEntropy(logits: FloatArray, targets: Int32Array, vocabSize: number, gradScale: number): number;
  /** Rows ids of a [V, dim] table (each id checked). */
  embeddingForward(table: FloatArray, dim: number, ids: Int32Array): FloatArray;
  /** dtable[ids[n]] += dy[n]. */
  embeddingBackward(dy: FloatArray, dim: number, ids: Int32Array, dtable: FloatArray): void;
  /** Inverted dropout of x in place, drawing from the sfc32 state (moved on); returns the scaled mask. */
  dropout(x: FloatArray, rate: number, state: Uint32Array): FloatArray;
  /** dropout() on a tensor, in place on its device; returns the mask as a tensor there. */
  tensorDropout(x: NativeTensor, rate: number, state: Uint32Array): NativeTensor;
  /** x *= mask, tensors of one device and dtype. */
  tensorMultiply(x: NativeTensor, mask: NativeTensor): void;
  /** A second handle on x's data: the data lives while either does. */
  tensorShare(x: NativeTensor): NativeTensor;
  /** Rows ids of a host table [V, dim], as a tensor on the device (gathered on the host, then uploaded). */
  tensorEmbedding(table: FloatArray, dim: number, ids: Int32Array, device: string): NativeTensor;
  /** dtable[ids[n]] += dy[n], dy a tensor (read back to the host where the table is). */
  tensorEmbeddingBackward(dy: NativeTensor, dim: number, ids: Int32Array, dtable: FloatArray): void;
  /** x W + b on x's device (W and b host arrays, uploaded for the call off the CPU). */
  tensorDense(x: NativeTensor, weight: FloatArray, bias: FloatArray, rows: number, inSize: number, outSize: number): NativeTensor;
  /** Returns dx on x's device; dW, db (host arrays) accumulate. */
  tensorDenseBackward(x: NativeTensor, weight: FloatArray, dy: NativeTensor, rows: number, inSize: number, outSize: number,
    dW: FloatArray, db: FloatArray): NativeTensor;
  /** Returns when the work queued on the device ('cpu' or 'cuda:<index>') is done. */
  synchronize(device: string): void;
  /** The tensor data alive in this process, on every device. */
  tensorMemory(): { tensors: number; bytes: number };
  /** Sum of (pred - target)^2 and its gradient times gradScale. */
  squaredError(pred: FloatArray, target: FloatArray, gradScale: number): { sum: number; grad: FloatArray };
  /** C[M,N] (+)= op(A) op(B), row-major. */
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: FloatArray, B: FloatArray, C: FloatArray, accumulate: boolean): void;
  /** Bytes of external memory V8 counts, the cells' native memory included (for the tests). */
  externalMemory(): number;
  /** Seconds per float32 GEMM C[M,N] = A[M,K] B[K,N] on all threads (for bench/). */
  benchGemm(M: number, N: number, K: number, repeats: number): number;
}

const root = path.join(__dirname, '..', '..');

/** A local build first, then the prebuilt binary for this platform (prebuildify names it <name>.napi.node). */
function candidates(): string[] {
  const prebuilds = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  let prebuilt: string[] = [];
  try {
    prebuilt = fs.readdirSync(prebuilds).filter((f) => f.endsWith('.node')).sort().map((f) => path.join(prebuilds, f));
  } catch {
    prebuilt = [path.join(prebuilds, 'wnlstm.napi.node')];
  }
  return [path.join(root, 'build', 'Release', 'wnlstm.node'), path.join(root, 'build', 'Debug', 'wnlstm.node'), ...prebuilt];
}

function load(): Addon {
  const failures: string[] = [];
  for (const file of candidates()) {
    try {
      return require(file) as Addon;
    } catch (err) {
      failures.push(`  ${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  // In a checkout `npm run build:native` does it; in a project that depends on wnlstm, these do.
  throw wnlstmError('ERR_WNLSTM_LOAD',
    `wnlstm: could not load the native addon. Tried:\n${failures.join('\n')}\n` +
    'Build it from your project with `npm rebuild wnlstm`, or, where npm does not run install scripts, with\n' +
    `  node ${JSON.stringify(path.join(root, 'scripts', 'build-native.js'))} --force\n` +
    '(it needs CMake or python3 and make, and a C++17 compiler).');
}

export const addon: Addon = load();
