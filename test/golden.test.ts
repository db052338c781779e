// SPEC section 1: TF's own test values (every variable 0.5 via the initializer, one step), rtol 1e-5.
import t from 'tap';
import { LSTMCell, WeightNormLSTMCell } from '../lib/index';
import { assertClose } from './helpers';

const cases = [
  { norm: false, usePeepholes: false, c: [0.65937078, 0.74983585], h: [0.44923624, 0.49362513] },
  { norm: true, usePeepholes: true, c: [0.50125383, 0.59587258], h: [0.35041603, 0.40873795] },
];

for (const dtype of ['float32', 'float64'] as const) {
  const Array = dtype === 'float32' ? Float32Array : Float64Array;
  for (const g of cases) {
    t.test(`${dtype} norm=${g.norm} peepholes=${g.usePeepholes}`, async (t) => {
      const cell = new WeightNormLSTMCell(2, { inputSize: 2, norm: g.norm, usePeepholes: g.usePeepholes, initializer: 0.5, dtype });
      const state = cell.step(new Array([1, 1]), { c: new Array([0, 0.1]), h: new Array([0.2, 0.3]) });
      assertClose(t, state.c, g.c, { rtol: 1e-5, atol: 0 }, 'c matches TF');
      assertClose(t, state.h, g.h, { rtol: 1e-5, atol: 0 }, 'h matches TF');
      // forward() over one step gives the same state, and h is the output.
      const f = cell.forward(new Array([1, 1]), { batchSize: 1, initialState: { c: new Array([0, 0.1]), h: new Array([0.2, 0.3]) } });
      assertClose(t, f.outputs, g.h, { rtol: 1e-5, atol: 0 }, 'forward output matches TF');
    });
  }
}

t.test('LSTMCell equals WeightNormLSTMCell with norm: false (TF golden row 1)', async (t) => {
  const cell = new LSTMCell(2, { inputSize: 2, initializer: 0.5 });
  t.equal(cell.norm, false);
  const state = cell.step(new Float32Array([1, 1]), { c: new Float32Array([0, 0.1]), h: new Float32Array([0.2, 0.3]) });
  assertClose(t, state.c, cases[0].c, { rtol: 1e-5, atol: 0 }, 'c matches TF');
  assertClose(t, state.h, cases[0].h, { rtol: 1e-5, atol: 0 }, 'h matches TF');
});
