// A live tokend for the tests: `tokend serve --sandbox` on free loopback
// ports, its sandbox OAuth provider's helpers (mint, revoke, stats) and the
// broker's own RPC counters (admin /metrics). TOKEND_BIN must name the
// binary: a missing one fails the run, never skips it.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Client, type ClientOptions } from "@tokend/client";

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function tokendBin(): string {
  const bin = process.env.TOKEND_BIN;
  if (!bin) throw new Error("TOKEND_BIN is not set: point it at the tokend binary (cargo build --bin tokend)");
  if (!existsSync(bin)) throw new Error(`TOKEND_BIN=${bin} does not exist: build it (cargo build --bin tokend)`);
  return bin;
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
  });
}

export interface BrokerOptions {
  /** --sandbox-token-lifetime-secs */
  tokenLifetimeSecs?: number;
  /** A config file's text, given the sandbox's base URL (for providers that use it). */
  config?: (sandbox: string) => string;
  /** More environment, e.g. client secrets the config names. */
  env?: Record<string, string>;
}

export interface Issued {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  account_id: string;
}

// tokend runs under a small sh that holds a pipe from this process: when the
// pipe closes, because stop() closed it or because this process died in any
// way (a failed hook, a killed runner, SIGKILL), the sh stops tokend. No
// broker outlives its test file. The sh exits with tokend's status.
const WATCHDOG = `exec 3<&0
"$0" "$@" </dev/null & child=$!
(read _ <&3; kill -TERM $child 2>/dev/null) &
wait $child`;

export class Broker {
  private proc?: ChildProcess;
  private readonly clients: Client[] = [];
  readonly dataDir: string;

  private constructor(
    readonly grpcPort: number,
    readonly httpPort: number,
    readonly adminPort: number,
    private readonly options: BrokerOptions,
  ) {
    this.dataDir = mkdtempSync(join(tmpdir(), "tokend-ts-"));
  }

  static async start(options: BrokerOptions = {}): Promise<Broker> {
    const b = new Broker(await freePort(), await freePort(), await freePort(), options);
    await b.boot();
    return b;
  }

  /** `host:port` of the gRPC listener. */
  get target(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  /** The sandbox provider's base URL; its upstream API is `${sandbox}/api/me`. */
  get sandbox(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  get admin(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  private get logFile(): string {
    return join(this.dataDir, "..", `${this.dataDir.split("/").pop()}.log`);
  }

  private async boot(): Promise<void> {
    const args = [
      "serve",
      "--sandbox",
      "--listen",
      this.target,
      "--sandbox-listen",
      `127.0.0.1:${this.httpPort}`,
      "--admin-listen",
      `127.0.0.1:${this.adminPort}`,
      "--data-dir",
      join(this.dataDir, "data"),
    ];
    if (this.options.tokenLifetimeSecs)
      args.push("--sandbox-token-lifetime-secs", String(this.options.tokenLifetimeSecs));
    if (this.options.config) {
      const path = join(this.dataDir, "tokend.toml");
      writeFileSync(path, this.options.config(this.sandbox));
      args.push("--config", path);
    }
    const log = openSync(this.logFile, "a");
    const proc = spawn("sh", ["-c", WATCHDOG, tokendBin(), ...args], {
      stdio: ["pipe", log, log],
      env: { ...process.env, RUST_LOG: "warn", ...this.options.env },
    });
    this.proc = proc;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`tokend exited at start (${proc.exitCode ?? proc.signalCode}):\n${this.logTail()}`);
      }
      try {
        const r = await fetch(`${this.admin}/readyz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`tokend not ready after 30 s:\n${this.logTail()}`);
      await sleep(50);
    }
  }

  logTail(): string {
    try {
      return readFileSync(this.logFile, "utf8").split("\n").slice(-30).join("\n");
    } catch {
      return "";
    }
  }

  /** SIGTERM (closing the watchdog's pipe), and wait for the exit. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    await new Promise<void>((ok, fail) => {
      const stuck = setTimeout(() => fail(new Error(`tokend did not stop in 10 s:\n${this.logTail()}`)), 10_000);
      proc.once("exit", () => {
        clearTimeout(stuck);
        ok();
      });
      proc.stdin?.end();
    });
  }

  /** Stops and starts again on the same ports and data dir. */
  async restart(pauseMs = 300): Promise<void> {
    await this.stop();
    await sleep(pauseMs);
    await this.boot();
  }

  /** A Client of this broker, closed by close(). */
  client(options: ClientOptions = {}, endpoint = this.target): Client {
    const c = new Client(endpoint, options);
    this.clients.push(c);
    return c;
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.close();
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
    rmSync(this.logFile, { force: true });
  }

  private async post(path: string, body: object): Promise<any> {
    const r = await fetch(this.sandbox + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`sandbox ${path}: HTTP ${r.status} ${await r.text()}`);
    const text = await r.text();
    return text ? JSON.parse(text) : {};
  }

  /** A grant minted at the sandbox, as an OAuth flow would end with. */
  mint(account: string): Promise<Issued> {
    return this.post("/sandbox/tokens", { account_id: account, scopes: ["crm"] });
  }

  /** Mints a grant and installs it by token import; the connection id is "sandbox-<account>". */
  async install(client: Client, account: string): Promise<{ id: string; issued: Issued }> {
    const issued = await this.mint(account);
    const { connection } = await client.install({
      provider: "sandbox",
      accountId: account,
      tokenImport: {
        accessToken: issued.access_token,
        refreshToken: issued.refresh_token,
        expiresInSeconds: issued.expires_in,
        scopes: ["crm"],
      },
    });
    return { id: connection.connectionId, issued };
  }

  /** The account revokes the grant at the provider: its next refresh is invalid_grant. */
  async revoke(account: string): Promise<void> {
    await this.post("/sandbox/revoke", { account_id: account });
  }

  /** The sandbox's counters: token_requests is every call to its token endpoint. */
  async stats(): Promise<{ token_requests: number; api_calls_ok: number; api_calls_rejected: number }> {
    return (await fetch(`${this.sandbox}/sandbox/stats`)).json() as any;
  }

  /** Calls of one RPC the broker has counted (tokend_rpc_requests_total, summed over codes). */
  async rpcCount(method: string): Promise<number> {
    const text = await (await fetch(`${this.admin}/metrics`)).text();
    let sum = 0;
    for (const line of text.split("\n")) {
      if (line.startsWith("tokend_rpc_requests_total{") && line.includes(`method="${method}"`)) {
        sum += Number(line.slice(line.lastIndexOf(" ") + 1));
      }
    }
    return sum;
  }
}
