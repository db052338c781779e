export { WeightNormLSTMCell, LSTMCell, backendInfo } from './nn/cell';
export type {
  Activation, BackendName, BackwardResult, DType, FloatArray, ForwardOptions, ForwardResult, LSTMCellOptions,
  LSTMState, WeightNormLSTMCellOptions, TensorState, TensorForwardOptions, TensorForwardResult, TensorBackwardResult,
} from './nn/cell';
export type { BackendInfo } from './core/native';
export { Tensor, synchronize, tensor, tensorMemory, zeros } from './core/tensor';
export type { TensorDType, TensorOptions } from './core/tensor';
export { Random } from './core/init';
export type { Initializer, Shape } from './core/init';
export { isWnlstmError } from './core/errors';
export type { WnlstmError, WnlstmErrorCode } from './core/errors';
export { SGD, Adam, AdamW, RMSProp, Adagrad, Optimizer, ArrayParams, globalNorm, stepDecay, exponentialDecay } from './optim';
export type { ParamBlock, HasParameters, OptimizerOptions, OptimizerState, AdamOptions } from './optim';
export { Dense, Embedding, StackedLSTM, dropout } from './nn/layers';
export { softmaxCrossEntropy, meanSquaredError } from './nn/losses';
export type { LossResult } from './nn/losses';
export { LanguageModel, batchify, window } from './lm/model';
export type { LMConfig } from './lm/model';
export { loadBrown, loadTextFile, splitDocuments, tokenize, Vocabulary } from './lm/corpus';
export type { Document, Level } from './lm/corpus';
export { train, trainAsync, readCheckpoint, DEFAULTS as TRAIN_DEFAULTS } from './lm/train';
export type { TrainOptions, TrainResult, ArmResult, ArmSummary, CurvePoint, Progress, Spread, Summary } from './lm/train';
export { saveCheckpoint, loadCheckpoint, saveCheckpointAsync, loadCheckpointAsync } from './core/checkpoint';
export type { Checkpoint } from './core/checkpoint';
export { StreamingSession, LanguageModelSession } from './nn/session';
export { toPyTorch, fromPyTorch, toTensorFlow, fromTensorFlow } from './nn/interop';
export { SequenceModel } from './model/sequence-model';
export type { SequenceModelConfig, FitOptions, History, Logs, Task, Sequence, Targets } from './model/sequence-model';
export { optimizerByName } from './optim';
export type { OptimizerName } from './optim';
