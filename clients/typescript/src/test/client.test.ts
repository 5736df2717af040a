// The TypeScript client against a live tokend with the sandbox provider: get
// a token, force a refresh, hear RECONNECT_REQUIRED on the watch stream.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { Client, InvalidArgument, NotFound, ReconnectRequired, grpcTarget } from "../index";

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

async function post(path: string, body: object): Promise<any> {
  const r = await fetch(sandbox + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  return text ? JSON.parse(text) : {};
}

async function install(account: string): Promise<{ id: string; issued: any }> {
  const issued = await post("/sandbox/tokens", { account_id: account, scopes: ["crm"] });
  await client.installImport({
    provider: "sandbox",
    accountId: account,
    accessToken: issued.access_token,
    refreshToken: issued.refresh_token,
    expiresInSeconds: 1800,
  });
  return { id: `sandbox-${account}`, issued };
}

before(async () => {
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  sandbox = `http://127.0.0.1:${httpPort}`;
  server = spawn(
    binary,
    ["serve", "--sandbox", "--listen", `127.0.0.1:${grpcPort}`, "--sandbox-listen", `127.0.0.1:${httpPort}`, "--data-dir", mkdtempSync(join(tmpdir(), "tokend-ts-"))],
    { stdio: "ignore" },
  );
  target = `127.0.0.1:${grpcPort}`;
  client = new Client(target);
  for (let i = 0; ; i++) {
    try {
      await client.getToken("warmup");
    } catch (e) {
      if (e instanceof NotFound) break;
      if (i > 200) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
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
