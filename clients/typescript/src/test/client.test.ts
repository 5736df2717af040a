// The TypeScript client against a live tokend with the sandbox provider: get
// a token, force a refresh, hear RECONNECT_REQUIRED on the watch stream, and
// follow the event feed (watchAll) across a resume and a server restart.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import {
  Client,
  ConnectionEvent,
  ConnectionStatus,
  CursorExpired,
  EventStream,
  EventType,
  InvalidArgument,
  NotFound,
  ReconnectCause,
  ReconnectRequired,
  grpcTarget,
} from "../index";

const binary = process.env.TOKEND_BIN ?? resolve(__dirname, "../../../../target/debug/tokend");
let server: ChildProcess;
let client: Client;
let target: string;
let sandbox: string;

function freePort(): Promise<number> {
  return new Promise((ok) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
  });
}

async function post(path: string, body: object, base = sandbox): Promise<any> {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  return text ? JSON.parse(text) : {};
}

async function install(account: string, via = client, base = sandbox): Promise<{ id: string; issued: any }> {
  const issued = await post("/sandbox/tokens", { account_id: account, scopes: ["crm"] }, base);
  await via.installImport({
    provider: "sandbox",
    accountId: account,
    accessToken: issued.access_token,
    refreshToken: issued.refresh_token,
    expiresInSeconds: 1800,
  });
  return { id: `sandbox-${account}`, issued };
}

function startServer(grpcPort: number, httpPort: number, dataDir: string): ChildProcess {
  return spawn(
    binary,
    ["serve", "--sandbox", "--listen", `127.0.0.1:${grpcPort}`, "--sandbox-listen", `127.0.0.1:${httpPort}`, "--data-dir", dataDir],
    { stdio: "ignore" },
  );
}

async function waitReady(via: Client): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await via.getToken("warmup");
    } catch (e) {
      if (e instanceof NotFound) return;
      if (i > 400) throw e;
      await sleep(50);
    }
  }
}

function stop(proc: ChildProcess): Promise<void> {
  return new Promise((ok) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return ok();
    proc.once("exit", () => ok());
    proc.kill("SIGTERM");
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  sandbox = `http://127.0.0.1:${httpPort}`;
  server = startServer(grpcPort, httpPort, mkdtempSync(join(tmpdir(), "tokend-ts-")));
  target = `127.0.0.1:${grpcPort}`;
  client = new Client(target);
  await waitReady(client);
});

after(() => {
  client.close();
  server.kill("SIGTERM");
});

test("get a token and force a refresh", async () => {
  const { id, issued } = await install("ts-1");
  const t = await client.getToken(id);
  assert.equal(t.accessToken, issued.access_token);
  assert.ok(t.expiresInSeconds > 1700);
  const { token: fresh, refreshed } = await client.forceRefresh(id, { version: t.version });
  assert.ok(refreshed);
  assert.equal(fresh.version, t.version + 1);
  const again = await client.forceRefresh(id, { version: t.version });
  assert.equal(again.refreshed, false);
  assert.equal(again.token.accessToken, fresh.accessToken);
});

test("endpoints may be host:port or URLs", async () => {
  assert.deepEqual(grpcTarget("http://h:1"), ["h:1", false]);
  assert.deepEqual(grpcTarget("https://h:1/"), ["h:1", true]);
  assert.deepEqual(grpcTarget("h:1"), ["h:1", false]);
  const viaUrl = new Client(`http://${target}`);
  await assert.rejects(viaUrl.getToken("ts-not-there"), NotFound);
  viaUrl.close();
});

test("errors are typed", async () => {
  await assert.rejects(client.getToken("ts-missing"), NotFound);
  await assert.rejects(client.getToken("not valid"), (e: unknown) => e instanceof InvalidArgument && e.field === "connection_id");
});

test("the watch stream reports RECONNECT_REQUIRED", async () => {
  const { id } = await install("ts-2");
  const events = client.watch(id);
  const first = await events.next();
  assert.equal(first.value?.kind, "snapshot");
  await post("/sandbox/revoke", { account_id: "ts-2" });
  await assert.rejects(client.forceRefresh(id), (e: unknown) => e instanceof ReconnectRequired && e.providerError === "invalid_grant" && e.cause === "REVOKED");
  for await (const e of events) {
    if (e.kind === "status_changed") {
      assert.ok(e.reconnectRequired);
      assert.equal(e.connection.lastError?.code, "invalid_grant");
      break;
    }
  }
  await events.return(undefined);
});

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

async function installMany(accounts: string[], via = client, base = sandbox): Promise<string[]> {
  const ids = [];
  for (const a of accounts) ids.push((await install(a, via, base)).id);
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
    [EventType.EVENT_TYPE_INSTALLED, EventType.EVENT_TYPE_INSTALLED, EventType.EVENT_TYPE_INSTALLED],
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
  assert.ok(events.every((e) => e.eventType === EventType.EVENT_TYPE_INSTALLED));
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
    client.watchAll({ statuses: ["reconnect_required"], connectionIdPrefixes: ["sandbox-ts-filter-"], providers: ["sandbox"] }),
  ).started();
  await installMany(["ts-filter-a2"]); // INSTALLED: filtered out
  for (const [account, id] of [
    ["ts-filter-b1", rrB],
    ["ts-filter-a1", rrA],
  ]) {
    await post("/sandbox/revoke", { account_id: account });
    await assert.rejects(client.forceRefresh(id), ReconnectRequired);
  }
  const [event] = await onlyA.take(1);
  await onlyA.quiet();
  assert.equal(event.connectionId, rrA);
  assert.equal(event.eventType, EventType.EVENT_TYPE_RECONNECT_REQUIRED);
  assert.equal(event.cause, ReconnectCause.RECONNECT_CAUSE_REVOKED);
  assert.equal(event.connection?.status, ConnectionStatus.CONNECTION_STATUS_RECONNECT_REQUIRED);
  assert.equal(event.connection?.lastError?.code, "invalid_grant");
  const events = await byStatus.take(2);
  await byStatus.quiet();
  assert.deepEqual(
    events.map((e) => e.connectionId),
    [rrB, rrA],
  );
  assert.ok(events.every((e) => e.eventType === EventType.EVENT_TYPE_RECONNECT_REQUIRED));
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
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), "tokend-ts-restart-"));
  const base = `http://127.0.0.1:${httpPort}`;
  let proc = startServer(grpcPort, httpPort, dataDir);
  const own = new Client(`127.0.0.1:${grpcPort}`);
  try {
    await waitReady(own);
    const stream = own.watchAll();
    const feed = await new Collector(stream).started();
    const [before] = await installMany(["ts-restart-1"], own, base);
    const [first] = await feed.take(1);
    assert.equal(first.connectionId, before);
    await stop(proc);
    await sleep(300); // the stream notices, and fails to reconnect for a while
    proc = startServer(grpcPort, httpPort, dataDir);
    await waitReady(own);
    const [after] = await installMany(["ts-restart-2"], own, base);
    const [second] = await feed.take(1, 15_000);
    await feed.quiet();
    assert.equal(second.connectionId, after);
    assert.equal(second.eventType, EventType.EVENT_TYPE_INSTALLED);
    assert.ok(second.sequence > first.sequence);
    assert.equal(stream.cursor, second.cursor);
    await feed.close();

    // A consumer that is not reading while the server restarts: the events
    // written while it was away come on its next read, resumed from its
    // cursor, none lost, none repeated.
    const idle = own.watchAll({ resumeAfter: second.cursor });
    const [third] = await installMany(["ts-restart-3"], own, base);
    assert.equal((await nextWithin(idle))?.connectionId, third);
    await stop(proc);
    proc = startServer(grpcPort, httpPort, dataDir);
    await waitReady(own);
    const missed = await installMany(["ts-restart-4", "ts-restart-5"], own, base);
    assert.equal((await nextWithin(idle))?.connectionId, missed[0]);
    assert.equal((await nextWithin(idle))?.connectionId, missed[1]);
    const rest = new Collector(idle);
    await rest.quiet();
    await rest.close();
  } finally {
    own.close();
    await stop(proc);
  }
});
