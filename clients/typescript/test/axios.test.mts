// useTokendAuth, the axios interceptors: a Bearer token on each request, one
// refresh-and-retry after a 401 for idempotent methods, POST not replayed
// unless opted in (axios's own 401 error comes back), a replay answered 401
// again rejects with StillUnauthorized (or with second401: "return" as axios's
// 401), ReconnectRequired as itself.

import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, test } from "node:test";

import axios, { AxiosError } from "axios";

import { Client, ReconnectRequired, StillUnauthorized, useTokendAuth } from "@tokend/client";

import { Broker } from "./harness.mjs";

let broker: Broker;
let client: Client;
let server: Server;
let url: string;
const hits: { method: string; authorization: string; body: string }[] = [];
const rejected = new Set<string>();
let rejectAll = false;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
  server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const hit = {
      method: req.method ?? "",
      authorization: req.headers.authorization ?? "",
      body: Buffer.concat(chunks).toString(),
    };
    hits.push(hit);
    res.writeHead(rejectAll || rejected.has(hit.authorization) ? 401 : 200, { "content-type": "application/json" });
    res.end(JSON.stringify({ body: hit.body }));
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
after(async () => {
  server.close();
  await broker.close();
});

async function rejectedOnce(account: string): Promise<{ id: string; stale: string }> {
  const { id } = await broker.install(client, account);
  const stale = (await client.token(id)).authorization;
  rejected.add(stale);
  hits.length = 0;
  return { id, stale };
}

test("axios: a GET that gets a 401 is retried once with a refreshed token", async () => {
  const { id, stale } = await rejectedOnce("ax-get");
  const api = axios.create({ baseURL: url });
  useTokendAuth(api, client, id);
  const r = await api.get("/me");
  assert.equal(r.status, 200);
  assert.deepEqual(
    hits.map((h) => h.authorization === stale),
    [true, false],
  );
});

test("axios: a POST that gets a 401 is not replayed unless opted in", async () => {
  const { id } = await rejectedOnce("ax-post");
  const api = axios.create({ baseURL: url });
  useTokendAuth(api, client, id);
  await assert.rejects(
    api.post("/contacts", { name: "a" }),
    (e: unknown) => e instanceof AxiosError && e.response?.status === 401,
  );
  assert.equal(hits.length, 1);
  assert.equal((await api.post("/contacts", { name: "b" })).status, 200, "the next one has the new token");

  const { id: other } = await rejectedOnce("ax-post-opt-in");
  const replaying = axios.create({ baseURL: url });
  const eject = useTokendAuth(replaying, client, other, { replayNonIdempotent: true });
  assert.equal((await replaying.post("/contacts", { name: "c" })).status, 200);
  assert.deepEqual(
    hits.map((h) => h.body),
    ['{"name":"c"}', '{"name":"c"}'],
  );
  eject();
  hits.length = 0;
  await replaying.get("/me");
  assert.equal(hits[0].authorization, "", "ejected: no token any more");
});

test("axios: a 401 accepted by validateStatus is retried too", async () => {
  const { id } = await rejectedOnce("ax-validate");
  const api = axios.create({ baseURL: url, validateStatus: () => true });
  useTokendAuth(api, client, id);
  assert.equal((await api.get("/me")).status, 200);
  assert.equal(hits.length, 2);
});

test("axios: a revoked connection surfaces as ReconnectRequired itself", async () => {
  const { id } = await rejectedOnce("ax-revoked");
  await broker.revoke("ax-revoked");
  const api = axios.create({ baseURL: url });
  useTokendAuth(api, client, id);
  await assert.rejects(api.get("/me"), ReconnectRequired);
});

test("axios: a replay answered 401 again rejects with StillUnauthorized; second401: 'return' gives axios's 401", async (t) => {
  t.after(() => {
    rejectAll = false;
  });
  const { id, stale } = await rejectedOnce("ax-still");
  rejectAll = true;
  const api = axios.create({ baseURL: url });
  useTokendAuth(api, client, id);
  await assert.rejects(api.get("/me"), (e: unknown) => {
    assert.ok(e instanceof StillUnauthorized, String(e));
    assert.equal(e.connectionId, id);
    assert.equal(e.status, 401);
    assert.equal((e.response as { status: number }).status, 401, "axios's final response");
    assert.ok(!e.message.includes(stale.slice(7)));
    return true;
  });
  assert.deepEqual(
    hits.map((h) => h.authorization === stale),
    [true, false],
    "one replay, with a refreshed token",
  );

  // The same under a validateStatus that accepts 401.
  hits.length = 0;
  const lenient = axios.create({ baseURL: url, validateStatus: () => true });
  useTokendAuth(lenient, client, id);
  await assert.rejects(lenient.get("/me"), StillUnauthorized);
  assert.equal(hits.length, 2);

  hits.length = 0;
  const returning = axios.create({ baseURL: url });
  useTokendAuth(returning, client, id, { second401: "return" });
  await assert.rejects(returning.get("/me"), (e: unknown) => e instanceof AxiosError && e.response?.status === 401);
  assert.equal(hits.length, 2);
  const lenientReturning = axios.create({ baseURL: url, validateStatus: () => true });
  useTokendAuth(lenientReturning, client, id, { second401: "return" });
  assert.equal((await lenientReturning.get("/me")).status, 401);

  // A POST that is not replayed: its one 401 comes back as axios gives it, under either setting.
  hits.length = 0;
  await assert.rejects(api.post("/contacts", { n: 1 }), (e: unknown) => e instanceof AxiosError);
  assert.equal(hits.length, 1);
});
