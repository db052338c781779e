// Ordering of async calls on one object (a cell, a session, a stack, a model), in one place.
import { wnlstmError } from './errors';

/** A copy of a typed array, for an input that is read after an await (the caller may reuse its buffer);
 * anything else as it is, for the checks that follow to reject. */
export function snapshot<T>(a: T): T {
  return (a instanceof Float32Array || a instanceof Float64Array || a instanceof Int32Array ? a.slice() : a) as T;
}

/** Runs async calls one after another, each after the earlier ones have settled (whatever their
 * outcome). A call made while none is pending starts at once on its arguments as given (the callee
 * takes them before its first await); one that must wait works on snapshots of them made now. */
export class CallQueue {
  #tail: Promise<unknown> = Promise.resolve();
  #pending = 0;

  /** Calls issued and not yet settled. */
  get pending(): number { return this.#pending; }
  /** Resolves when every call issued so far has settled. */
  get settled(): Promise<unknown> { return this.#tail; }

  run<A extends unknown[], R>(args: A, call: (args: A) => Promise<R>): Promise<R> {
    let started: Promise<R>;
    if (this.#pending === 0) {
      started = call(args);
    } else {
      const copies = args.map(snapshot) as A;
      started = this.#tail.then(() => call(copies));
    }
    this.#pending++;
    const settled = started.finally(() => { this.#pending--; });
    this.#tail = settled.catch(() => undefined);
    return settled;
  }
}

/** One async call at a time, for objects whose call keeps state for the next (a forward's dropout masks
 * for its backward): a call, sync or async, while one is in flight throws ERR_WNLSTM_BUSY. */
export class Exclusive {
  #busy = false;
  constructor(readonly what: string) {}

  /** Throws ERR_WNLSTM_BUSY while an async call is in flight. */
  check(): void {
    if (this.#busy) throw wnlstmError('ERR_WNLSTM_BUSY', `an async call on this ${this.what} is in flight: await it first`);
  }

  async run<R>(fn: () => Promise<R>): Promise<R> {
    this.check();
    this.#busy = true;
    try {
      return await fn();
    } finally {
      this.#busy = false;
    }
  }
}
