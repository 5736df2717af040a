// Client.watch: RECONNECT_REQUIRED after a sandbox revocation (a typed
// connection, enum names, the cached token evicted), the end after DELETED,
// errors that end it, and re-subscribing across a broker restart.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, NotFound, ReconnectRequired, type WatchEvent, type WatchStream } from "@tokend/client";

import { Broker } from "./harness.mjs";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
});
after(() => broker.close());

/** stream.next(), failing the test (by closing the stream) instead of hanging when nothing comes in time. */
async function nextWithin(stream: WatchStream, ms = 10_000): Promise<WatchEvent | undefined> {
  const timer = setTimeout(() => stream.close(), ms);
  try {
    return (await stream.next()).value;
  } finally {
    clearTimeout(timer);
  }
}

test("watch sees RECONNECT_REQUIRED after a sandbox revocation, and the cache drops the token", async () => {
  const { id, issued } = await broker.install(client, "w-1");
  const cached = await client.token(id);
  assert.equal(cached.accessToken, issued.access_token);
  const events = client.watch(id);
  const first = await nextWithin(events);
  assert.equal(first?.kind, "SNAPSHOT");
  assert.equal(first?.connection.status, "ACTIVE");
  assert.equal(first?.reconnectRequired, false);

  await broker.revoke("w-1");
  // Another service's refresh finds the grant revoked; this client only hears it on the watch.
  const other = broker.client();
  await assert.rejects(other.forceRefresh(id), ReconnectRequired);
  const cachedBefore = client.cachedConnections;
  let seen: WatchEvent | undefined;
  for await (const e of events) {
    if (e.kind === "STATUS_CHANGED") {
      seen = e;
      break;
    }
  }
  assert.ok(events.closed, "leaving the loop closes the stream");
  assert.ok(seen);
  assert.equal(seen.reconnectRequired, true);
  assert.equal(seen.connection.status, "RECONNECT_REQUIRED");
  assert.equal(seen.connection.reconnectCause, "REVOKED");
  assert.equal(seen.connection.lastError?.code, "invalid_grant");
  assert.equal(seen.connection.lastError?.errorClass, "REVOKED");
  assert.ok(seen.connection.lastError?.occurredAt instanceof Date);
  assert.equal(client.cachedConnections, cachedBefore - 1, "the watch event evicted the cached token");
  await assert.rejects(client.token(id), ReconnectRequired);
});

test("watch ends after DELETED", async () => {
  const { id } = await broker.install(client, "w-del");
  const events = client.watch(id);
  assert.equal((await nextWithin(events))?.kind, "SNAPSHOT");
  await client.deleteConnection(id);
  const last = await nextWithin(events);
  assert.equal(last?.kind, "DELETED");
  assert.equal(last?.connection.connectionId, id);
  assert.deepEqual(await events.next(), { done: true, value: undefined });
  assert.ok(events.closed);
});

test("watching a connection that does not exist throws NotFound", async () => {
  const events = client.watch("sandbox-w-missing");
  await assert.rejects(nextWithin(events), NotFound);
  assert.ok(events.closed);
});

test("watch re-subscribes with backoff when the broker restarts", async () => {
  const own = await Broker.start();
  try {
    const c = own.client();
    const { id } = await own.install(c, "w-restart");
    const events = c.watch(id);
    const snapshot = await nextWithin(events);
    assert.equal(snapshot?.kind, "SNAPSHOT");
    await own.restart(500); // the stream notices, and fails to reconnect for a while
    const again = await nextWithin(events, 15_000);
    assert.equal(again?.kind, "SNAPSHOT", "a fresh snapshot after re-subscribing");
    assert.ok(events.reconnectCount >= 1);
    const t = await c.getToken(id);
    await c.forceRefresh(id, t);
    const rotated = await nextWithin(events);
    assert.equal(rotated?.kind, "TOKEN_ROTATED");
    assert.equal(rotated?.connection.version, t.version + 1);
    events.close();
    assert.deepEqual(await events.next(), { done: true, value: undefined });
  } finally {
    await own.close();
  }
});
