// The SDK's own types: what the generated protobuf messages become at the
// API's edge. Enums are names ("ACTIVE", "RECONNECT_REQUIRED"), never numbers;
// 64-bit counters are numbers; absent timestamps are undefined; tokens hide
// their secret from logs.

import { inspect } from "node:util";

import * as pb from "./gen/tokend/v1/tokend.js";

export type ConnectionStatus = "UNSPECIFIED" | "ACTIVE" | "RECONNECT_REQUIRED";
export type ReconnectCause =
  "REVOKED" | "ROTATION_LOST" | "NO_REFRESH_TOKEN" | "CONSENT_REQUIRED" | "INTERACTION_REQUIRED";
export type ErrorClass = "UNSPECIFIED" | "REVOKED" | "CLIENT_MISCONFIGURED" | "RATE_LIMITED" | "TRANSIENT";
export type EventType =
  | "UNSPECIFIED"
  | "INSTALLED"
  | "TOKEN_ROTATED"
  | "REFRESH_FAILED"
  | "RECONNECT_REQUIRED"
  | "RECOVERED"
  | "DELETED"
  | "CHECKPOINT";
export type WatchEventKind = "SNAPSHOT" | "TOKEN_ROTATED" | "STATUS_CHANGED" | "REFRESH_FAILED" | "DELETED";

/** The name of a generated enum value without its prefix; `fallback` for 0 and values this SDK does not know. */
function enumName<N extends string>(all: object, value: number, prefix: string, fallback: N): N {
  const name = (all as Record<number, string | undefined>)[value];
  if (value <= 0 || !name?.startsWith(prefix)) return fallback;
  return name.slice(prefix.length) as N;
}

/**
 * The generated enum value for a name: "reconnect_required",
 * "RECONNECT_REQUIRED" and the full "EVENT_TYPE_RECONNECT_REQUIRED" all work.
 * Throws a RangeError listing the known names otherwise.
 */
export function enumValue<E extends number>(value: string, all: object, prefix: string, what: string): E {
  let name = value.trim().toUpperCase();
  if (!name.startsWith(prefix)) name = prefix + name;
  const n = (all as Record<string, string | number>)[name];
  if (typeof n !== "number" || n <= 0) {
    const known = Object.keys(all)
      .filter((k) => k.startsWith(prefix) && !k.endsWith("_UNSPECIFIED"))
      .map((k) => k.slice(prefix.length));
    throw new RangeError(`unknown ${what} ${JSON.stringify(value)}; expected one of: ${known.join(", ")}`);
  }
  return n as E;
}

/** The last failure tokend saw from a provider. Never a secret. */
export interface ProviderError {
  errorClass: ErrorClass;
  /** The provider's error code: "invalid_grant", "BAD_REFRESH_TOKEN", "http_503". */
  code: string;
  message: string;
  /** The provider's correlation or request id. */
  correlationId: string;
  /** HTTP status of the provider's answer; 0 when none arrived. */
  httpStatus: number;
  occurredAt?: Date;
}

/** A connection's metadata (one OAuth grant). Never a secret. */
export interface Connection {
  connectionId: string;
  provider: string;
  /** The provider-side account: HubSpot portal id, Salesforce org, ... */
  accountId: string;
  status: ConnectionStatus;
  /** Grows by one with every change of the token set. */
  version: number;
  scopes: string[];
  tokenType: string;
  accessTokenExpiresAt?: Date;
  lastRefreshAt?: Date;
  /** Set while the last provider call failed, and kept for a revoked one. */
  lastError?: ProviderError;
  createdAt?: Date;
  updatedAt?: Date;
  /** When the background refresher will next renew the token, if it will. */
  nextRefreshAt?: Date;
  /** Why the connection needs reconnecting, when it does. */
  reconnectCause?: ReconnectCause;
  /** The parameters given at install, e.g. { subdomain: "acme" }. */
  params: Record<string, string>;
  /** What the provider said about the connection beside the tokens, e.g. Salesforce's instance_url. */
  metadata: Record<string, string>;
}

function providerError(e: pb.ProviderError | undefined): ProviderError | undefined {
  if (!e) return undefined;
  return {
    errorClass: enumName<ErrorClass>(pb.ErrorClass, e.errorClass, "ERROR_CLASS_", "UNSPECIFIED"),
    code: e.code,
    message: e.message,
    correlationId: e.correlationId,
    httpStatus: e.httpStatus,
    occurredAt: e.occurredAt,
  };
}

function reconnectCause(c: pb.ReconnectCause): ReconnectCause | undefined {
  const name = enumName<ReconnectCause | "UNSPECIFIED">(pb.ReconnectCause, c, "RECONNECT_CAUSE_", "UNSPECIFIED");
  return name === "UNSPECIFIED" ? undefined : name;
}

/** @internal */
export function connectionFromPb(c: pb.Connection): Connection {
  return {
    connectionId: c.connectionId,
    provider: c.provider,
    accountId: c.accountId,
    status: enumName<ConnectionStatus>(pb.ConnectionStatus, c.status, "CONNECTION_STATUS_", "UNSPECIFIED"),
    version: c.version,
    scopes: [...c.scopes],
    tokenType: c.tokenType,
    accessTokenExpiresAt: c.accessTokenExpiresAt,
    lastRefreshAt: c.lastRefreshAt,
    lastError: providerError(c.lastError),
    createdAt: c.createdAt,
    updatedAt: c.updatedAt,
    nextRefreshAt: c.nextRefreshAt,
    reconnectCause: reconnectCause(c.reconnectCause),
    params: { ...c.params },
    metadata: { ...c.metadata },
  };
}

/** One entry of tokend's durable event log (`Client.watchAll`). Never a secret. */
export interface ConnectionEvent {
  /** Opaque; persist it and pass it as `resumeAfter` to continue after this event. */
  cursor: string;
  /** Grows by one per event in the log (a filter leaves gaps). */
  sequence: number;
  eventType: EventType;
  eventTime?: Date;
  connectionId: string;
  /** The connection after the event (for DELETED its last state; absent when the broker could not decode it). */
  connection?: Connection;
  /** For RECONNECT_REQUIRED: why. */
  cause?: ReconnectCause;
}

/** @internal */
export function eventFromPb(e: pb.ConnectionEvent): ConnectionEvent {
  return {
    cursor: e.cursor,
    sequence: e.sequence,
    eventType: enumName<EventType>(pb.EventType, e.eventType, "EVENT_TYPE_", "UNSPECIFIED"),
    eventTime: e.eventTime,
    connectionId: e.connectionId,
    connection: e.connection && connectionFromPb(e.connection),
    cause: reconnectCause(e.cause),
  };
}

/** One message of `Client.watch`: what happened, and the connection after it. */
export interface WatchEvent {
  kind: WatchEventKind;
  connection: Connection;
  eventTime?: Date;
  /** Whether the customer must reconnect (status RECONNECT_REQUIRED). */
  reconnectRequired: boolean;
}

/** @internal Undefined for messages without a kind or connection (from a newer broker). */
export function watchEventFromPb(m: pb.WatchConnectionResponse): WatchEvent | undefined {
  const kind = enumName<WatchEventKind | "UNSPECIFIED">(
    pb.WatchEventType,
    m.eventType,
    "WATCH_EVENT_TYPE_",
    "UNSPECIFIED",
  );
  if (kind === "UNSPECIFIED" || !m.connection) return undefined;
  const connection = connectionFromPb(m.connection);
  return { kind, connection, eventTime: m.eventTime, reconnectRequired: connection.status === "RECONNECT_REQUIRED" };
}

const REDACTED = "<redacted>";

/**
 * An access token as tokend handed it out. `accessToken` is the secret: put
 * it in an Authorization header, never in a log. It is left out of
 * console.log / util.inspect, String() and JSON.stringify.
 */
export class Token {
  readonly connectionId: string;
  /** Usually "Bearer". */
  readonly tokenType: string;
  /** Seconds of validity it had when received. */
  readonly expiresInSeconds: number;
  /** The connection's token version; what forceRefresh names as rejected after a 401. */
  readonly version: number;
  readonly scopes: readonly string[];
  readonly accountId: string;
  /** When it expires, on this process's monotonic clock (performance.now() milliseconds): receipt time + expires_in. */
  readonly expiresAtMonotonicMs: number;
  readonly #accessToken: string;

  /** @internal */
  constructor(t: pb.AccessToken, receivedAtMonotonicMs: number) {
    this.connectionId = t.connectionId;
    this.#accessToken = t.accessToken;
    this.tokenType = t.tokenType;
    this.expiresInSeconds = Math.max(0, Number(t.expiresInSeconds));
    this.version = Number(t.version);
    this.scopes = Object.freeze([...t.scopes]);
    this.accountId = t.accountId;
    this.expiresAtMonotonicMs = receivedAtMonotonicMs + this.expiresInSeconds * 1000;
  }

  /** The secret. */
  get accessToken(): string {
    return this.#accessToken;
  }

  /** The value of an Authorization header: "Bearer <token>". */
  get authorization(): string {
    return `Bearer ${this.#accessToken}`;
  }

  /** Milliseconds of validity left, by the monotonic clock. */
  ttlMs(now = performance.now()): number {
    return Math.max(0, this.expiresAtMonotonicMs - now);
  }

  toString(): string {
    return `Token(${this.connectionId} v${this.version}, ${Math.round(this.ttlMs() / 1000)} s left)`;
  }

  toJSON(): object {
    return {
      connectionId: this.connectionId,
      accessToken: REDACTED,
      tokenType: this.tokenType,
      expiresInSeconds: this.expiresInSeconds,
      version: this.version,
      scopes: this.scopes,
      accountId: this.accountId,
    };
  }

  [inspect.custom](): string {
    return `Token { connectionId: ${JSON.stringify(this.connectionId)}, version: ${this.version}, accessToken: '${REDACTED}', ttlMs: ${Math.round(this.ttlMs())} }`;
  }
}
