// The token cache behind `Client.token`: per connection, concurrent callers
// share one in-flight GetToken (singleflight); a token is handed out while
// more than min(margin, 1/4 of its lifetime) is left, by the monotonic clock;
// the least recently used connections are dropped past a capacity.

import { NotFound, ReconnectRequired } from "./errors.js";
import type { Token } from "./types.js";

interface Slot {
  token?: Token;
  inflight?: Promise<Token>;
}

export class TokenCache {
  /** Insertion order is recency: a hit moves its slot to the end. */
  private readonly slots = new Map<string, Slot>();

  constructor(
    private readonly fetch: (connectionId: string) => Promise<Token>,
    private readonly marginMs: number,
    private readonly capacity: number,
  ) {}

  /** Whether a cached token may still be handed out. */
  fresh(t: Token, now = performance.now()): boolean {
    return t.ttlMs(now) > Math.min(this.marginMs, (t.expiresInSeconds * 1000) / 4);
  }

  private slot(connectionId: string): Slot {
    let slot = this.slots.get(connectionId);
    if (slot) {
      this.slots.delete(connectionId);
    } else {
      slot = {};
      while (this.slots.size >= Math.max(1, this.capacity)) {
        const oldest = this.slots.keys().next().value as string;
        this.slots.delete(oldest);
      }
    }
    this.slots.set(connectionId, slot);
    return slot;
  }

  /** A valid token, from the cache or from one broker call shared by every concurrent caller. */
  get(connectionId: string): Promise<Token> {
    const slot = this.slot(connectionId);
    if (slot.token && this.fresh(slot.token)) return Promise.resolve(slot.token);
    if (slot.inflight) return slot.inflight;
    const call: Promise<Token> = this.fetch(connectionId)
      .then(
        (t) => {
          // Keep it unless the slot was evicted (or replaced) meanwhile.
          if (this.slots.get(connectionId) === slot) slot.token = t;
          return t;
        },
        (e: unknown) => {
          if (e instanceof ReconnectRequired || e instanceof NotFound) this.evict(connectionId);
          throw e;
        },
      )
      .finally(() => {
        if (slot.inflight === call) slot.inflight = undefined;
      });
    slot.inflight = call;
    return call;
  }

  /** Stores a token the broker just handed out (ForceRefresh): the rejected one must not be served again. */
  put(t: Token): void {
    this.slot(t.connectionId).token = t;
  }

  /** Forgets a connection's token: it needs reconnecting, or was deleted. */
  evict(connectionId: string): void {
    this.slots.delete(connectionId);
  }

  /** The token cached for a connection, fresh or not, without asking the broker. */
  peek(connectionId: string): Token | undefined {
    return this.slots.get(connectionId)?.token;
  }

  get size(): number {
    return this.slots.size;
  }

  clear(): void {
    this.slots.clear();
  }
}
