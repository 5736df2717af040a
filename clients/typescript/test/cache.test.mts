// The token cache behind Client.token, counted at the broker
// (tokend_rpc_requests_total on the admin listener): singleflight, reuse,
// renewal before expiry by the monotonic clock, the LRU bound.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client } from "@tokend/client";

import { Broker, sleep } from "./harness.mjs";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
});
after(() => broker.close());

test("1,000 concurrent token() calls cost at most 2 broker calls, counted at the broker", async () => {
  const { id, issued } = await broker.install(client, "c-burst");
  const before = await broker.rpcCount("GetToken");
  const tokens = await Promise.all(Array.from({ length: 1000 }, () => client.token(id)));
  const calls = (await broker.rpcCount("GetToken")) - before;
  assert.ok(calls >= 1 && calls <= 2, `${calls} GetToken calls at the broker`);
  assert.equal(new Set(tokens.map((t) => t.accessToken)).size, 1);
  assert.equal(tokens[0].accessToken, issued.access_token);

  // And a second burst is served from the cache: no broker call at all.
  const again = await Promise.all(Array.from({ length: 1000 }, () => client.token(id)));
  assert.equal((await broker.rpcCount("GetToken")) - before, calls);
  assert.ok(again.every((t) => t === tokens[0]));
});

test("concurrent callers of different connections get their own tokens", async () => {
  const a = await broker.install(client, "c-a");
  const b = await broker.install(client, "c-b");
  const before = await broker.rpcCount("GetToken");
  const got = await Promise.all(Array.from({ length: 200 }, (_, i) => client.token(i % 2 ? a.id : b.id)));
  assert.equal((await broker.rpcCount("GetToken")) - before, 2);
  got.forEach((t, i) => assert.equal(t.accessToken, (i % 2 ? a : b).issued.access_token));
});

test("a token is renewed once less than a quarter of its lifetime is left", async () => {
  const short = await Broker.start({ tokenLifetimeSecs: 4 });
  try {
    const c = short.client();
    const { id } = await short.install(c, "c-short");
    const first = await c.token(id);
    assert.ok(first.expiresInSeconds <= 4);
    const before = await short.rpcCount("GetToken");
    assert.equal((await c.token(id)).accessToken, first.accessToken, "fresh: from the cache");
    assert.equal(await short.rpcCount("GetToken"), before);
    // Wait until less than a quarter of its lifetime is left.
    await sleep(first.ttlMs() - (first.expiresInSeconds * 1000) / 4 + 50);
    const renewed = await c.token(id);
    assert.equal(await short.rpcCount("GetToken"), before + 1);
    assert.ok(renewed.version > first.version, `${renewed.version} after ${first.version}`);
    assert.notEqual(renewed.accessToken, first.accessToken);
  } finally {
    await short.close();
  }
});

test("the cache holds at most cacheCapacity connections, dropping the least recently used", async () => {
  const small = broker.client({ cacheCapacity: 2 });
  const ids = [];
  for (const a of ["c-lru-1", "c-lru-2", "c-lru-3"]) ids.push((await broker.install(small, a)).id);
  await small.token(ids[0]);
  await small.token(ids[1]);
  await small.token(ids[0]); // ids[1] is now the least recently used
  await small.token(ids[2]);
  assert.equal(small.cachedConnections, 2);
  const before = await broker.rpcCount("GetToken");
  await small.token(ids[0]);
  assert.equal(await broker.rpcCount("GetToken"), before, "kept");
  await small.token(ids[1]);
  assert.equal(await broker.rpcCount("GetToken"), before + 1, "dropped, so fetched again");
});

test("a failed broker call is not cached: the next caller asks again", async () => {
  const before = await broker.rpcCount("GetToken");
  await assert.rejects(Promise.all(Array.from({ length: 50 }, () => client.token("sandbox-c-nope"))));
  await assert.rejects(client.token("sandbox-c-nope"));
  assert.equal((await broker.rpcCount("GetToken")) - before, 2);
});
