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
          s: { type: 'bytes', id: 4 }, ints: { rule: 'repeated', type: 'int64', id: 8 }, type: { type: 'int32', id: 20 } } },
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
const ATTR_INT = 2, ATTR_STRING = 3, ATTR_INTS = 7; // AttributeProto.AttributeType
let modelType: protobuf.Type | null = null;

/** What the exporter needs of a SequenceModel. */
export interface Exportable {
  config: { task: string; units: number; layers: number; outputs: number; bidirectional: boolean; input: { vocabSize: number; embeddingSize?: number } | { features: number } };
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
  const { task, units: H, outputs: O, input, layers } = model.config;
  const D = model.config.bidirectional ? 2 : 1;
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
  const shapes = new Set<string>();
  const shape = (name: string, dims: number[]) => (shapes.has(name) ? name : (shapes.add(name), tensor(name, [dims.length], BigInt64Array.from(dims, BigInt))));
  let last = '';
  for (let l = 0; l < layers; l++) {
    const cells = model.cells.slice(l * D, (l + 1) * D), I = cells[0].inputSize;
    const W = new Float32Array(D * 4 * H * I), R = new Float32Array(D * 4 * H * H), B = new Float32Array(D * 8 * H);
    cells.forEach((cell, d) => { // direction d: ONNX stacks forward, then reverse
      const t = toPyTorch(cell, l);
      W.set(onnxGates(t[`weight_ih_l${l}`], H, I), d * 4 * H * I);
      R.set(onnxGates(t[`weight_hh_l${l}`], H, H), d * 4 * H * H);
      B.set(onnxGates(t[`bias_ih_l${l}`], H, 1), d * 8 * H);
      B.set(onnxGates(t[`bias_hh_l${l}`], H, 1), d * 8 * H + 4 * H);
    });
    const attributes: object[] = [{ name: 'hidden_size', type: ATTR_INT, i: H }];
    if (D === 2) attributes.push({ name: 'direction', type: ATTR_STRING, s: new TextEncoder().encode('bidirectional') });
    op('LSTM', [x, tensor(`lstm_${l}/W`, [D, 4 * H, I], W), tensor(`lstm_${l}/R`, [D, 4 * H, H], R), tensor(`lstm_${l}/B`, [D, 8 * H], B), 'lengths'],
      [`lstm_${l}/Y`, `lstm_${l}/Y_h`], attributes);
    if (D === 1) {
      x = op('Squeeze', [`lstm_${l}/Y`, squeezeAxis(1)], [`lstm_${l}/outputs`]); // [T, 1, B, H] -> [T, B, H]
    } else { // [T, 2, B, H] -> [T, B, 2H]: both directions side by side, as the layer outputs them
      const moved = op('Transpose', [`lstm_${l}/Y`], [`lstm_${l}/Y_t`], [{ name: 'perm', type: ATTR_INTS, ints: [0, 2, 1, 3] }]);
      x = op('Reshape', [moved, shape('shape_steps_batch', [0, 0, -1])], [`lstm_${l}/outputs`]);
    }
    last = `lstm_${l}/Y_h`;
  }
  const dense = model.blockValues('dense');
  const kernel = tensor('dense/kernel', [H * D, O], Float32Array.from(dense.subarray(0, H * D * O)));
  const bias = tensor('dense/bias', [O], Float32Array.from(dense.subarray(H * D * O)));
  let y: string;
  if (perStep) {
    y = op('Add', [op('MatMul', [x, kernel], ['head/matmul']), bias], [classes ? 'logits' : 'output']);
  } else {
    // [D, B, H] -> [B, D*H]: each row's final h (forward: its last valid step; backward: its first)
    const h = D === 1 ? op('Squeeze', [last, squeezeAxis(0)], ['last'])
      : op('Reshape', [op('Transpose', [last], ['last_t'], [{ name: 'perm', type: ATTR_INTS, ints: [1, 0, 2] }]), shape('shape_batch', [0, -1])], ['last']);
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
