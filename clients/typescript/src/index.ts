// TypeScript client for tokend: getToken, forceRefresh, watch as an async
// iterator, and typed errors built from the gRPC status and google.rpc.ErrorInfo.

import * as grpc from "@grpc/grpc-js";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import {
  AccessToken,
  Connection,
  ConnectionStatus,
  TokenServiceClient,
  WatchEventType,
} from "./gen/tokend/v1/tokend";

export { Connection, ConnectionStatus };

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
  /** REVOKED, ROTATION_LOST (lost in a refresh cut off by a crash) or NO_REFRESH_TOKEN. */
  get cause(): string {
    return this.metadata["cause"] ?? "";
  }
}
export class ProviderMisconfigured extends TokendError {}
export class Unavailable extends TokendError {}
export class PermissionDenied extends TokendError {}
export class Unauthenticated extends TokendError {}
export class ResourceExhausted extends TokendError {}

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

  /** `target` is `host:port` or `http(s)://host:port`, as every tokend client accepts. */
  constructor(target = "127.0.0.1:50051", options: ClientOptions = {}) {
    const [address, tls] = grpcTarget(target);
    const credentials = options.credentials ?? (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
    this.stub = new TokenServiceClient(address, credentials);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.apiKey = options.apiKey;
  }

  close(): void {
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
  }): Promise<Connection | undefined> {
    const r = await this.unary(this.stub.install, {
      provider: i.provider,
      connectionId: i.connectionId ?? "",
      accountId: i.accountId,
      replace: i.replace ?? false,
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
}
