// Client.watchAll, the durable event feed: live events and the cursor,
// resuming after a saved cursor, server-side filters, typed errors for bad
// cursors, and reconnecting across broker restarts without losing or
// repeating an event. Also: a RECONNECT_REQUIRED event evicts the cached token.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  Client,
  type ConnectionEvent,
  CursorExpired,
  EventStream,
  InvalidArgument,
  ReconnectRequired,
} from "@tokend/client";

import { Broker, sleep } from "./harness.mjs";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
});
after(() => broker.close());

/**
 * Iterates an EventStream in the background, as a consumer would, so a test
 * can wait for the stream to start (its first checkpoint moves `cursor`) and
 * take events with a timeout.
 */
class Collector {
  readonly events: ConnectionEvent[] = [];
  error: unknown;
  private readonly done: Promise<void>;

  constructor(readonly stream: EventStream) {
    this.done = (async () => {
      try {
        for await (const e of stream) this.events.push(e);
      } catch (e) {
        this.error = e;
      }
    })();
  }

  private async until(ready: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      assert.equal(this.error, undefined);
      assert.ok(Date.now() < deadline, what);
      await sleep(10);
    }
  }

  async started(timeoutMs = 10_000): Promise<this> {
    await this.until(() => this.stream.cursor !== undefined, timeoutMs, "the stream sent no checkpoint");
    return this;
  }

  async take(n: number, timeoutMs = 10_000): Promise<ConnectionEvent[]> {
    await this.until(() => this.events.length >= n, timeoutMs, `got ${this.events.length} of ${n} events`);
    return this.events.splice(0, n);
  }

  async quiet(ms = 300): Promise<void> {
    await sleep(ms);
    assert.deepEqual(
      this.events.map((e) => e.connectionId),
      [],
    );
    assert.equal(this.error, undefined);
  }

  async close(): Promise<void> {
    this.stream.close();
    await this.done;
    assert.equal(this.error, undefined);
  }
}

/** stream.next(), but a stream that yields nothing in time (say, one that retries forever) is closed, failing the test instead of hanging it. */
async function nextWithin(stream: EventStream, ms = 10_000): Promise<ConnectionEvent | undefined> {
  const timer = setTimeout(() => stream.close(), ms);
  try {
    return (await stream.next()).value;
  } finally {
    clearTimeout(timer);
  }
}

async function installMany(accounts: string[], via = client, on = broker): Promise<string[]> {
  const ids = [];
  for (const a of accounts) ids.push((await on.install(via, a)).id);
  return ids;
}

test("watchAll delivers live events and moves the cursor", async () => {
  const stream = client.watchAll();
  assert.equal(stream.cursor, undefined);
  const feed = await new Collector(stream).started();
  const ids = await installMany(["ts-live-1", "ts-live-2", "ts-live-3"]);
  const events = await feed.take(3);
  await feed.quiet();
  assert.deepEqual(
    events.map((e) => e.eventType),
    ["INSTALLED", "INSTALLED", "INSTALLED"],
  );
  assert.deepEqual(
    events.map((e) => e.connectionId),
    ids,
  );
  assert.deepEqual(
    events.map((e) => e.connection?.connectionId),
    ids,
  );
  assert.ok(events[0].sequence < events[1].sequence && events[1].sequence < events[2].sequence);
  assert.equal(new Set(events.map((e) => e.cursor)).size, 3);
  assert.equal(stream.cursor, events[2].cursor);
  await feed.close();
  assert.ok(stream.closed);
});

test("watchAll resumes after a saved cursor", async () => {
  const stream = client.watchAll();
  const feed = await new Collector(stream).started();
  const first = await installMany(["ts-resume-1", "ts-resume-2", "ts-resume-3"]);
  assert.deepEqual(
    (await feed.take(3)).map((e) => e.connectionId),
    first,
  );
  await feed.close();
  const saved = stream.cursor;
  assert.ok(saved);
  const later = await installMany(["ts-resume-4", "ts-resume-5"]);
  const resumed = client.watchAll({ resumeAfter: saved });
  const again = new Collector(resumed);
  const events = await again.take(2);
  await again.quiet();
  assert.deepEqual(
    events.map((e) => e.connectionId),
    later,
  );
  assert.ok(events.every((e) => e.eventType === "INSTALLED"));
  assert.ok(events[0].sequence < events[1].sequence);
  assert.equal(resumed.cursor, events[1].cursor);
  await again.close();
});

test("watchAll filters server-side", async () => {
  const [rrA, rrB] = await installMany(["ts-filter-a1", "ts-filter-b1"]);
  const onlyA = await new Collector(
    client.watchAll({ eventTypes: ["reconnect_required"], connectionIdPrefixes: ["sandbox-ts-filter-a"] }),
  ).started();
  const byStatus = await new Collector(
    client.watchAll({
      statuses: ["reconnect_required"],
      connectionIdPrefixes: ["sandbox-ts-filter-"],
      providers: ["sandbox"],
    }),
  ).started();
  await installMany(["ts-filter-a2"]); // INSTALLED: filtered out
  for (const [account, id] of [
    ["ts-filter-b1", rrB],
    ["ts-filter-a1", rrA],
  ]) {
    await broker.revoke(account);
    await assert.rejects(client.forceRefresh(id), ReconnectRequired);
  }
  const [event] = await onlyA.take(1);
  await onlyA.quiet();
  assert.equal(event.connectionId, rrA);
  assert.equal(event.eventType, "RECONNECT_REQUIRED");
  assert.equal(event.cause, "REVOKED");
  assert.equal(event.connection?.status, "RECONNECT_REQUIRED");
  assert.equal(event.connection?.lastError?.code, "invalid_grant");
  const events = await byStatus.take(2);
  await byStatus.quiet();
  assert.deepEqual(
    events.map((e) => e.connectionId),
    [rrB, rrA],
  );
  assert.ok(events.every((e) => e.eventType === "RECONNECT_REQUIRED"));
  await onlyA.close();
  await byStatus.close();
  assert.throws(() => client.watchAll({ eventTypes: ["no_such_type" as "installed"] }), RangeError);
});

/** The same position in another event log: a cursor is base64url of the log id and the sequence, 8 bytes each, big-endian. */
function foreign(cursor: string): string {
  const raw = Buffer.from(cursor, "base64url");
  assert.equal(raw.length, 16);
  for (let i = 0; i < 8; i++) raw[i] ^= 0x5a;
  return raw.toString("base64url");
}

test("watchAll raises typed errors for bad cursors", async () => {
  const started = Date.now();
  await assert.rejects(
    nextWithin(client.watchAll({ resumeAfter: "garbage" })),
    (e: unknown) => e instanceof InvalidArgument && e.field === "resume_after",
  );
  const stream = client.watchAll();
  const feed = await new Collector(stream).started();
  await installMany(["ts-cursor-1"]);
  const [event] = await feed.take(1);
  await feed.close();
  const expired = client.watchAll({ resumeAfter: foreign(event.cursor) });
  let oldest = "";
  await assert.rejects(nextWithin(expired), (e: unknown) => {
    assert.ok(e instanceof CursorExpired);
    assert.equal(e.reason, "CURSOR_EXPIRED");
    oldest = e.oldestCursor;
    return true;
  });
  assert.ok(oldest);
  assert.notEqual(oldest, foreign(event.cursor));
  assert.ok(expired.closed);
  assert.deepEqual(await expired.next(), { done: true, value: undefined });
  assert.ok(Date.now() - started < 5_000, "a non-retryable error was retried");
  // The oldest cursor is a real one: resuming from it works.
  const fromOldest = client.watchAll({ resumeAfter: oldest, connectionIdPrefixes: ["sandbox-ts-cursor-"] });
  assert.equal((await nextWithin(fromOldest))?.connectionId, "sandbox-ts-cursor-1");
  fromOldest.close();
});

test("watchAll reconnects across a server restart", async () => {
  const server = await Broker.start();
  const own = server.client();
  try {
    const stream = own.watchAll();
    const feed = await new Collector(stream).started();
    const [before] = await installMany(["ts-restart-1"], own, server);
    const [first] = await feed.take(1);
    assert.equal(first.connectionId, before);
    await server.restart(300); // the stream notices, and fails to reconnect for a while
    const [after] = await installMany(["ts-restart-2"], own, server);
    const [second] = await feed.take(1, 15_000);
    await feed.quiet();
    assert.equal(second.connectionId, after);
    assert.equal(second.eventType, "INSTALLED");
    assert.ok(second.sequence > first.sequence);
    assert.equal(stream.cursor, second.cursor);
    assert.ok(stream.reconnectCount >= 1);
    await feed.close();

    // A consumer that is not reading while the server restarts: the events
    // written while it was away come on its next read, resumed from its
    // cursor, none lost, none repeated.
    const idle = own.watchAll({ resumeAfter: second.cursor });
    const [third] = await installMany(["ts-restart-3"], own, server);
    assert.equal((await nextWithin(idle))?.connectionId, third);
    await server.restart(0);
    const missed = await installMany(["ts-restart-4", "ts-restart-5"], own, server);
    assert.equal((await nextWithin(idle))?.connectionId, missed[0]);
    assert.equal((await nextWithin(idle))?.connectionId, missed[1]);
    const rest = new Collector(idle);
    await rest.quiet();
    await rest.close();
  } finally {
    await server.close();
  }
});

test("a RECONNECT_REQUIRED event on the feed evicts the cached token", async () => {
  const [id] = await installMany(["ts-evict"]);
  await client.token(id);
  const feed = await new Collector(client.watchAll({ connectionIdPrefixes: [id] })).started();
  const n = client.cachedConnections;
  await broker.revoke("ts-evict");
  await assert.rejects(broker.client().forceRefresh(id), ReconnectRequired);
  const [event] = await feed.take(1);
  assert.equal(event.eventType, "RECONNECT_REQUIRED");
  assert.equal(event.cause, "REVOKED");
  assert.equal(event.connection?.status, "RECONNECT_REQUIRED");
  assert.equal(client.cachedConnections, n - 1);
  await assert.rejects(client.token(id), ReconnectRequired);
  await feed.close();
});
