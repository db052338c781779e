// Streaming inference: a session holds the recurrent state of its streams and steps them one token (or
// one frame) at a time. Sessions share the model's cells: any number of them serve one model without
// copying weights, and they never disturb a training forward's saved activations.
import type { FloatArray, LSTMCell, LSTMState, TensorState, WeightNormLSTMCell } from './cell';
import { wnlstmError } from '../core/errors';
import { Tensor, tensor } from '../core/tensor';
import { CallQueue } from '../core/serial';
import { StackedLSTM } from './layers';
import type { LanguageModel } from '../lm/model';

type AnyCell = LSTMCell | WeightNormLSTMCell;

export class StreamingSession {
  readonly cells: AnyCell[];
  #state: LSTMState[];
  /** After a step on tensors: the state as tensors on the cells' device (it stays there between steps). */
  #tensorState: TensorState[] | null = null;
  readonly #queue = new CallQueue();

  /** `batchSize` streams (rows) advance together at each step. */
  constructor(model: AnyCell | AnyCell[] | StackedLSTM, readonly batchSize = 1) {
    this.cells = model instanceof StackedLSTM ? model.cells : Array.isArray(model) ? model : [model];
    if (this.cells.length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', 'a session needs at least one cell');
    if (!Number.isInteger(batchSize) || batchSize < 1) throw wnlstmError('ERR_WNLSTM_RANGE', 'batchSize must be a positive integer');
    this.#state = this.cells.map((c) => c.zeroState(batchSize));
  }

  /** The state of every layer (copies; read back from the device after steps on tensors, which keep it there). */
  get state(): LSTMState[] {
    return this.#tensorState ? this.#tensorState.map((s) => ({ c: s.c.read(), h: s.h.read() }))
      : this.#state.map((s) => ({ c: s.c.slice(), h: s.h.slice() }));
  }

  /** Zeroes the state of one stream, or of all. */
  reset(stream?: number): void {
    this.#idle();
    this.#arrays();
    if (stream === undefined) { this.#state = this.cells.map((c) => c.zeroState(this.batchSize)); return; }
    if (!Number.isInteger(stream) || stream < 0 || stream >= this.batchSize) throw wnlstmError('ERR_WNLSTM_RANGE', `no stream ${stream}`);
    this.cells.forEach((cell, l) => {
      this.#state[l].c.fill(0, stream * cell.numUnits, (stream + 1) * cell.numUnits);
      this.#state[l].h.fill(0, stream * cell.outputSize, (stream + 1) * cell.outputSize);
    });
  }

  /** One step for every stream: x [batchSize, inputSize] -> the last layer's h [batchSize, outputSize]. With a
   * tensor on the cells' device, the state stays there between steps and h comes back as a tensor there (the
   * caller's to dispose). */
  step(x: Tensor): Tensor;
  step(x: FloatArray): FloatArray;
  step(x: FloatArray | Tensor): FloatArray | Tensor {
    this.#idle();
    if (x instanceof Tensor) return this.#stepTensor(x);
    this.#arrays();
    let input = x;
    const next = this.cells.map((cell, l) => { const s = cell.step(input, this.#state[l]); input = s.h; return s; });
    this.#state = next;
    return input;
  }

  /** step() off the main thread. Steps issued while others are in flight queue and run in order, each on
   * x as it was when called; the state advances as each one resolves (a failed step leaves it). */
  stepAsync(x: FloatArray): Promise<FloatArray> {
    this.#arrays();
    return this.#queue.run([x], async ([input]) => {
      let h = input;
      const next: LSTMState[] = [];
      for (let l = 0; l < this.cells.length; l++) {
        const s = await this.cells[l].stepAsync(h, this.#state[l]);
        next.push(s);
        h = s.h;
      }
      this.#state = next;
      return h;
    });
  }

  /** A step of every layer on tensors; the state moves on only when every layer has run (a failure leaves it). */
  #stepTensor(x: Tensor): Tensor {
    const B = this.batchSize, first = this.cells[0], I = first.inputSize;
    if (x.shape.length !== 2 || x.shape[0] !== B || x.shape[1] !== I) {
      throw wnlstmError('ERR_WNLSTM_SHAPE', `x must be a tensor [${B}, ${I}], got [${x.shape.join(', ')}]`);
    }
    if (x.dtype !== first.dtype) throw wnlstmError('ERR_WNLSTM_TYPE', `x is ${x.dtype}, the cells are ${first.dtype}`);
    const device = (cell: AnyCell) => (cell.backend === 'cpu' ? 'cpu' : `cuda:${cell.device}`);
    if (x.deviceName !== device(first)) throw wnlstmError('ERR_WNLSTM_DEVICE', `x is on ${x.deviceName}, the first cell on ${device(first)}`);
    // The state moves to each cell's device at the first step on tensors.
    this.#tensorState ??= this.#state.map((s, l) => {
      const { dtype, backend, device: index } = this.cells[l];
      return { c: tensor(s.c, [B, s.c.length / B], { dtype, backend, device: index }), h: tensor(s.h, [B, s.h.length / B], { dtype, backend, device: index }) };
    });
    const states = this.#tensorState, next: TensorState[] = [];
    let input = x.reshape([1, B, I]);
    try {
      this.cells.forEach((cell, l) => {
        const r = cell.forward(input, { initialState: states[l], training: false });
        input.dispose(); // the reshaped handle of x (x itself stays), or the layer below's output
        next.push(r.state);
        input = r.outputs;
      });
    } catch (e) {
      input.dispose();
      for (const s of next) s.c.dispose(), s.h.dispose();
      throw e;
    }
    for (const s of states) s.c.dispose(), s.h.dispose();
    this.#tensorState = next;
    const h = input.reshape([B, input.shape[2]]);
    input.dispose();
    return h;
  }

  /** The state as arrays (read back from the device after steps on tensors). */
  #arrays(): LSTMState[] {
    if (this.#tensorState) {
      this.#state = this.#tensorState.map((s) => ({ c: s.c.read(), h: s.h.read() }));
      for (const s of this.#tensorState) s.c.dispose(), s.h.dispose();
      this.#tensorState = null;
    }
    return this.#state;
  }

  #idle(): void {
    if (this.#queue.pending > 0) throw wnlstmError('ERR_WNLSTM_BUSY', 'this session has async steps in flight: await them first');
  }
}

/** A language model's streams: feed token ids, get the next-token distribution. */
export class LanguageModelSession {
  readonly #lm: LanguageModel;
  readonly #session: StreamingSession;
  constructor(lm: LanguageModel, batchSize = 1) {
    this.#lm = lm;
    this.#session = new StreamingSession(lm.stack, batchSize);
  }
  get batchSize(): number { return this.#session.batchSize; }
  reset(stream?: number): void { this.#session.reset(stream); }

  /** One token per stream (ids [batchSize]) -> next-token probabilities [batchSize, vocabSize]. */
  next(ids: ArrayLike<number>): Float32Array { return this.#softmax(this.#session.step(this.#embed(ids))); }
  async nextAsync(ids: ArrayLike<number>): Promise<Float32Array> { return this.#softmax(await this.#session.stepAsync(this.#embed(ids))); }

  #embed(ids: ArrayLike<number>): FloatArray {
    if (ids.length !== this.batchSize) throw wnlstmError('ERR_WNLSTM_SHAPE', `need ${this.batchSize} token ids, got ${ids.length}`);
    return this.#lm.embed(Int32Array.from(ids));
  }

  #softmax(h: FloatArray): Float32Array {
    const V = this.#lm.config.vocabSize, B = this.batchSize;
    const logits = this.#lm.logits(h, B), p = new Float32Array(B * V);
    for (let b = 0; b < B; b++) {
      let max = -Infinity, sum = 0;
      for (let v = 0; v < V; v++) max = Math.max(max, logits[b * V + v]);
      for (let v = 0; v < V; v++) sum += (p[b * V + v] = Math.exp(logits[b * V + v] - max));
      for (let v = 0; v < V; v++) p[b * V + v] /= sum;
    }
    return p;
  }
}
