// Install, get, force refresh, connections (get, list over pages, delete)
// against a live broker, with enums as names and secrets kept out of logs.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { inspect } from "node:util";

import { Client, NotFound, Token, grpcTarget } from "@tokend/client";

import { Broker } from "./harness.mjs";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
});
after(() => broker.close());

test("install by token import, then get the token", async () => {
  const issued = await broker.mint("b-1");
  const request = {
    provider: "sandbox",
    accountId: "b-1",
    tokenImport: {
      accessToken: issued.access_token,
      refreshToken: issued.refresh_token,
      expiresInSeconds: issued.expires_in,
      scopes: ["crm"],
    },
  };
  const first = await client.install(request);
  assert.equal(first.created, true);
  assert.equal(first.replayed, false);
  assert.equal(first.connection.connectionId, "sandbox-b-1");
  assert.equal(first.connection.status, "ACTIVE");
  assert.equal(typeof first.connection.version, "number");
  const again = await client.install(request);
  assert.equal(again.replayed, true, "a retried identical install is answered without a second effect");

  const t = await client.getToken("sandbox-b-1");
  assert.ok(t instanceof Token);
  assert.equal(t.accessToken, issued.access_token);
  assert.equal(t.authorization, `Bearer ${issued.access_token}`);
  assert.equal(t.connectionId, "sandbox-b-1");
  assert.equal(t.accountId, "b-1");
  assert.deepEqual([...t.scopes], ["crm"]);
  assert.ok(t.expiresInSeconds > 1700 && t.expiresInSeconds <= 1800);
  assert.ok(t.ttlMs() > 1_700_000);
});

test("a token's secret stays out of console.log, String() and JSON", async () => {
  const { id, issued } = await broker.install(client, "b-secret");
  const t = await client.token(id);
  assert.equal(t.accessToken, issued.access_token);
  for (const shown of [
    inspect(t),
    inspect({ t }, { depth: 5 }),
    String(t),
    `${t}`,
    JSON.stringify(t),
    JSON.stringify([t]),
  ]) {
    assert.ok(!shown.includes(issued.access_token), shown);
  }
  assert.match(inspect(t), /redacted/);
  const withKey = new Client(broker.target, { apiKey: "sk-very-secret" });
  assert.ok(!inspect(withKey, { depth: 5 }).includes("sk-very-secret"));
  assert.ok(!String(withKey).includes("sk-very-secret"));
  withKey.close();
});

test("getConnection gives enum names and dates, never numbers", async () => {
  const { id } = await broker.install(client, "b-2");
  const c = await client.getConnection(id);
  assert.equal(c.connectionId, id);
  assert.equal(c.provider, "sandbox");
  assert.equal(c.accountId, "b-2");
  assert.equal(c.status, "ACTIVE");
  assert.equal(c.reconnectCause, undefined);
  assert.equal(c.lastError, undefined);
  assert.ok(c.createdAt instanceof Date);
  assert.ok(c.accessTokenExpiresAt instanceof Date);
  assert.deepEqual(c.scopes, ["crm"]);
  assert.deepEqual(c.params, {});
});

test("forceRefresh: a second refresh with the old version makes no provider call", async () => {
  const { id } = await broker.install(client, "b-3");
  const t = await client.token(id);
  const before = (await broker.stats()).token_requests;
  const first = await client.forceRefresh(id, { version: t.version });
  assert.equal(first.refreshed, true);
  assert.equal(first.token.version, t.version + 1);
  assert.notEqual(first.token.accessToken, t.accessToken);
  const afterFirst = (await broker.stats()).token_requests;
  assert.equal(afterFirst, before + 1, "the first refresh called the provider once");

  const second = await client.forceRefresh(id, t); // a Token names its version
  assert.equal(second.refreshed, false);
  assert.equal(second.token.accessToken, first.token.accessToken);
  assert.equal((await broker.stats()).token_requests, afterFirst, "the second refresh made no provider call");

  const gets = await broker.rpcCount("GetToken");
  assert.equal((await client.token(id)).version, first.token.version, "the cache holds the refreshed token");
  assert.equal(await broker.rpcCount("GetToken"), gets);
});

test("listConnections iterates over every page", async () => {
  const ids: string[] = [];
  for (let i = 1; i <= 5; i++) ids.push((await broker.install(client, `list-${i}`)).id);
  const page = await client.listConnectionsPage({ pageSize: 2 });
  assert.equal(page.connections.length, 2);
  assert.ok(page.nextPageToken);
  const all: string[] = [];
  for await (const c of client.listConnections({ pageSize: 2, provider: "sandbox" })) {
    assert.equal(c.status, "ACTIVE");
    all.push(c.connectionId);
  }
  assert.deepEqual(
    all.filter((id) => id.startsWith("sandbox-list-")),
    ids,
  );
  assert.deepEqual([...all].sort(), all, "in id order");
  assert.ok(all.length >= 5);
  const revoked: string[] = [];
  for await (const c of client.listConnections({ status: "reconnect_required" })) revoked.push(c.connectionId);
  assert.deepEqual(revoked, []);
  await assert.rejects(client.listConnections({ status: "gone" as "active" }).next(), RangeError);
});

test("deleteConnection forgets the connection and its cached token", async () => {
  const { id } = await broker.install(client, "b-del");
  await client.token(id);
  const cached = client.cachedConnections;
  await client.deleteConnection(id);
  assert.equal(client.cachedConnections, cached - 1);
  await assert.rejects(client.getConnection(id), NotFound);
  await assert.rejects(client.token(id), NotFound);
  await assert.rejects(client.deleteConnection(id), NotFound);
});

test("endpoints may be host:port or URLs", async () => {
  assert.deepEqual(grpcTarget("http://h:1"), ["h:1", false]);
  assert.deepEqual(grpcTarget("https://h:1/"), ["h:1", true]);
  assert.deepEqual(grpcTarget("h:1"), ["h:1", false]);
  const viaUrl = broker.client({}, `http://${broker.target}`);
  await assert.rejects(viaUrl.getToken("ts-not-there"), NotFound);
});
