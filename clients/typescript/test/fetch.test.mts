// authorizedFetch, the refresh-and-retry wrapper of fetch: the sandbox's
// /api/me across at least 5 token expiries with 0 failed requests; against a
// local server, a POST that gets a 401 is not replayed unless opted in,
// idempotent methods are, stream bodies never are; a replay answered 401 again
// throws StillUnauthorized (or with second401: "return" comes back);
// ReconnectRequired comes out as itself.

import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { after, before, test } from "node:test";

import {
  Client,
  ReconnectRequired,
  type Rejected,
  StillUnauthorized,
  TokendError,
  Unauthenticated,
  type Token,
  type TokenSource,
  authorizedFetch,
} from "@tokend/client";

import { Broker } from "./harness.mjs";

const LIFETIME_SECS = 2;
let broker: Broker;
let client: Client;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
});
after(() => broker.close());

/**
 * A token source that renews only when the upstream rejects a token (no
 * expiry bookkeeping at all): every expiry then costs a 401, which the
 * wrapper must absorb.
 */
class UntilRejected implements TokenSource {
  private current?: Promise<Token>;
  constructor(private readonly client: Client) {}
  token(id: string): Promise<Token> {
    return (this.current ??= this.client.getToken(id));
  }
  async forceRefresh(id: string, rejected?: Rejected) {
    const r = await this.client.forceRefresh(id, rejected);
    this.current = Promise.resolve(r.token);
    return r;
  }
}

test("the sandbox's /api/me across at least 5 token expiries, with 0 failed requests", async (t) => {
  const short = await Broker.start({ tokenLifetimeSecs: LIFETIME_SECS });
  t.after(() => short.close());
  const client = short.client();
  const { id } = await short.install(client, "f-me");
  const seen = new Set<string>();
  let rejected = 0;
  const send = async (request: Request) => {
    seen.add(request.headers.get("authorization") ?? "");
    const r = await fetch(request);
    if (r.status === 401) rejected++;
    return r;
  };
  // Two workers use the client's cache (renewed before expiry), two a
  // source that keeps a token until the API rejects it.
  const cached = authorizedFetch(client, id, { fetch: send });
  const lazy = authorizedFetch(new UntilRejected(client), id, { fetch: send });
  const statuses = new Map<number, number>();
  const started = Date.now();
  const runFor = (LIFETIME_SECS * 5 + 2) * 1000;
  await Promise.all(
    [cached, cached, lazy, lazy].map(async (api) => {
      while (Date.now() - started < runFor) {
        const r = await api(`${short.sandbox}/api/me`);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        await r.arrayBuffer();
        await new Promise((ok) => setTimeout(ok, 20));
      }
    }),
  );
  const ok = statuses.get(200) ?? 0;
  const total = [...statuses.values()].reduce((a, b) => a + b, 0);
  assert.ok(total > 100, `${total} requests`);
  assert.equal(ok, total, `every request succeeded: ${JSON.stringify([...statuses])}`);
  // Each token lives LIFETIME_SECS: over the run at least 6 were used, so 5 expired under the loop.
  assert.ok(seen.size >= 6, `${seen.size} tokens used`);
  assert.ok(rejected >= 5, `${rejected} upstream 401s absorbed by refresh-and-retry`);
  const stats = await short.stats();
  assert.equal(stats.api_calls_rejected, rejected, "the sandbox counted the same 401s");
  t.diagnostic(
    `/api/me: ${total} requests, all 200 in the end; ${seen.size} tokens; ${rejected} upstream 401s absorbed`,
  );
});

/** An upstream API that answers 401 to tokens it was told to reject, and echoes the request otherwise. */
class Upstream {
  readonly hits: { method: string; authorization: string; body: string }[] = [];
  readonly rejected = new Set<string>();
  /** Refuse every token, refreshed ones too (a token without the scopes the API wants). */
  rejectAll = false;
  private server!: Server;
  url = "";

  async start(): Promise<this> {
    this.server = createServer(async (req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const hit = {
        method: req.method ?? "",
        authorization: req.headers.authorization ?? "",
        body: Buffer.concat(chunks).toString(),
      };
      this.hits.push(hit);
      const status = this.rejectAll || this.rejected.has(hit.authorization) ? 401 : 200;
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify({ status, body: hit.body }));
    });
    await new Promise<void>((ok) => this.server.listen(0, "127.0.0.1", ok));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
    return this;
  }

  close(): void {
    this.server.close();
  }
}

let upstream: Upstream;
before(async () => {
  upstream = await new Upstream().start();
});
after(() => upstream.close());

/** A connection whose current (cached) token the upstream rejects once. */
async function rejectedOnce(account: string): Promise<{ id: string; stale: string }> {
  const { id } = await broker.install(client, account);
  const stale = (await client.token(id)).authorization;
  upstream.rejected.add(stale);
  upstream.hits.length = 0;
  return { id, stale };
}

test("a POST that gets a 401 is not replayed; the 401 comes back and the next request has a new token", async () => {
  const { id, stale } = await rejectedOnce("f-post");
  const api = authorizedFetch(client, id);
  const r = await api(`${upstream.url}/contacts`, { method: "POST", body: '{"name":"a"}' });
  assert.equal(r.status, 401);
  assert.deepEqual(await r.json(), { status: 401, body: '{"name":"a"}' }, "the response as it came");
  assert.equal(upstream.hits.length, 1, "not replayed");
  const next = await api(`${upstream.url}/contacts`, { method: "POST", body: '{"name":"b"}' });
  assert.equal(next.status, 200);
  assert.equal(upstream.hits.length, 2);
  assert.notEqual(upstream.hits[1].authorization, stale, "refreshed for the next request");
  const patch = await api(`${upstream.url}/contacts/1`, { method: "PATCH", body: "x" });
  assert.equal(patch.status, 200);
});

test("with replayNonIdempotent a POST is replayed once, with the same body", async () => {
  const { id, stale } = await rejectedOnce("f-post-opt-in");
  const api = authorizedFetch(client, id, { replayNonIdempotent: true });
  const r = await api(`${upstream.url}/contacts`, {
    method: "POST",
    body: '{"name":"a"}',
    headers: { "content-type": "application/json", "x-request-id": "r1" },
  });
  assert.equal(r.status, 200);
  assert.equal(upstream.hits.length, 2);
  assert.equal(upstream.hits[0].authorization, stale);
  assert.notEqual(upstream.hits[1].authorization, stale);
  assert.deepEqual(
    upstream.hits.map((h) => h.body),
    ['{"name":"a"}', '{"name":"a"}'],
  );
});

test("GET, PUT and DELETE are replayed after a 401; a Request object's body too", async () => {
  for (const [method, body] of [
    ["GET", undefined],
    ["PUT", new Uint8Array([1, 2, 3])],
    ["DELETE", undefined],
  ] as const) {
    const { id } = await rejectedOnce(`f-${method.toLowerCase()}`);
    const r = await authorizedFetch(client, id)(`${upstream.url}/x`, { method, body });
    assert.equal(r.status, 200, method);
    assert.equal(upstream.hits.length, 2, method);
  }
  const { id } = await rejectedOnce("f-request");
  const request = new Request(`${upstream.url}/x`, { method: "PUT", body: "payload" });
  const r = await authorizedFetch(client, id)(request);
  assert.equal(r.status, 200);
  assert.deepEqual(
    upstream.hits.map((h) => h.body),
    ["payload", "payload"],
  );
});

test("a stream body cannot be replayed: the 401 comes back", async () => {
  const { id } = await rejectedOnce("f-stream");
  const body = new ReadableStream({
    start(c) {
      c.enqueue(new TextEncoder().encode("streamed"));
      c.close();
    },
  });
  const r = await authorizedFetch(client, id)(`${upstream.url}/x`, {
    method: "PUT",
    body,
    duplex: "half",
  } as RequestInit);
  assert.equal(r.status, 401);
  assert.equal(upstream.hits.length, 1);
  assert.equal(upstream.hits[0].body, "streamed");
});

test("a revoked connection's 401 surfaces as ReconnectRequired itself", async () => {
  const { id } = await rejectedOnce("f-revoked");
  await broker.revoke("f-revoked");
  const api = authorizedFetch(client, id);
  await assert.rejects(
    api(`${upstream.url}/x`),
    (e: unknown) => e instanceof ReconnectRequired && e.cause === "REVOKED",
  );
  await assert.rejects(
    api(`${upstream.url}/x`),
    ReconnectRequired,
    "and the next request does not send the dead token",
  );
  assert.equal(upstream.hits.length, 1);
});

test("a replay answered 401 again throws StillUnauthorized with the final response; second401: 'return' returns it", async (t) => {
  t.after(() => {
    upstream.rejectAll = false;
  });
  const { id, stale } = await rejectedOnce("f-still");
  upstream.rejectAll = true;
  const api = authorizedFetch(client, id);
  let thrown: unknown;
  await assert.rejects(api(`${upstream.url}/x`), (e: unknown) => {
    thrown = e;
    return e instanceof StillUnauthorized;
  });
  const e = thrown as StillUnauthorized;
  assert.ok(e instanceof TokendError && !(e instanceof Unauthenticated));
  assert.equal(e.connectionId, id);
  assert.equal(e.status, 401);
  assert.equal(e.codeName, "UNAUTHENTICATED");
  assert.equal(e.reason, "STILL_UNAUTHORIZED");
  assert.deepEqual(
    upstream.hits.map((h) => [h.method, h.authorization === stale]),
    [
      ["GET", true],
      ["GET", false],
    ],
    "one replay, with a refreshed token, and no refresh loop",
  );
  const response = e.response as Response;
  assert.equal(response.status, 401);
  assert.deepEqual(await response.json(), { status: 401, body: "" }, "the final response, readable");
  for (const h of upstream.hits) assert.ok(!e.message.includes(h.authorization.slice(7)), "no token in the message");

  upstream.hits.length = 0;
  const r = await authorizedFetch(client, id, { second401: "return" })(`${upstream.url}/x`);
  assert.equal(r.status, 401);
  assert.equal(upstream.hits.length, 2);
  await r.arrayBuffer();

  // A POST that is not replayed: its one 401 comes back under either setting.
  for (const second401 of ["raise", "return"] as const) {
    upstream.hits.length = 0;
    const post = await authorizedFetch(client, id, { second401 })(`${upstream.url}/x`, { method: "POST", body: "b" });
    assert.equal(post.status, 401);
    assert.equal(upstream.hits.length, 1);
    await post.arrayBuffer();
  }
  assert.throws(() => authorizedFetch(client, id, { second401: "ignore" as "raise" }), TypeError);
});
