// Typed errors: the ones a live broker answers, the transport's (broker down,
// deadline), and the whole status mapping from synthesized
// google.rpc.Status details (ErrorInfo, RetryInfo, BadRequest).

import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { after, before, test } from "node:test";
import { inspect } from "node:util";

import {
  Aborted,
  AlreadyExists,
  Client,
  CursorExpired,
  DeadlineExceeded,
  InvalidArgument,
  NotFound,
  PermissionDenied,
  ProviderMisconfigured,
  ReconnectRequired,
  RecordUnreadable,
  ResourceExhausted,
  TokendError,
  TransportError,
  Unauthenticated,
  Unavailable,
  errorFromStatus,
} from "@tokend/client";

import { Broker, freePort } from "./harness.mjs";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await Broker.start();
  client = broker.client();
});
after(() => broker.close());

test("NOT_FOUND is NotFound, naming the connection", async () => {
  await assert.rejects(client.getToken("sandbox-missing"), (e: unknown) => {
    assert.ok(e instanceof NotFound && e instanceof TokendError);
    assert.equal(e.codeName, "NOT_FOUND");
    assert.equal(e.reason, "CONNECTION_NOT_FOUND");
    assert.equal(e.connectionId, "sandbox-missing");
    return true;
  });
});

test("NotFound for a connection deleted elsewhere evicts its cached token", async () => {
  const { id } = await broker.install(client, "e-gone");
  await client.token(id);
  const n = client.cachedConnections;
  const other = broker.client();
  await other.deleteConnection(id);
  await assert.rejects(client.getToken(id), NotFound);
  assert.equal(client.cachedConnections, n - 1, "the deleted connection's token left the cache");
});

test("INVALID_ARGUMENT is InvalidArgument with the field from BadRequest", async () => {
  await assert.rejects(
    client.getToken("not valid"),
    (e: unknown) => e instanceof InvalidArgument && e.field === "connection_id" && e.description.length > 0,
  );
  await assert.rejects(
    client.install({ provider: "sandbox", accountId: "x" }),
    (e: unknown) => e instanceof InvalidArgument && e.field === "grant",
  );
  await assert.rejects(
    client.install({ provider: "sandbox", tokenImport: { accessToken: "a" }, authorizationCode: { code: "c" } }),
    TypeError,
  );
});

test("ALREADY_EXISTS is AlreadyExists: an install never silently replaces another account's grant", async () => {
  await broker.install(client, "e-owner");
  const other = await broker.mint("e-other");
  await assert.rejects(
    client.install({
      provider: "sandbox",
      connectionId: "sandbox-e-owner",
      accountId: "e-other",
      tokenImport: { accessToken: other.access_token, refreshToken: other.refresh_token, expiresInSeconds: 1800 },
    }),
    (e: unknown) => e instanceof AlreadyExists && e.reason === "CONNECTION_ID_TAKEN",
  );
});

test("RECONNECT_REQUIRED is ReconnectRequired with cause and provider error, and evicts the cached token", async () => {
  const { id, issued } = await broker.install(client, "e-revoked");
  const cached = await client.token(id);
  assert.equal(cached.accessToken, issued.access_token);
  const n = client.cachedConnections;
  await broker.revoke("e-revoked");
  let error: unknown;
  await assert.rejects(client.forceRefresh(id, cached), (e: unknown) => {
    error = e;
    assert.ok(e instanceof ReconnectRequired);
    assert.equal(e.codeName, "FAILED_PRECONDITION");
    assert.equal(e.reason, "RECONNECT_REQUIRED");
    assert.equal(e.cause, "REVOKED");
    assert.equal(e.reconnectCause, "REVOKED");
    assert.equal(e.providerError, "invalid_grant");
    assert.equal(e.connectionId, id);
    return true;
  });
  assert.equal(client.cachedConnections, n - 1, "the revoked connection's token left the cache");
  await assert.rejects(client.token(id), ReconnectRequired, "and is not served from it");
  for (const shown of [String(error), inspect(error), JSON.stringify(error)]) {
    assert.ok(!shown.includes(issued.access_token) && !shown.includes(issued.refresh_token), shown);
  }
});

test("a broker that cannot be reached is TransportError (an Unavailable) after the retries", async () => {
  const port = await freePort(); // nothing listens there
  const c = new Client(`127.0.0.1:${port}`, { transportRetries: 2 });
  const started = Date.now();
  await assert.rejects(c.getToken("x"), (e: unknown) => {
    assert.ok(e instanceof TransportError && e instanceof Unavailable, String(e));
    assert.match(e.message, new RegExp(`127.0.0.1:${port}`));
    return true;
  });
  assert.ok(Date.now() - started >= 300, "retried with backoff (100 + 200 ms)");
  c.close();
});

test("every call has a deadline: DeadlineExceeded", async () => {
  // A listener that accepts and never speaks HTTP/2.
  const sockets: Socket[] = [];
  const silent = createServer((s) => sockets.push(s));
  await new Promise<void>((ok) => silent.listen(0, "127.0.0.1", ok));
  const port = (silent.address() as { port: number }).port;
  const c = new Client(`127.0.0.1:${port}`, { timeoutMs: 300 });
  const started = Date.now();
  await assert.rejects(c.getConnection("x"), DeadlineExceeded);
  const took = Date.now() - started;
  assert.ok(took >= 250 && took < 5_000, `${took} ms`);
  c.close();
  for (const s of sockets) s.destroy();
  silent.close();
});

// google.rpc.Status, encoded by hand (proto3 wire format).
function varint(n: number): number[] {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}
function field(no: number, bytes: Uint8Array | string): number[] {
  const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  return [...varint((no << 3) | 2), ...varint(b.length), ...b];
}
function any(type: string, value: number[]): number[] {
  return field(3, new Uint8Array([...field(1, `type.googleapis.com/${type}`), ...field(2, new Uint8Array(value))]));
}
function errorInfo(reason: string, metadata: Record<string, string> = {}): number[] {
  const entries = Object.entries(metadata).flatMap(([k, v]) =>
    field(3, new Uint8Array([...field(1, k), ...field(2, v)])),
  );
  return any("google.rpc.ErrorInfo", [...field(1, reason), ...field(2, "tokend.dev"), ...entries]);
}
function retryInfo(seconds: number): number[] {
  return any("google.rpc.RetryInfo", field(1, new Uint8Array([0x08, ...varint(seconds)])));
}
function badRequest(name: string, description: string): number[] {
  return any("google.rpc.BadRequest", field(1, new Uint8Array([...field(1, name), ...field(2, description)])));
}
const status = (code: number, ...details: number[][]) =>
  new Uint8Array([0x08, code, ...field(2, "message"), ...details.flat()]);

test("the status mapping, from synthesized details", () => {
  const map = (code: number, ...details: number[][]) => errorFromStatus(code, "message", status(code, ...details));

  const unavailable = map(14, errorInfo("PROVIDER_UNAVAILABLE", { provider: "hubspot" }), retryInfo(3));
  assert.ok(unavailable instanceof Unavailable && !(unavailable instanceof TransportError));
  assert.equal(unavailable.retryAfterSeconds, 3);
  assert.equal(unavailable.reason, "PROVIDER_UNAVAILABLE");
  assert.ok(errorFromStatus(14, "connection refused") instanceof TransportError);

  const invalid = map(
    3,
    errorInfo("INVALID_ARGUMENT", { field: "min_ttl_seconds" }),
    badRequest("min_ttl_seconds", "too long"),
  );
  assert.ok(invalid instanceof InvalidArgument);
  assert.equal(invalid.field, "min_ttl_seconds");
  assert.equal(invalid.description, "too long");

  const rr = map(9, errorInfo("RECONNECT_REQUIRED", { cause: "ROTATION_LOST", provider_error: "invalid_grant" }));
  assert.ok(rr instanceof ReconnectRequired);
  assert.equal(rr.cause, "ROTATION_LOST");
  assert.equal(rr.providerError, "invalid_grant");

  const misconfigured = map(9, errorInfo("PROVIDER_MISCONFIGURED", { provider: "hubspot" }));
  assert.ok(misconfigured instanceof ProviderMisconfigured);
  assert.equal(misconfigured.provider, "hubspot");
  const otherPrecondition = map(9, errorInfo("PROVIDER_MISMATCH"));
  assert.ok(!(otherPrecondition instanceof ReconnectRequired) && !(otherPrecondition instanceof ProviderMisconfigured));
  assert.equal(otherPrecondition.reason, "PROVIDER_MISMATCH");

  const expired = map(11, errorInfo("CURSOR_EXPIRED", { oldest_cursor: "abc" }));
  assert.ok(expired instanceof CursorExpired);
  assert.equal(expired.oldestCursor, "abc");

  const limited = map(8, errorInfo("CALLER_RATE_LIMITED"), retryInfo(1));
  assert.ok(limited instanceof ResourceExhausted);
  assert.equal(limited.retryAfterSeconds, 1);

  assert.ok(map(16, errorInfo("UNAUTHENTICATED")) instanceof Unauthenticated);
  assert.ok(map(7, errorInfo("PERMISSION_DENIED")) instanceof PermissionDenied);
  assert.ok(map(5, errorInfo("CONNECTION_NOT_FOUND")) instanceof NotFound);
  assert.ok(map(6, errorInfo("CONNECTION_ID_TAKEN")) instanceof AlreadyExists);
  assert.ok(map(4) instanceof DeadlineExceeded);
  assert.ok(map(10, errorInfo("CONCURRENT_MODIFICATION")) instanceof Aborted);
  const unreadable = map(9, errorInfo("RECORD_UNREADABLE", { connection_id: "c1" }));
  assert.ok(unreadable instanceof RecordUnreadable);
  assert.equal(unreadable.connectionId, "c1");
  assert.ok(map(15, errorInfo("RECORD_UNREADABLE")) instanceof RecordUnreadable, "DATA_LOSS too");
  // UNAVAILABLE with RetryInfo is an answer from tokend, not a transport failure.
  const answered = map(14, retryInfo(2));
  assert.ok(answered instanceof Unavailable && !(answered instanceof TransportError));
  assert.equal(answered.retryAfterSeconds, 2);
  const internal = map(13, errorInfo("INTERNAL"));
  assert.equal(internal.constructor, TokendError);
  assert.equal(internal.name, "TokendError");
  assert.equal(rr.name, "ReconnectRequired");
  // Garbage details do not hide the code.
  assert.ok(errorFromStatus(5, "m", new Uint8Array([0x1a, 0xff, 0x01])) instanceof NotFound);
});
