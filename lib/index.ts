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
export { SGD, Adam, AdamW, RMSProp, Adagrad, Optimizer, ArrayParams, globalNorm, stepDecay, exponentialDecay } from './optim';
export type { ParamBlock, HasParameters, OptimizerOptions, OptimizerState, AdamOptions } from './optim';
export { Dense, Embedding, StackedLSTM, dropout } from './layers';
export { LanguageModel, batchify, window } from './lm';
export type { LMConfig } from './lm';
export { loadBrown, loadTextFile, splitDocuments, tokenize, Vocabulary } from './corpus';
export type { Document, Level } from './corpus';
export { train, trainAsync, readCheckpoint, DEFAULTS as TRAIN_DEFAULTS } from './train';
export type { TrainOptions, TrainResult, ArmResult, CurvePoint, Progress } from './train';
export { saveCheckpoint, loadCheckpoint, saveCheckpointAsync, loadCheckpointAsync } from './checkpoint';
export type { Checkpoint } from './checkpoint';
export { StreamingSession, LanguageModelSession } from './session';
export { toPyTorch, fromPyTorch, toTensorFlow, fromTensorFlow } from './interop';
