// ONNX export (lib/model/onnx.ts): the exported file, run by onnxruntime-node, gives what predict() gives,
// for every task, with weight norm and without, one and two layers, padded batches.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Random, SequenceModel } from '../lib/index';
import type { SequenceModelConfig } from '../lib/index';
import { assertClose } from './helpers';

const lengths = [4, 2, 5, 1];

for (const [task, outputs] of [['classification', 3], ['regression', 2], ['tagging', 3], ['forecasting', 2], ['next-token', undefined]] as const) {
  t.test(`${task}: onnxruntime runs the export = predict()`, async (t) => {
    for (const [norm, layers, ids, bidirectional] of [[true, 2, true, false], [false, 1, true, false], [true, 1, false, false], [false, 2, false, false],
      [true, 2, true, true], [false, 1, false, true]] as const) {
      if (task === 'next-token' && (!ids || bidirectional)) continue;
      const rng = new Random(layers + (norm ? 10 : 0));
      const x = lengths.map((n) => Array.from({ length: n }, () => (ids ? Math.floor(rng.uniform() * 7) : [rng.uniform() - 0.5, rng.uniform() - 0.5])));
      const y = x.map((s) => (task === 'classification' ? s.length % 3 : task === 'regression' ? [s.length, 1] : task === 'tagging' ? s.map((_, k) => k % 3)
        : s.map((_, k) => [k, -k])));
      const config: SequenceModelConfig = { input: ids ? { vocabSize: 7, embeddingSize: 4 } : { features: 2 }, task, outputs, units: 6, layers, norm, bidirectional, seed: 5 };
      const model = new SequenceModel(config);
      model.fit(x as never, (task === 'next-token' ? undefined : y) as never, { epochs: 3, batchSize: 2, learningRate: 0.05 }); // weights off their init
      const want = model.predict(x as never);
      const T = Math.max(...lengths), B = lengths.length;
      const input = ids ? new ort.Tensor('int32', new Int32Array(T * B), [T, B]) : new ort.Tensor('float32', new Float32Array(T * B * 2), [T, B, 2]);
      x.forEach((s, b) => s.forEach((v, k) => {
        if (ids) (input.data as Int32Array)[k * B + b] = v as number;
        else (input.data as Float32Array).set(v as number[], (k * B + b) * 2);
      }));
      const session = await ort.InferenceSession.create(model.toOnnx());
      const { output } = await session.run({ input, lengths: new ort.Tensor('int32', Int32Array.from(lengths), [B]) });
      const O = model.config.outputs, perStep = task !== 'classification' && task !== 'regression';
      const got: number[] = [];
      want.forEach((p, b) => {
        if (perStep) (p as number[][]).forEach((_, k) => { for (let o = 0; o < O; o++) got.push((output.data as Float32Array)[(k * B + b) * O + o]); });
        else for (let o = 0; o < O; o++) got.push((output.data as Float32Array)[b * O + o]);
      });
      const name = `${norm ? 'weight norm' : 'plain'}, ${layers}${bidirectional ? ' bidirectional' : ''} layer${layers > 1 ? 's' : ''}, ${ids ? 'ids' : 'features'}`;
      t.same(output.dims, perStep ? [T, B, O] : [B, O], `${name}: the output's shape`);
      assertClose(t, got, (want as unknown[]).flat(2) as number[], { rtol: 1e-5, atol: 1e-6 }, `${name}: onnxruntime = predict() (float32)`);
      model.dispose();
    }
  });
}

t.test('saveOnnx writes toOnnx(); a float64 model exports float32 weights', async (t) => {
  const model = new SequenceModel({ input: { features: 3 }, task: 'regression', units: 4, dtype: 'float64' });
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-onnx-')), 'model.onnx');
  model.saveOnnx(file);
  t.same(new Uint8Array(fs.readFileSync(file)), model.toOnnx(), 'the same bytes');
  const session = await ort.InferenceSession.create(file);
  t.same(session.inputNames, ['input', 'lengths'], 'inputs: input and lengths');
  t.same(session.outputNames, ['output'], 'output: output');
  const x = [[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]];
  const { output } = await session.run({ input: new ort.Tensor('float32', Float32Array.from(x[0].flat()), [2, 1, 3]), lengths: new ort.Tensor('int32', Int32Array.of(2), [1]) });
  assertClose(t, Array.from(output.data as Float32Array), (model.predict(x) as number[][])[0], { rtol: 1e-5, atol: 1e-6 }, 'the same prediction');
  model.dispose();
  t.throws(() => model.toOnnx(), { code: 'ERR_WNLSTM_DISPOSED' }, 'a disposed model');
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
});
