// Tensors: data that stays in a backend's memory (host memory on the CPU, device memory on CUDA) between
// calls, so that layers on a GPU hand their outputs to each other without a trip through JavaScript.
// Typed arrays stay accepted everywhere; a tensor is read back only when asked (read(), toArray()).
import { addon, FloatArray, NativeTensor } from './native';
import { wnlstmError } from './errors';

export type TensorDType = 'float32' | 'float64';

export interface TensorOptions {
  dtype?: TensorDType;
  /** Where the data lives: 'cpu' (default) or 'cuda'. */
  backend?: 'cpu' | 'cuda';
  /** With backend 'cuda': the device's index (default 0). */
  device?: number;
}

type Nested = number | Nested[];

export class Tensor {
  readonly dtype: TensorDType;
  readonly shape: readonly number[];
  readonly backend: 'cpu' | 'cuda';
  readonly device: number;
  /** Number of elements: the product of the shape. */
  readonly size: number;
  #native: NativeTensor | null;

  /** Use tensor() or zeros(); the addon's results come through Tensor.wrap(). */
  private constructor(native: NativeTensor, shape: readonly number[], dtype: TensorDType, backend: 'cpu' | 'cuda', device: number) {
    this.#native = native;
    this.shape = Object.freeze([...shape]);
    this.size = shape.reduce((a, b) => a * b, 1);
    this.dtype = dtype;
    this.backend = backend;
    this.device = device;
  }

  /** @internal A native tensor the addon made, with its shape. */
  static wrap(native: NativeTensor, shape: readonly number[], like: { dtype: TensorDType; backend: 'cpu' | 'cuda'; device: number }): Tensor {
    return new Tensor(native, shape, like.dtype, like.backend, like.device);
  }

  /** @internal */
  static create(values: FloatArray | null, shape: readonly number[], options: TensorOptions): Tensor {
    const dtype = options.dtype ?? (values instanceof Float64Array ? 'float64' : 'float32');
    if (dtype !== 'float32' && dtype !== 'float64') throw wnlstmError('ERR_WNLSTM_CONFIG', `dtype must be 'float32' or 'float64', got ${String(dtype)}`);
    const backend = options.backend ?? 'cpu';
    if (backend !== 'cpu' && backend !== 'cuda') throw wnlstmError('ERR_WNLSTM_CONFIG', `backend must be 'cpu' or 'cuda', got ${String(backend)}`);
    const device = options.device ?? 0;
    if (!Number.isInteger(device) || device < 0 || (backend === 'cpu' && device !== 0)) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `device must be a device index (0 on the CPU), got ${String(device)}`);
    }
    const size = checkShape(shape);
    const native = new addon.NativeTensor(backend === 'cpu' ? 'cpu' : `cuda:${device}`, dtype, size, values ?? undefined);
    return new Tensor(native, shape, dtype, backend, device);
  }

  /** 'cpu' or 'cuda:<index>'. */
  get deviceName(): string { return this.backend === 'cpu' ? 'cpu' : `cuda:${this.device}`; }

  get disposed(): boolean { return this.#native === null; }

  /** @internal The native tensor, for the addon's calls (throws after dispose()). */
  get native(): NativeTensor {
    if (!this.#native) throw wnlstmError('ERR_WNLSTM_DISPOSED', 'this tensor has been disposed');
    return this.#native;
  }

  /** A copy of the data, flat and row-major (waits for the device). */
  read(): FloatArray {
    return this.native.read();
  }

  /** The data as nested arrays of numbers, one level per dimension (TF.js's arraySync). */
  toArray(): Nested[] {
    const flat = this.read();
    const build = (dim: number, offset: number): Nested[] => {
      const n = this.shape[dim], stride = this.shape.slice(dim + 1).reduce((a, b) => a * b, 1);
      return Array.from({ length: n }, (_, i) => (dim === this.shape.length - 1 ? flat[offset + i] : build(dim + 1, offset + i * stride)));
    };
    return build(0, 0);
  }

  /** Overwrites the whole tensor (values checked: type, length, finite). */
  write(values: FloatArray): void {
    const Expected = this.dtype === 'float64' ? Float64Array : Float32Array;
    if (!(values instanceof Expected)) throw wnlstmError('ERR_WNLSTM_TYPE', `values must be a ${Expected.name} (this tensor is ${this.dtype})`);
    this.native.write(values);
  }

  /** The same data in another shape of as many elements (TF.js's reshape): no copy. The data lives while
   * either tensor does; disposing one leaves the other. */
  reshape(shape: readonly number[]): Tensor {
    const size = checkShape(shape);
    if (size !== this.size) throw wnlstmError('ERR_WNLSTM_SHAPE', `cannot reshape [${this.shape.join(', ')}] (${this.size} elements) to [${shape.join(', ')}] (${size})`);
    return new Tensor(addon.tensorShare(this.native), shape, this.dtype, this.backend, this.device);
  }

  /** Frees the data now (otherwise when the tensor is garbage-collected). */
  dispose(): void {
    this.#native?.dispose();
    this.#native = null;
  }

  [Symbol.dispose](): void { this.dispose(); }
}

function checkShape(shape: unknown): number {
  if (!Array.isArray(shape) || shape.length === 0) throw wnlstmError('ERR_WNLSTM_SHAPE', 'shape must be a non-empty array of positive integers');
  let size = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 1) throw wnlstmError('ERR_WNLSTM_SHAPE', `shape must be positive integers, got [${shape.join(', ')}]`);
    size *= d;
  }
  if (size > 2 ** 31) throw wnlstmError('ERR_WNLSTM_SIZE', `a tensor of ${size} elements exceeds 2^31`);
  return size;
}

/** A tensor holding a copy of `values` (a typed array, or numbers), row-major in `shape`. The dtype is the
 * typed array's, or options.dtype (default float32). */
export function tensor(values: FloatArray | ArrayLike<number>, shape: readonly number[], options: TensorOptions = {}): Tensor {
  if (!ArrayBuffer.isView(values) && !Array.isArray(values)) throw wnlstmError('ERR_WNLSTM_TYPE', 'values must be a typed array or an array of numbers');
  const dtype = options.dtype ?? (values instanceof Float64Array ? 'float64' : 'float32');
  const size = checkShape(shape);
  if (values.length !== size) throw wnlstmError('ERR_WNLSTM_SHAPE', `${values.length} values for shape [${shape.join(', ')}] (${size} elements)`);
  const typed = dtype === 'float64' ? Float64Array.from(values as ArrayLike<number>) : Float32Array.from(values as ArrayLike<number>);
  return Tensor.create(typed, shape, { ...options, dtype });
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
  return Tensor.create(null, shape, options);
}

/** The tensors alive now in this process, on every device, and their bytes (TF.js's tf.memory()): a count
 * that keeps growing means tensors that are never disposed. */
export function tensorMemory(): { tensors: number; bytes: number } {
  return addon.tensorMemory();
}

/** Waits until the work queued on a device is done (torch.cuda.synchronize()). Calls on CUDA tensors return
 * once their work is queued, and read() waits by itself: this is for timing. A no-op on the CPU. */
export function synchronize(options: Pick<TensorOptions, 'backend' | 'device'> = {}): void {
  const backend = options.backend ?? 'cpu', device = options.device ?? 0;
  if (backend !== 'cpu' && backend !== 'cuda') throw wnlstmError('ERR_WNLSTM_CONFIG', `backend must be 'cpu' or 'cuda', got ${String(backend)}`);
  if (!Number.isInteger(device) || device < 0) throw wnlstmError('ERR_WNLSTM_CONFIG', `device must be a device index, got ${String(device)}`);
  addon.synchronize(backend === 'cpu' ? 'cpu' : `cuda:${device}`);
}
