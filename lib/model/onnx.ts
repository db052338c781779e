// ONNX export of a SequenceModel, for serving it elsewhere (onnxruntime, TensorRT, ...): the effective
// (normalised) weights as standard ONNX LSTM nodes, the embedding as a Gather and the head as MatMul/Gemm
// (+ Softmax for classes). Encoded by protobufjs from the subset of onnx.proto written below (field
// numbers from the ONNX specification). Inference only: dropout is off, as in predict().
import * as protobuf from 'protobufjs';
import { toPyTorch } from '../nn/interop';
import type { LSTMCell, WeightNormLSTMCell } from '../nn/cell';
import type { FloatArray } from '../core/native';

// The messages and fields this exporter writes (onnx.proto, IR version 8).
const SCHEMA = {
  nested: {
    onnx: {
      nested: {
        ModelProto: { fields: { irVersion: { type: 'int64', id: 1 }, producerName: { type: 'string', id: 2 }, producerVersion: { type: 'string', id: 3 },
          docString: { type: 'string', id: 6 }, graph: { type: 'GraphProto', id: 7 }, opsetImport: { rule: 'repeated', type: 'OperatorSetIdProto', id: 8 } } },
        OperatorSetIdProto: { fields: { domain: { type: 'string', id: 1 }, version: { type: 'int64', id: 2 } } },
        GraphProto: { fields: { node: { rule: 'repeated', type: 'NodeProto', id: 1 }, name: { type: 'string', id: 2 },
          initializer: { rule: 'repeated', type: 'TensorProto', id: 5 }, docString: { type: 'string', id: 10 },
          input: { rule: 'repeated', type: 'ValueInfoProto', id: 11 }, output: { rule: 'repeated', type: 'ValueInfoProto', id: 12 } } },
        NodeProto: { fields: { input: { rule: 'repeated', type: 'string', id: 1 }, output: { rule: 'repeated', type: 'string', id: 2 },
          name: { type: 'string', id: 3 }, opType: { type: 'string', id: 4 }, attribute: { rule: 'repeated', type: 'AttributeProto', id: 5 } } },
        AttributeProto: { fields: { name: { type: 'string', id: 1 }, f: { type: 'float', id: 2 }, i: { type: 'int64', id: 3 },
          type: { type: 'int32', id: 20 } } },
        TensorProto: { fields: { dims: { rule: 'repeated', type: 'int64', id: 1 }, dataType: { type: 'int32', id: 2 },
          name: { type: 'string', id: 8 }, rawData: { type: 'bytes', id: 9 } } },
        ValueInfoProto: { fields: { name: { type: 'string', id: 1 }, type: { type: 'TypeProto', id: 2 } } },
        TypeProto: { fields: { tensorType: { type: 'TypeTensor', id: 1 } } },
        TypeTensor: { fields: { elemType: { type: 'int32', id: 1 }, shape: { type: 'TensorShapeProto', id: 2 } } },
        TensorShapeProto: { fields: { dim: { rule: 'repeated', type: 'Dimension', id: 1 } } },
        Dimension: { fields: { dimValue: { type: 'int64', id: 1 }, dimParam: { type: 'string', id: 2 } } },
      },
    },
  },
};
const FLOAT = 1, INT32 = 6, INT64 = 7; // TensorProto.DataType
const ATTR_INT = 2; // AttributeProto.AttributeType
let modelType: protobuf.Type | null = null;

/** What the exporter needs of a SequenceModel. */
export interface Exportable {
  config: { task: string; units: number; layers: number; outputs: number; input: { vocabSize: number; embeddingSize?: number } | { features: number } };
  cells: (LSTMCell | WeightNormLSTMCell)[];
  blockValues(name: string): FloatArray;
}

/** ONNX's gate order is i, o, f, c; PyTorch's (what toPyTorch gives) i, f, g, o. */
const TORCH_GATE_OF_ONNX = [0, 3, 1, 2];

function onnxGates(torch: Float32Array, H: number, width: number): Float32Array {
  const out = new Float32Array(torch.length);
  for (let k = 0; k < 4; k++) out.set(torch.subarray(TORCH_GATE_OF_ONNX[k] * H * width, (TORCH_GATE_OF_ONNX[k] + 1) * H * width), k * H * width);
  return out;
}

export function exportOnnx(model: Exportable, producerVersion: string): Uint8Array {
  const { task, units: H, outputs: O, input } = model.config;
  const ids = 'vocabSize' in input, perStep = task !== 'classification' && task !== 'regression';
  const classes = task === 'classification' || task === 'tagging' || task === 'next-token';
  const initializer: object[] = [], node: object[] = [];
  const tensor = (name: string, dims: number[], values: Float32Array | Int32Array | BigInt64Array) => {
    const dataType = values instanceof Float32Array ? FLOAT : values instanceof Int32Array ? INT32 : INT64;
    initializer.push({ name, dims, dataType, rawData: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) });
    return name;
  };
  const op = (opType: string, inputs: string[], outputs: string[], attribute: object[] = []) => {
    node.push({ opType, input: inputs, output: outputs, name: `${opType}_${node.length}`, attribute });
    return outputs[0];
  };
  const dim = (d: number | string) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d });
  const value = (name: string, elemType: number, dims: (number | string)[]) => ({ name, type: { tensorType: { elemType, shape: { dim: dims.map(dim) } } } });

  let x = 'input';
  const inputs = [ids ? value('input', INT32, ['steps', 'batch']) : value('input', FLOAT, ['steps', 'batch', (input as { features: number }).features]),
    value('lengths', INT32, ['batch'])];
  if (ids) {
    const E = input.embeddingSize ?? 32;
    x = op('Gather', [tensor('embedding', [input.vocabSize, E], Float32Array.from(model.blockValues('embedding'))), 'input'], ['embedded']);
  }
  const axes = new Map<number, string>();
  const squeezeAxis = (axis: number) => axes.get(axis) ?? axes.set(axis, tensor(`axis_${axis}`, [1], BigInt64Array.of(BigInt(axis)))).get(axis)!;
  let last = '';
  model.cells.forEach((cell, l) => {
    const t = toPyTorch(cell, l), I = cell.inputSize;
    const W = tensor(`lstm_${l}/W`, [1, 4 * H, I], onnxGates(t[`weight_ih_l${l}`], H, I));
    const R = tensor(`lstm_${l}/R`, [1, 4 * H, H], onnxGates(t[`weight_hh_l${l}`], H, H));
    const B = new Float32Array(8 * H);
    B.set(onnxGates(t[`bias_ih_l${l}`], H, 1));
    B.set(onnxGates(t[`bias_hh_l${l}`], H, 1), 4 * H);
    op('LSTM', [x, W, R, tensor(`lstm_${l}/B`, [1, 8 * H], B), 'lengths'], [`lstm_${l}/Y`, `lstm_${l}/Y_h`],
      [{ name: 'hidden_size', type: ATTR_INT, i: H }]);
    x = op('Squeeze', [`lstm_${l}/Y`, squeezeAxis(1)], [`lstm_${l}/outputs`]); // [T, 1, B, H] -> [T, B, H]
    last = `lstm_${l}/Y_h`;
  });
  const dense = model.blockValues('dense');
  const kernel = tensor('dense/kernel', [H, O], Float32Array.from(dense.subarray(0, H * O)));
  const bias = tensor('dense/bias', [O], Float32Array.from(dense.subarray(H * O)));
  let y: string;
  if (perStep) {
    y = op('Add', [op('MatMul', [x, kernel], ['head/matmul']), bias], [classes ? 'logits' : 'output']);
  } else {
    const h = op('Squeeze', [last, squeezeAxis(0)], ['last']); // [1, B, H] -> [B, H]: each row's last valid step
    y = op('Gemm', [h, kernel, bias], [classes ? 'logits' : 'output']);
  }
  if (classes) y = op('Softmax', [y], ['output'], [{ name: 'axis', type: ATTR_INT, i: -1 }]);
  const graph = {
    name: 'wnlstm', node, initializer, input: inputs,
    output: [value(y, FLOAT, perStep ? ['steps', 'batch', O] : ['batch', O])],
    docString: `${task}: input ${ids ? 'token ids [steps, batch] (int32)' : 'features [steps, batch, features]'}, lengths [batch]; output ${classes ? 'class probabilities' : 'values'}`,
  };
  modelType ??= protobuf.Root.fromJSON(SCHEMA).lookupType('onnx.ModelProto');
  const message = modelType.fromObject({ irVersion: 8, producerName: 'wnlstm', producerVersion, graph, opsetImport: [{ domain: '', version: 17 }] });
  return modelType.encode(message).finish();
}
