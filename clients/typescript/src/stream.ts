// A server stream that survives broker restarts, as an async iterator: it
// buffers messages (pausing the call past a high-water mark), and when the
// call ends without the stream being over (the broker shut down, the network
// broke) it opens a new one with exponential backoff, for as long as it takes.
// Errors that retrying cannot fix (not found, permission denied, an expired
// cursor...) are thrown from next() and end it. It never ends silently: only
// close(), a final message (say, DELETED) or a thrown error end it.

import * as grpc from "@grpc/grpc-js";

import { toError } from "./errors.js";

// Codes after which a stream is opened again: the server went away (a
// restart, the network) or failed in passing, rather than refusing it.
const RECONNECT_CODES = new Set<number>([
  grpc.status.UNAVAILABLE,
  grpc.status.INTERNAL,
  grpc.status.UNKNOWN,
  grpc.status.ABORTED,
  grpc.status.CANCELLED,
]);
// Messages buffered per call before it is paused until the consumer catches up.
const HIGH_WATER = 64;
// Reconnect backoff: doubles from the first to the last; reset by a message.
export const BACKOFF_FIRST_MS = 100;
export const BACKOFF_MAX_MS = 5_000;

interface Attempt<M> {
  call: grpc.ClientReadableStream<M>;
  queue: M[];
  ended: boolean;
  error?: grpc.ServiceError;
}

export abstract class ResilientStream<M, T> implements AsyncIterableIterator<T> {
  private attempt?: Attempt<M>;
  private isClosed = false;
  private delayMs = BACKOFF_FIRST_MS;
  private wake?: () => void;
  private tail: Promise<unknown> = Promise.resolve();
  private reconnects = 0;

  /** Opens a call (for the next attempt, e.g. resuming after the last cursor). */
  protected abstract open(): grpc.ClientReadableStream<M>;
  /** What to yield for a message; undefined to skip it. */
  protected abstract accept(message: M): T | undefined;
  /** Whether the stream is over after yielding `item` (e.g. DELETED). */
  protected isFinal(_item: T): boolean {
    return false;
  }
  /** Called once, when the stream closes. */
  protected onClosed(): void {}

  /** Opens the first call now: a live stream starts from here, not from the first next(). Subclasses call it last in their constructor. */
  protected start(): void {
    this.current();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** How many times the stream has opened a new call after losing one. */
  get reconnectCount(): number {
    return this.reconnects;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** The next item; calls are served in order. */
  next(): Promise<IteratorResult<T, undefined>> {
    const result = this.tail.then(() => this.pull());
    this.tail = result.catch(() => undefined);
    return result;
  }

  async return(): Promise<IteratorResult<T, undefined>> {
    this.close();
    return { done: true, value: undefined };
  }

  /** Cancels the call; a pending next() resolves as done. */
  close(): void {
    if (!this.isClosed) {
      this.isClosed = true;
      this.onClosed();
    }
    const a = this.attempt;
    this.attempt = undefined;
    a?.call.cancel();
    this.wakeUp();
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private current(): Attempt<M> | undefined {
    if (this.isClosed) return undefined;
    if (this.attempt) return this.attempt;
    let call: grpc.ClientReadableStream<M>;
    try {
      call = this.open();
    } catch (e) {
      this.close();
      throw e;
    }
    const a: Attempt<M> = { call, queue: [], ended: false };
    const mine = () => this.attempt === a;
    call.on("data", (m: M) => {
      a.queue.push(m);
      if (a.queue.length >= HIGH_WATER) call.pause();
      if (mine()) this.wakeUp();
    });
    // grpc-js emits a failed status as 'error' before the buffered messages
    // are delivered, then 'end' after them: remember it, act on it at the end.
    call.on("error", (e: grpc.ServiceError) => {
      a.error = e;
    });
    const end = () => {
      a.ended = true;
      if (mine()) this.wakeUp();
    };
    call.on("end", end);
    call.on("close", end);
    this.attempt = a;
    return a;
  }

  private async pull(): Promise<IteratorResult<T, undefined>> {
    for (;;) {
      const a = this.current();
      if (!a) return { done: true, value: undefined };
      if (a.queue.length > 0) {
        const m = a.queue.shift() as M;
        if (a.call.isPaused() && a.queue.length < HIGH_WATER / 2) a.call.resume();
        this.delayMs = BACKOFF_FIRST_MS;
        const item = this.accept(m);
        if (item === undefined) continue;
        if (this.isFinal(item)) this.close();
        return { done: false, value: item };
      }
      if (!a.ended) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      // This call is over: the server ended it (as it does when shutting
      // down), it failed, or close() cancelled it.
      this.attempt = undefined;
      if (this.isClosed) return { done: true, value: undefined };
      if (a.error && !RECONNECT_CODES.has(a.error.code)) {
        this.close();
        throw toError(a.error);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.delayMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.delayMs = Math.min(this.delayMs * 2, BACKOFF_MAX_MS);
      if (!this.isClosed) this.reconnects++;
    }
  }
}
