// Every error wnlstm throws, from TypeScript or from the addon, is an Error (TypeError or RangeError
// where that fits) with one of these codes, like Node's own ERR_* errors.
export type WnlstmErrorCode =
  | 'ERR_WNLSTM_CONFIG' // bad constructor option
  | 'ERR_WNLSTM_TYPE' // wrong type of argument (e.g. not a Float32Array)
  | 'ERR_WNLSTM_SHAPE' // wrong length or shape
  | 'ERR_WNLSTM_NOT_FINITE' // NaN or Infinity in an input
  | 'ERR_WNLSTM_RANGE' // value out of range (e.g. a sequence length)
  | 'ERR_WNLSTM_SIZE' // sizes too large to be meant
  | 'ERR_WNLSTM_UNKNOWN_WEIGHT' // setWeights() with a name the cell does not have
  | 'ERR_WNLSTM_DISPOSED' // use after dispose()
  | 'ERR_WNLSTM_BUSY' // a sync call on a cell while one of its async calls is in flight
  | 'ERR_WNLSTM_NO_FORWARD' // backward() without a training forward()
  | 'ERR_WNLSTM_BACKEND_UNAVAILABLE' // backend 'cuda' asked for but not usable
  | 'ERR_WNLSTM_DEVICE' // a tensor on another device than the object it is given to
  | 'ERR_WNLSTM_OUT_OF_MEMORY'
  | 'ERR_WNLSTM_CUDA' // a CUDA runtime call or kernel launch failed (the message names the call and error)
  | 'ERR_WNLSTM_LOAD' // the native addon could not be loaded
  | 'ERR_WNLSTM_CHECKPOINT' // a checkpoint file that cannot be read, or is truncated or corrupted
  | 'ERR_WNLSTM_NATIVE'; // unexpected internal error

export interface WnlstmError extends Error {
  code: WnlstmErrorCode;
}

export function wnlstmError(code: WnlstmErrorCode, message: string): WnlstmError {
  const Kind = code === 'ERR_WNLSTM_TYPE' ? TypeError
    : code === 'ERR_WNLSTM_SHAPE' || code === 'ERR_WNLSTM_RANGE' ? RangeError
    : Error;
  return Object.assign(new Kind(message), { code });
}

export function isWnlstmError(err: unknown): err is WnlstmError {
  return err instanceof Error && typeof (err as WnlstmError).code === 'string' &&
    (err as WnlstmError).code.startsWith('ERR_WNLSTM_');
}
