export { WeightNormLSTMCell, LSTMCell, backendInfo } from './cell';
export type {
  Activation, BackendName, BackwardResult, DType, FloatArray, ForwardOptions, ForwardResult, LSTMCellOptions,
  LSTMState, WeightNormLSTMCellOptions,
} from './cell';
export type { BackendInfo } from './native';
export { Random } from './init';
export type { Initializer, Shape } from './init';
export { isWnlstmError } from './errors';
export type { WnlstmError, WnlstmErrorCode } from './errors';
