// The tokend client: every RPC with a deadline, typed errors, retries with
// backoff while the broker is unreachable, a token cache with singleflight,
// and watch streams that outlive broker restarts.

import * as grpc from "@grpc/grpc-js";

import { TokenCache } from "./cache.js";
import { NotFound, ReconnectRequired, TokendError, TransportError, toError } from "./errors.js";
import { EventStream, type WatchAllOptions, watchAllRequest } from "./events.js";
import * as pb from "./gen/tokend/v1/tokend.js";
import { BACKOFF_FIRST_MS } from "./stream.js";
import {
  type Connection,
  type ConnectionEvent,
  type ConnectionStatus,
  Token,
  type WatchEvent,
  connectionFromPb,
  enumValue,
} from "./types.js";
import { WatchStream } from "./watch.js";

/** TLS towards tokend; with `cert` and `key`, mutual TLS. */
export interface TlsOptions {
  /** PEM of the CA that signed tokend's certificate (default: the system's roots). */
  ca?: string | Buffer;
  /** PEM client certificate chain, for mutual TLS (with `key`). */
  cert?: string | Buffer;
  /** PEM private key of `cert`. */
  key?: string | Buffer;
  /** The name to check tokend's certificate against, when not the host dialled. */
  serverName?: string;
}

export interface ClientOptions {
  /** Sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /** TLS (implied by an https:// endpoint). */
  tls?: TlsOptions;
  /** Channel credentials built by the caller; overrides `tls`. */
  credentials?: grpc.ChannelCredentials;
  /** Deadline of each unary call attempt, in milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Retries of a unary call that could not reach the broker, with backoff from 100 ms (default 5). */
  transportRetries?: number;
  /** `token()` hands out a cached token only while more than this is left, capped at a quarter of its lifetime (default 30 000 ms). */
  cacheMarginMs?: number;
  /** Most connections whose tokens are cached (default 10 000); past it the least recently used is dropped. */
  cacheCapacity?: number;
  /** More grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

/** What forceRefresh names as rejected upstream: the token's version (preferred), or the token itself. */
export type Rejected = { version: number } | { accessToken: string };

/** Install's grant: an authorization code, an imported token set, or neither for a client-credentials provider. */
export interface InstallOptions {
  /** A provider name from tokend's configuration, e.g. "hubspot". */
  provider: string;
  /** Default: "<provider>-<accountId>". Required for client-credentials connections without an accountId. */
  connectionId?: string;
  /** The provider-side account id; required for token imports without a connectionId. */
  accountId?: string;
  authorizationCode?: { code: string; redirectUri?: string; codeVerifier?: string };
  tokenImport?: {
    accessToken: string;
    refreshToken?: string;
    /** Seconds of validity left on accessToken. */
    expiresInSeconds?: number;
    scopes?: string[];
    tokenType?: string;
  };
  /** Replace a connection that holds another account's grant (needs connectionId). */
  replace?: boolean;
  /** Fill the provider's per-connection endpoints, e.g. { subdomain: "acme" }. */
  params?: Record<string, string>;
  /** Replace a stored record tokend cannot read (refused with RECORD_UNREADABLE otherwise). */
  force?: boolean;
}

export interface InstallResult {
  connection: Connection;
  /** False when an existing connection was replaced. */
  created: boolean;
  /** True when this was a retry of an install already applied. */
  replayed: boolean;
}

export interface ListConnectionsOptions {
  /** Only this provider's connections. */
  provider?: string;
  /** Only connections with this status. */
  status?: Exclude<ConnectionStatus, "UNSPECIFIED"> | Lowercase<Exclude<ConnectionStatus, "UNSPECIFIED">>;
  /** Connections per page, 1..1000 (default 100). */
  pageSize?: number;
}

export interface ConnectionPage {
  connections: Connection[];
  /** Empty on the last page. */
  nextPageToken: string;
}

/** The gRPC address of an endpoint given as `host:port` or a URL, and whether the URL asked for TLS. */
export function grpcTarget(endpoint: string): [string, boolean] {
  const e = endpoint.trim().replace(/\/+$/, "");
  if (e.startsWith("https://")) return [e.slice("https://".length), true];
  if (e.startsWith("http://")) return [e.slice("http://".length), false];
  return [e, false];
}

const pem = (v: string | Buffer | undefined): Buffer | null => (v === undefined ? null : Buffer.from(v));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Unary<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

export class Client {
  private readonly stub: pb.TokenServiceClient;
  private readonly address: string;
  private readonly timeoutMs: number;
  private readonly transportRetries: number;
  private readonly cache: TokenCache;
  private readonly streams = new Set<{ close(): void }>();
  readonly #apiKey?: string;
  private closed = false;

  /** `endpoint` is `host:port` or `http(s)://host:port`, as every tokend client accepts. The channel connects lazily. */
  constructor(endpoint = "127.0.0.1:50051", options: ClientOptions = {}) {
    const [address, https] = grpcTarget(endpoint);
    this.address = address;
    const tls = options.tls ?? (https ? {} : undefined);
    if (tls && (tls.cert === undefined) !== (tls.key === undefined)) {
      throw new TypeError("tls.cert and tls.key go together");
    }
    const credentials =
      options.credentials ??
      (tls ? grpc.credentials.createSsl(pem(tls.ca), pem(tls.key), pem(tls.cert)) : grpc.credentials.createInsecure());
    this.stub = new pb.TokenServiceClient(address, credentials, {
      // Reconnect to a broker that went away within seconds (gRPC's default
      // backoff grows to two minutes).
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 5_000,
      ...(tls?.serverName ? { "grpc.ssl_target_name_override": tls.serverName } : {}),
      ...options.channelOptions,
    });
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.transportRetries = options.transportRetries ?? 5;
    this.#apiKey = options.apiKey;
    this.cache = new TokenCache(
      (id) => this.getToken(id),
      options.cacheMarginMs ?? 30_000,
      options.cacheCapacity ?? 10_000,
    );
  }

  /** Closes the channel; open watch and watchAll streams end. */
  close(): void {
    this.closed = true;
    for (const s of [...this.streams]) s.close();
    this.stub.close();
    this.cache.clear();
  }

  toString(): string {
    return `tokend.Client(${this.address})`;
  }

  private metadata(): grpc.Metadata {
    const m = new grpc.Metadata();
    if (this.#apiKey) m.set("authorization", `Bearer ${this.#apiKey}`);
    return m;
  }

  private once<Req, Res>(method: Unary<Req, Res>, request: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(this.stub, request, this.metadata(), { deadline: Date.now() + this.timeoutMs }, (e, r) =>
        e ? reject(toError(e)) : resolve(r),
      );
    });
  }

  /**
   * One RPC: retried with backoff while the broker is unreachable (no status
   * from tokend; an UNAVAILABLE with RetryInfo is an answer and is thrown as
   * Unavailable); a ReconnectRequired or NotFound evicts the connection's
   * cached token.
   */
  private async call<Req, Res>(method: Unary<Req, Res>, request: Req, connectionId?: string): Promise<Res> {
    if (this.closed) throw new TokendError(grpc.status.CANCELLED, "the Client is closed");
    let delay = BACKOFF_FIRST_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once(method, request);
      } catch (e) {
        const err = toError(e);
        if ((err instanceof ReconnectRequired || err instanceof NotFound) && connectionId) {
          this.cache.evict(connectionId);
        }
        if (!(err instanceof TransportError) || attempt >= this.transportRetries || this.closed) {
          if (err instanceof TransportError) {
            throw new TransportError(err.code, `cannot reach tokend at ${this.address}: ${err.message}`);
          }
          throw err;
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 2_000);
      }
    }
  }

  /** A token with at least `minTtlSeconds` (or the provider's refresh buffer) left, straight from the broker. */
  async getToken(connectionId: string, minTtlSeconds = 0): Promise<Token> {
    const sent = performance.now();
    const r = await this.call(this.stub.getToken, { connectionId, minTtlSeconds }, connectionId);
    if (!r.token) throw new TokendError(grpc.status.INTERNAL, "reply without a token");
    return new Token(r.token, sent);
  }

  /**
   * A valid token from the local cache, asking the broker only when less than
   * min(cacheMarginMs, a quarter of its lifetime) is left. Concurrent callers
   * of one connection share a single broker call.
   */
  token(connectionId: string): Promise<Token> {
    if (this.closed) return Promise.reject(new TokendError(grpc.status.CANCELLED, "the Client is closed"));
    return this.cache.get(connectionId);
  }

  /** How many connections' tokens are cached now. */
  get cachedConnections(): number {
    return this.cache.size;
  }

  /**
   * Replaces a token the upstream API rejected: pass the version it came with
   * (or a Token). When a newer token is already stored it comes back with
   * `refreshed: false` and no provider call. Without `rejected` tokend
   * refreshes unconditionally (at most once per provider's interval).
   */
  async forceRefresh(connectionId: string, rejected?: Rejected): Promise<{ token: Token; refreshed: boolean }> {
    const sent = performance.now();
    const request: pb.ForceRefreshRequest = { connectionId };
    if (rejected && "version" in rejected) request.rejectedVersion = rejected.version;
    else if (rejected && "accessToken" in rejected) request.rejectedAccessToken = rejected.accessToken;
    const r = await this.call(this.stub.forceRefresh, request, connectionId);
    if (!r.token) throw new TokendError(grpc.status.INTERNAL, "reply without a token");
    const token = new Token(r.token, sent);
    // The cache must not hand out the rejected token again.
    this.cache.put(token);
    return { token, refreshed: r.refreshed };
  }

  /** Creates (or replaces) a connection: by code exchange, token import, or for a client-credentials provider with neither. */
  async install(options: InstallOptions): Promise<InstallResult> {
    if (options.authorizationCode && options.tokenImport) {
      throw new TypeError("install takes authorizationCode or tokenImport, not both");
    }
    const { authorizationCode: code, tokenImport: imported } = options;
    const request: pb.InstallRequest = {
      provider: options.provider,
      connectionId: options.connectionId ?? "",
      accountId: options.accountId ?? "",
      replace: options.replace ?? false,
      params: { ...options.params },
      force: options.force ?? false,
    };
    if (code) {
      request.authorizationCode = {
        code: code.code,
        redirectUri: code.redirectUri ?? "",
        codeVerifier: code.codeVerifier ?? "",
      };
    }
    if (imported) {
      request.tokenImport = {
        accessToken: imported.accessToken,
        refreshToken: imported.refreshToken ?? "",
        expiresInSeconds: imported.expiresInSeconds ?? 0,
        scopes: imported.scopes ?? [],
        tokenType: imported.tokenType ?? "",
      };
    }
    const r = await this.call(this.stub.install, request);
    if (!r.connection) throw new TokendError(grpc.status.INTERNAL, "reply without a connection");
    // A new grant: whatever was cached for the id is stale.
    this.cache.evict(r.connection.connectionId);
    return { connection: connectionFromPb(r.connection), created: r.created, replayed: r.replayed };
  }

  /** A connection's metadata: status, last provider error, refresh times. Never a secret. */
  async getConnection(connectionId: string): Promise<Connection> {
    const r = await this.call(this.stub.getConnection, { connectionId }, connectionId);
    if (!r.connection) throw new TokendError(grpc.status.INTERNAL, "reply without a connection");
    return connectionFromPb(r.connection);
  }

  /** One page of connections, in id order. */
  async listConnectionsPage(options: ListConnectionsOptions & { pageToken?: string } = {}): Promise<ConnectionPage> {
    const r = await this.call(this.stub.listConnections, {
      pageSize: options.pageSize ?? 0,
      pageToken: options.pageToken ?? "",
      provider: options.provider ?? "",
      status: options.status
        ? enumValue<pb.ConnectionStatus>(options.status, pb.ConnectionStatus, "CONNECTION_STATUS_", "status")
        : pb.ConnectionStatus.CONNECTION_STATUS_UNSPECIFIED,
    });
    return { connections: r.connections.map(connectionFromPb), nextPageToken: r.nextPageToken };
  }

  /** Every connection (optionally of a provider, with a status), fetching page after page as the iteration goes. */
  async *listConnections(options: ListConnectionsOptions = {}): AsyncGenerator<Connection, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listConnectionsPage({ ...options, pageToken });
      yield* page.connections;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /**
   * Forgets a connection and its tokens; watchers get DELETED. A record tokend
   * cannot read is removed only with `{ force: true }` (RECORD_UNREADABLE otherwise).
   */
  async deleteConnection(connectionId: string, options: { force?: boolean } = {}): Promise<void> {
    await this.call(this.stub.deleteConnection, { connectionId, force: options.force ?? false }, connectionId);
    this.cache.evict(connectionId);
  }

  private track<S extends { close(): void; closed: boolean }>(stream: S): S {
    if (!stream.closed) this.streams.add(stream);
    return stream;
  }

  /** Evicts the cached token of a connection an event says needs reconnecting (or is gone). */
  private observe(connectionId: string, gone: boolean): void {
    if (gone) this.cache.evict(connectionId);
  }

  /**
   * Watches one connection: its current state (SNAPSHOT), then every change.
   * Re-subscribes with backoff when the broker restarts (yielding a fresh
   * SNAPSHOT); ends after DELETED, on close(), or by throwing (NotFound,
   * PermissionDenied...). An event with status RECONNECT_REQUIRED evicts the
   * connection's cached token.
   */
  watch(connectionId: string): WatchStream {
    if (this.closed) throw new TokendError(grpc.status.CANCELLED, "the Client is closed");
    return this.track(
      new WatchStream(
        connectionId,
        () => this.stub.watchConnection({ connectionId }, this.metadata()),
        (e: WatchEvent) => this.observe(e.connection.connectionId, e.reconnectRequired || e.kind === "DELETED"),
        (s) => this.streams.delete(s),
      ),
    );
  }

  /**
   * The events of every connection this caller may see, from tokend's durable
   * event log, as an EventStream (an async iterable of ConnectionEvents with a
   * `cursor` to persist). Filters: within one, any value matches; across them,
   * all must. With `resumeAfter` the stream replays what came after that
   * cursor, then goes on live; without it, it starts live, or with
   * `fromOldest` at the oldest retained event. Errors surface while
   * iterating: InvalidArgument for a malformed cursor, CursorExpired for one
   * past retention.
   */
  watchAll(options: WatchAllOptions = {}): EventStream {
    if (this.closed) throw new TokendError(grpc.status.CANCELLED, "the Client is closed");
    return this.track(
      new EventStream(
        (r) => this.stub.watchConnections(r, this.metadata()),
        watchAllRequest(options),
        (e: ConnectionEvent) =>
          this.observe(
            e.connectionId,
            e.eventType === "RECONNECT_REQUIRED" ||
              e.eventType === "DELETED" ||
              e.connection?.status === "RECONNECT_REQUIRED",
          ),
        (s) => this.streams.delete(s),
      ),
    );
  }
}
