// TypeScript client for tokend: getToken, forceRefresh, watch as an async
// iterator, watchAll (the durable event feed, resumable by cursor), and typed
// errors built from the gRPC status and google.rpc.ErrorInfo.

import * as grpc from "@grpc/grpc-js";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import {
  AccessToken,
  Connection,
  ConnectionEvent,
  ConnectionStatus,
  EventType,
  ReconnectCause,
  TokenServiceClient,
  WatchConnectionsRequest,
  WatchEventType,
} from "./gen/tokend/v1/tokend";

export { Connection, ConnectionEvent, ConnectionStatus, EventType, ReconnectCause };

/** A tokend error: gRPC code, ErrorInfo reason and metadata. */
export class TokendError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly reason: string,
    readonly metadata: Record<string, string>,
    readonly retryAfterSeconds: number | undefined,
    readonly field: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}
export class NotFound extends TokendError {}
export class InvalidArgument extends TokendError {}
export class ReconnectRequired extends TokendError {
  get providerError(): string {
    return this.metadata["provider_error"] ?? "";
  }
  /** REVOKED, ROTATION_LOST (lost in a refresh cut off by a crash), NO_REFRESH_TOKEN, CONSENT_REQUIRED or INTERACTION_REQUIRED. */
  get cause(): string {
    return this.metadata["cause"] ?? "";
  }
}
export class ProviderMisconfigured extends TokendError {}
export class Unavailable extends TokendError {}
export class PermissionDenied extends TokendError {}
export class Unauthenticated extends TokendError {}
export class ResourceExhausted extends TokendError {}
/**
 * OUT_OF_RANGE, reason CURSOR_EXPIRED: the resume cursor is older than the
 * event log's retention, or from another log (a restored or replaced data
 * dir). Events were lost to this subscriber: resync from ListConnections, then
 * watch again from `oldestCursor` (or live).
 */
export class CursorExpired extends TokendError {
  get oldestCursor(): string {
    return this.metadata["oldest_cursor"] ?? "";
  }
}

interface Details {
  reason: string;
  metadata: Record<string, string>;
  retryAfterSeconds?: number;
  field: string;
}

/** Decodes google.rpc.Status details (ErrorInfo, RetryInfo, BadRequest) by field number. */
function decodeDetails(bin: Buffer | undefined): Details {
  const out: Details = { reason: "", metadata: {}, field: "" };
  if (!bin) return out;
  const status = new BinaryReader(bin);
  while (status.pos < status.len) {
    const [no, wt] = status.tag();
    if (no !== 3) {
      status.skip(wt);
      continue;
    }
    const any = new BinaryReader(status.bytes());
    let typeUrl = "";
    let value: Uint8Array = new Uint8Array();
    while (any.pos < any.len) {
      const [f, w] = any.tag();
      if (f === 1) typeUrl = any.string();
      else if (f === 2) value = any.bytes();
      else any.skip(w);
    }
    const r = new BinaryReader(value);
    if (typeUrl.endsWith("google.rpc.ErrorInfo")) {
      while (r.pos < r.len) {
        const [f, w] = r.tag();
        if (f === 1) out.reason = r.string();
        else if (f === 3) {
          const e = new BinaryReader(r.bytes());
          let k = "";
          let v = "";
          while (e.pos < e.len) {
            const [ef, ew] = e.tag();
            if (ef === 1) k = e.string();
            else if (ef === 2) v = e.string();
            else e.skip(ew);
          }
          out.metadata[k] = v;
        } else r.skip(w);
      }
    } else if (typeUrl.endsWith("google.rpc.RetryInfo")) {
      while (r.pos < r.len) {
        const [f, w] = r.tag();
        if (f === 1) {
          const d = new BinaryReader(r.bytes());
          let seconds = 0;
          let nanos = 0;
          while (d.pos < d.len) {
            const [df, dw] = d.tag();
            if (df === 1) seconds = Number(d.int64());
            else if (df === 2) nanos = d.int32();
            else d.skip(dw);
          }
          out.retryAfterSeconds = seconds + nanos / 1e9;
        } else r.skip(w);
      }
    } else if (typeUrl.endsWith("google.rpc.BadRequest")) {
      while (r.pos < r.len) {
        const [f, w] = r.tag();
        if (f === 1 && !out.field) {
          const v = new BinaryReader(r.bytes());
          while (v.pos < v.len) {
            const [vf, vw] = v.tag();
            if (vf === 1) out.field = v.string();
            else v.skip(vw);
          }
        } else r.skip(w);
      }
    }
  }
  return out;
}

function toError(e: grpc.ServiceError): TokendError {
  const raw = e.metadata?.get("grpc-status-details-bin")?.[0];
  const d = decodeDetails(typeof raw === "string" ? Buffer.from(raw, "base64") : raw);
  const args = [e.code, e.details, d.reason, d.metadata, d.retryAfterSeconds, d.field || (d.metadata["field"] ?? "")] as const;
  switch (e.code) {
    case grpc.status.NOT_FOUND:
      return new NotFound(...args);
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidArgument(...args);
    case grpc.status.FAILED_PRECONDITION:
      return d.reason === "RECONNECT_REQUIRED" ? new ReconnectRequired(...args) : new ProviderMisconfigured(...args);
    case grpc.status.UNAVAILABLE:
      return new Unavailable(...args);
    case grpc.status.PERMISSION_DENIED:
      return new PermissionDenied(...args);
    case grpc.status.UNAUTHENTICATED:
      return new Unauthenticated(...args);
    case grpc.status.RESOURCE_EXHAUSTED:
      return new ResourceExhausted(...args);
    case grpc.status.OUT_OF_RANGE:
      return d.reason === "CURSOR_EXPIRED" ? new CursorExpired(...args) : new TokendError(...args);
    default:
      return new TokendError(...args);
  }
}

export interface Token {
  connectionId: string;
  /** The secret: put it in an Authorization header, never in a log. */
  accessToken: string;
  tokenType: string;
  expiresInSeconds: number;
  version: number;
  scopes: string[];
  accountId: string;
}

function token(t: AccessToken | undefined): Token {
  if (!t) throw new Error("reply without a token");
  return {
    connectionId: t.connectionId,
    accessToken: t.accessToken,
    tokenType: t.tokenType,
    expiresInSeconds: Number(t.expiresInSeconds),
    version: Number(t.version),
    scopes: t.scopes,
    accountId: t.accountId,
  };
}

export type WatchKind = "snapshot" | "token_rotated" | "status_changed" | "refresh_failed" | "deleted";
export interface WatchEvent {
  kind: WatchKind;
  connection: Connection;
  reconnectRequired: boolean;
}

const KINDS: Partial<Record<WatchEventType, WatchKind>> = {
  [WatchEventType.WATCH_EVENT_TYPE_SNAPSHOT]: "snapshot",
  [WatchEventType.WATCH_EVENT_TYPE_TOKEN_ROTATED]: "token_rotated",
  [WatchEventType.WATCH_EVENT_TYPE_STATUS_CHANGED]: "status_changed",
  [WatchEventType.WATCH_EVENT_TYPE_REFRESH_FAILED]: "refresh_failed",
  [WatchEventType.WATCH_EVENT_TYPE_DELETED]: "deleted",
};

export type EventTypeName =
  | "installed"
  | "token_rotated"
  | "refresh_failed"
  | "reconnect_required"
  | "recovered"
  | "deleted"
  | "checkpoint";
export type StatusName = "active" | "reconnect_required";

export interface WatchAllOptions {
  /** Provider names, e.g. "hubspot". */
  providers?: string[];
  /** Connection ids starting with any of these. */
  connectionIdPrefixes?: string[];
  /** Names such as "reconnect_required", or EventType values. */
  eventTypes?: (EventType | EventTypeName)[];
  /** The connection's status after the event: "active", "reconnect_required", or ConnectionStatus values. */
  statuses?: (ConnectionStatus | StatusName)[];
  /** A persisted `EventStream.cursor`: replay what came after it, then go on live. */
  resumeAfter?: string;
  /** Without resumeAfter: start at the oldest retained event instead of live. */
  fromOldest?: boolean;
}

/** An enum value from its short name ("reconnect_required"), full name, or the number itself. */
function enumValue<E extends number>(value: E | string, all: Record<string, string | number>, prefix: string, what: string): E {
  if (typeof value === "number") return value;
  let name = value.trim().toUpperCase();
  if (!name.startsWith(prefix)) name = prefix + name;
  const n = all[name];
  if (typeof n !== "number") {
    const known = Object.keys(all)
      .filter((k) => k.startsWith(prefix) && !k.endsWith("_UNSPECIFIED"))
      .map((k) => k.slice(prefix.length).toLowerCase());
    throw new RangeError(`unknown ${what} ${JSON.stringify(value)}; expected one of: ${known.join(", ")}`);
  }
  return n as E;
}

// Codes after which a watchAll stream reconnects: the server went away
// (restart, network) rather than refusing the request.
const RECONNECT_CODES = new Set<number>([grpc.status.UNAVAILABLE]);
// Messages buffered per call before it is paused until the consumer catches up.
const HIGH_WATER = 64;
// Reconnect backoff of watchAll streams: doubles from the first to the last.
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;

interface Attempt {
  call: grpc.ClientReadableStream<ConnectionEvent>;
  queue: ConnectionEvent[];
  ended: boolean;
  error?: grpc.ServiceError;
}

/**
 * The stream of `Client.watchAll`: an async iterable of ConnectionEvents.
 *
 * Checkpoints are not yielded; like events they move `cursor`, the cursor of
 * the last message received, which is what to persist and pass back as
 * `resumeAfter`. When the server goes away (UNAVAILABLE, a restart) the stream
 * reconnects by itself with exponential backoff and resumes after `cursor`, so
 * no event is lost or repeated; it keeps retrying for as long as the server is
 * unreachable. Any other error is thrown as a TokendError (`CursorExpired` for
 * a cursor past the log's retention) and ends the stream. `close()` (or
 * leaving a for-await loop, or closing the Client) cancels the call and ends
 * the iteration.
 */
export class EventStream implements AsyncIterableIterator<ConnectionEvent> {
  private lastCursor?: string;
  private attempt?: Attempt;
  private isClosed = false;
  private delayMs = BACKOFF_FIRST_MS;
  private wake?: () => void;
  private tail: Promise<unknown> = Promise.resolve();

  /** @internal Use Client.watchAll. */
  constructor(
    private readonly open: (request: WatchConnectionsRequest) => grpc.ClientReadableStream<ConnectionEvent>,
    private readonly request: WatchConnectionsRequest,
    private readonly onClose: (stream: EventStream) => void = () => {},
  ) {
    this.current(); // open now: a live stream starts from here, not the first next()
  }

  /** The cursor of the last message received (event or checkpoint); undefined before the first. */
  get cursor(): string | undefined {
    return this.lastCursor;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  [Symbol.asyncIterator](): EventStream {
    return this;
  }

  /** The next event; calls are served in order. */
  next(): Promise<IteratorResult<ConnectionEvent, undefined>> {
    const result = this.tail.then(() => this.pull());
    this.tail = result.catch(() => undefined);
    return result;
  }

  async return(): Promise<IteratorResult<ConnectionEvent, undefined>> {
    this.close();
    return { done: true, value: undefined };
  }

  /** Cancels the call; a pending next() resolves as done. */
  close(): void {
    if (!this.isClosed) this.onClose(this);
    this.isClosed = true;
    const a = this.attempt;
    this.attempt = undefined;
    a?.call.cancel();
    this.wakeUp();
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private current(): Attempt | undefined {
    if (this.isClosed) return undefined;
    if (this.attempt) return this.attempt;
    let call: grpc.ClientReadableStream<ConnectionEvent>;
    try {
      call = this.open({ ...this.request, resumeAfter: this.lastCursor ?? this.request.resumeAfter });
    } catch (e) {
      this.close();
      throw e;
    }
    const a: Attempt = { call, queue: [], ended: false };
    const mine = () => this.attempt === a;
    call.on("data", (m: ConnectionEvent) => {
      a.queue.push(m);
      if (a.queue.length >= HIGH_WATER) call.pause();
      if (mine()) this.wakeUp();
    });
    // grpc-js emits a failed status as 'error' before the buffered messages
    // are delivered, then 'end' after them: remember it, act on it at the end.
    call.on("error", (e: grpc.ServiceError) => {
      a.error = e;
    });
    const end = () => {
      a.ended = true;
      if (mine()) this.wakeUp();
    };
    call.on("end", end);
    call.on("close", end);
    this.attempt = a;
    return a;
  }

  private async pull(): Promise<IteratorResult<ConnectionEvent, undefined>> {
    for (;;) {
      const a = this.current();
      if (!a) return { done: true, value: undefined };
      const m = a.queue.shift();
      if (m) {
        if (a.call.isPaused() && a.queue.length < HIGH_WATER / 2) a.call.resume();
        if (m.cursor) this.lastCursor = m.cursor;
        this.delayMs = BACKOFF_FIRST_MS;
        if (m.eventType === EventType.EVENT_TYPE_CHECKPOINT) continue;
        return { done: false, value: m };
      }
      if (!a.ended) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      // This call is over: the server ended it (as it does when shutting
      // down), it failed, or close() cancelled it.
      this.attempt = undefined;
      if (this.isClosed || a.error?.code === grpc.status.CANCELLED) {
        this.close();
        return { done: true, value: undefined };
      }
      if (a.error && !RECONNECT_CODES.has(a.error.code)) {
        this.close();
        throw toError(a.error);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.delayMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.delayMs = Math.min(this.delayMs * 2, BACKOFF_MAX_MS);
    }
  }
}

// Reconnect to a server that went away within seconds (gRPC's default backoff
// grows to two minutes), so watchAll streams resume soon after a restart.
const CHANNEL_OPTIONS = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 5_000,
};

export interface ClientOptions {
  apiKey?: string;
  credentials?: grpc.ChannelCredentials;
  /** Deadline of each unary call, in milliseconds (default 10 000). */
  timeoutMs?: number;
}

/** The gRPC address of an endpoint given as `host:port` or a URL, and whether the URL asked for TLS. */
export function grpcTarget(endpoint: string): [string, boolean] {
  const e = endpoint.trim().replace(/\/+$/, "");
  if (e.startsWith("https://")) return [e.slice("https://".length), true];
  if (e.startsWith("http://")) return [e.slice("http://".length), false];
  return [e, false];
}

export class Client {
  private readonly stub: TokenServiceClient;
  private readonly timeoutMs: number;
  private readonly apiKey?: string;
  private readonly streams = new Set<EventStream>();
  private closed = false;

  /** `target` is `host:port` or `http(s)://host:port`, as every tokend client accepts. */
  constructor(target = "127.0.0.1:50051", options: ClientOptions = {}) {
    const [address, tls] = grpcTarget(target);
    const credentials = options.credentials ?? (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
    this.stub = new TokenServiceClient(address, credentials, CHANNEL_OPTIONS);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.apiKey = options.apiKey;
  }

  /** Closes the channel; open watchAll streams end. */
  close(): void {
    this.closed = true;
    for (const s of [...this.streams]) s.close();
    this.stub.close();
  }

  private meta(): grpc.Metadata {
    const m = new grpc.Metadata();
    if (this.apiKey) m.set("x-api-key", this.apiKey);
    return m;
  }

  private unary<Req, Res>(
    method: (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown,
    request: Req,
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(this.stub, request, this.meta(), { deadline: Date.now() + this.timeoutMs }, (e, r) =>
        e ? reject(toError(e)) : resolve(r),
      );
    });
  }

  async getToken(connectionId: string, minTtlSeconds = 0): Promise<Token> {
    const r = await this.unary(this.stub.getToken, { connectionId, minTtlSeconds });
    return token(r.token);
  }

  async forceRefresh(
    connectionId: string,
    rejected?: { version: number } | { accessToken: string },
  ): Promise<{ token: Token; refreshed: boolean }> {
    const r = await this.unary(this.stub.forceRefresh, {
      connectionId,
      rejectedVersion: rejected && "version" in rejected ? rejected.version : undefined,
      rejectedAccessToken: rejected && "accessToken" in rejected ? rejected.accessToken : undefined,
    });
    return { token: token(r.token), refreshed: r.refreshed };
  }

  async installImport(i: {
    provider: string;
    accountId: string;
    accessToken: string;
    refreshToken: string;
    expiresInSeconds: number;
    connectionId?: string;
    scopes?: string[];
    /** Replace a connection holding another account (needs connectionId). */
    replace?: boolean;
    /** Fill the provider's per-connection endpoint, e.g. { subdomain: "acme" }. */
    params?: Record<string, string>;
  }): Promise<Connection | undefined> {
    const r = await this.unary(this.stub.install, {
      provider: i.provider,
      connectionId: i.connectionId ?? "",
      accountId: i.accountId,
      replace: i.replace ?? false,
      params: i.params ?? {},
      tokenImport: {
        accessToken: i.accessToken,
        refreshToken: i.refreshToken,
        expiresInSeconds: i.expiresInSeconds,
        scopes: i.scopes ?? [],
        tokenType: "",
      },
    });
    return r.connection;
  }

  async getConnection(connectionId: string): Promise<Connection | undefined> {
    return (await this.unary(this.stub.getConnection, { connectionId })).connection;
  }

  /** The current state, then every change; ends after "deleted". */
  async *watch(connectionId: string): AsyncGenerator<WatchEvent> {
    const call = this.stub.watchConnection({ connectionId }, this.meta());
    try {
      for await (const m of call) {
        const kind = KINDS[m.eventType as WatchEventType];
        if (!kind || !m.connection) continue;
        yield {
          kind,
          connection: m.connection,
          reconnectRequired: m.connection.status === ConnectionStatus.CONNECTION_STATUS_RECONNECT_REQUIRED,
        };
        if (kind === "deleted") return;
      }
    } catch (e) {
      const err = e as grpc.ServiceError;
      if (err.code === grpc.status.CANCELLED) return;
      throw toError(err);
    } finally {
      call.cancel();
    }
  }

  /**
   * The events of every connection this caller may see, from tokend's durable
   * event log, as an EventStream (an async iterable of ConnectionEvents with a
   * `cursor` to persist). Filters: within one, any value matches; across them,
   * all must; empty ones match everything. With `resumeAfter` the stream
   * replays what came after that cursor, then goes on live; without it, it
   * starts live, or with `fromOldest` at the oldest retained event. Errors
   * surface while iterating: InvalidArgument for a malformed cursor,
   * CursorExpired for one past retention. Closing the Client ends the stream.
   */
  watchAll(options: WatchAllOptions = {}): EventStream {
    if (this.closed) throw new Error("the Client is closed");
    const request: WatchConnectionsRequest = {
      filter: {
        providers: options.providers ?? [],
        connectionIdPrefixes: options.connectionIdPrefixes ?? [],
        eventTypes: (options.eventTypes ?? []).map((t) => enumValue<EventType>(t, EventType, "EVENT_TYPE_", "event type")),
        statuses: (options.statuses ?? []).map((t) =>
          enumValue<ConnectionStatus>(t, ConnectionStatus, "CONNECTION_STATUS_", "status"),
        ),
      },
      resumeAfter: options.resumeAfter ?? "",
      fromOldest: options.fromOldest ?? false,
    };
    const stream = new EventStream(
      (r) => this.stub.watchConnections(r, this.meta()),
      request,
      (s) => this.streams.delete(s),
    );
    if (!stream.closed) this.streams.add(stream);
    return stream;
  }
}
