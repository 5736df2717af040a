// Typed errors, mapped in this one place from the gRPC status and the
// google.rpc.Status details tokend puts in the `grpc-status-details-bin`
// trailer: ErrorInfo (domain "tokend.dev"), RetryInfo and BadRequest. Callers
// catch classes (`instanceof ReconnectRequired`) instead of parsing messages.
// tokend's messages never carry a secret, and neither do these errors.

import * as grpc from "@grpc/grpc-js";
import { BinaryReader } from "@bufbuild/protobuf/wire";

/** The ErrorInfo domain of tokend's errors. */
export const ERROR_DOMAIN = "tokend.dev";

/** What google.rpc.Status details said, decoded. */
export interface StatusDetails {
  /** ErrorInfo.reason, e.g. "RECONNECT_REQUIRED"; empty without an ErrorInfo. */
  reason: string;
  /** ErrorInfo.domain; "tokend.dev" for tokend's own errors. */
  domain: string;
  /** ErrorInfo.metadata, e.g. `cause`, `provider_error`, `connection_id`. */
  metadata: Record<string, string>;
  /** RetryInfo.retry_delay, in seconds. */
  retryAfterSeconds?: number;
  /** The first BadRequest field violation. */
  field: string;
  fieldDescription: string;
}

/**
 * The names of an error's classes, TokendError's subclasses down to its own,
 * under a key every copy of this package shares: the ES module and CommonJS
 * builds are two copies of each class, and `instanceof` must hold across them.
 */
const LINEAGE = Symbol.for("@tokend/client/error-lineage");

function lineage(cls: Function): string[] {
  const names: string[] = [];
  for (let c: unknown = cls; typeof c === "function" && c !== Error && c !== Function.prototype;) {
    names.push((c as Function).name);
    c = Object.getPrototypeOf(c);
  }
  return names;
}

/** Any error a tokend call fails with. */
export class TokendError extends Error {
  /** The gRPC status code. */
  readonly code: grpc.status;
  /** ErrorInfo.reason: "CONNECTION_NOT_FOUND", "RECONNECT_REQUIRED", ...; empty when none came. */
  readonly reason: string;
  /** ErrorInfo.metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** RetryInfo: when to try again, in seconds, if the broker said. */
  readonly retryAfterSeconds: number | undefined;

  constructor(code: grpc.status, message: string, details: Partial<StatusDetails> = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.reason = details.reason ?? "";
    this.metadata = Object.freeze({ ...details.metadata });
    this.retryAfterSeconds = details.retryAfterSeconds;
    Object.defineProperty(this, LINEAGE, { value: Object.freeze(lineage(new.target)), enumerable: false });
  }

  /**
   * `e instanceof NotFound` holds for a NotFound from either build of this
   * package (`import` or `require`), not only from this one.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    if (typeof value !== "object" || value === null) return false;
    const names = (value as { [LINEAGE]?: unknown })[LINEAGE];
    return Array.isArray(names) && names.includes(this.name);
  }

  /** The gRPC code's name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }

  /** The connection the error is about, when the broker named it. */
  get connectionId(): string {
    return this.metadata["connection_id"] ?? "";
  }
}

/** NOT_FOUND: the connection does not exist. */
export class NotFound extends TokendError {}

/** INVALID_ARGUMENT: a malformed field, named by `field` (BadRequest). */
export class InvalidArgument extends TokendError {
  readonly field: string;
  readonly description: string;
  constructor(code: grpc.status, message: string, details: Partial<StatusDetails> = {}) {
    super(code, message, details);
    this.field = details.field || (details.metadata?.["field"] ?? "");
    this.description = details.fieldDescription || message;
  }
}

/** ALREADY_EXISTS, e.g. reason CONNECTION_ID_TAKEN: the id holds another account's grant (install with `replace`). */
export class AlreadyExists extends TokendError {}

/**
 * ABORTED, reason CONCURRENT_MODIFICATION: another writer changed the
 * connection at the same time. Read it again and decide; the client does not
 * retry it.
 */
export class Aborted extends TokendError {}

/**
 * Reason RECORD_UNREADABLE (FAILED_PRECONDITION or DATA_LOSS): tokend cannot
 * open the stored record of `connectionId` (a wrong or missing encryption
 * key, corruption). An operator problem; install or deleteConnection with
 * `force` replaces or removes the record.
 */
export class RecordUnreadable extends TokendError {}

/**
 * FAILED_PRECONDITION, reason RECONNECT_REQUIRED: the grant is dead; only a
 * new install (the customer reconnecting) revives it. The client's token
 * cache drops the connection's token when it sees this.
 */
export class ReconnectRequired extends TokendError {
  /** Why: REVOKED, ROTATION_LOST, NO_REFRESH_TOKEN, CONSENT_REQUIRED or INTERACTION_REQUIRED; empty if the broker did not say. */
  override get cause(): string {
    return this.metadata["cause"] ?? "";
  }
  /** The same as `cause`, under a name that does not shadow Error.cause. */
  get reconnectCause(): string {
    return this.cause;
  }
  /** The provider's error code, e.g. "invalid_grant". */
  get providerError(): string {
    return this.metadata["provider_error"] ?? "";
  }
  /** The provider's correlation id, for its support desk. */
  get providerCorrelationId(): string {
    return this.metadata["provider_correlation_id"] ?? "";
  }
}

/** FAILED_PRECONDITION, reason PROVIDER_MISCONFIGURED: the provider rejected tokend's client credentials (an operator problem). */
export class ProviderMisconfigured extends TokendError {
  get provider(): string {
    return this.metadata["provider"] ?? "";
  }
}

/** UNAVAILABLE: the provider (PROVIDER_UNAVAILABLE) or tokend's storage failed transiently; retry after `retryAfterSeconds`. */
export class Unavailable extends TokendError {}

/** UNAVAILABLE from the transport: the broker could not be reached (down, restarting, network), after the client's retries. */
export class TransportError extends Unavailable {}

/**
 * Thrown by the HTTP helpers (authorizedFetch, useTokendAuth) when the
 * upstream API answered 401 again to the replay with a force-refreshed token:
 * a fresh token that is still refused means missing scopes or the provider's
 * side, not expiry. Not a broker error: `code` is UNAUTHENTICATED (HTTP 401's
 * gRPC equivalent) and `reason` "STILL_UNAUTHORIZED", but it is not an
 * `Unauthenticated` (tokend refusing the caller). `response` is the final
 * response (a fetch Response, body unread; an axios response). Pass
 * `second401: "return"` to get that response back instead. The message names
 * the connection, never the token.
 */
export class StillUnauthorized extends TokendError {
  /** The upstream's HTTP status: 401. */
  readonly status: number;
  /** The final response: a fetch `Response` or an axios response. */
  readonly response: unknown;
  constructor(connectionId: string, response?: unknown, status = 401) {
    super(
      grpc.status.UNAUTHENTICATED,
      `upstream rejected the refreshed token of connection ${JSON.stringify(connectionId)} (HTTP ${status} again after a forced refresh)`,
      { reason: "STILL_UNAUTHORIZED", metadata: { connection_id: connectionId } },
    );
    this.status = status;
    this.response = response;
  }
}

/** DEADLINE_EXCEEDED: the call's deadline (`timeoutMs`) passed. */
export class DeadlineExceeded extends TokendError {}

/** UNAUTHENTICATED: no, a wrong, or more than one credential. */
export class Unauthenticated extends TokendError {}

/** PERMISSION_DENIED: the caller's grants do not cover this connection or operation. */
export class PermissionDenied extends TokendError {}

/** RESOURCE_EXHAUSTED: a rate limit, stream cap or server limit; retry after `retryAfterSeconds`. */
export class ResourceExhausted extends TokendError {}

/**
 * OUT_OF_RANGE, reason CURSOR_EXPIRED: the resume cursor is older than the
 * event log's retention, or from another log (a restored or replaced data
 * dir). Events were lost to this subscriber: resync from listConnections, then
 * watch again from `oldestCursor` (or live).
 */
export class CursorExpired extends TokendError {
  get oldestCursor(): string {
    return this.metadata["oldest_cursor"] ?? "";
  }
}

function readErrorInfo(r: BinaryReader, out: StatusDetails): void {
  while (r.pos < r.len) {
    const [f, w] = r.tag();
    if (f === 1) out.reason = r.string();
    else if (f === 2) out.domain = r.string();
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
}

function readRetryInfo(r: BinaryReader, out: StatusDetails): void {
  while (r.pos < r.len) {
    const [f, w] = r.tag();
    if (f !== 1) {
      r.skip(w);
      continue;
    }
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
  }
}

function readBadRequest(r: BinaryReader, out: StatusDetails): void {
  while (r.pos < r.len) {
    const [f, w] = r.tag();
    if (f !== 1 || out.field) {
      r.skip(w);
      continue;
    }
    const v = new BinaryReader(r.bytes());
    while (v.pos < v.len) {
      const [vf, vw] = v.tag();
      if (vf === 1) out.field = v.string();
      else if (vf === 2) out.fieldDescription = v.string();
      else v.skip(vw);
    }
  }
}

/** Decodes a google.rpc.Status (the `grpc-status-details-bin` trailer): its ErrorInfo, RetryInfo and BadRequest details. */
export function decodeStatusDetails(bin: Uint8Array | undefined): StatusDetails {
  const out: StatusDetails = { reason: "", domain: "", metadata: {}, field: "", fieldDescription: "" };
  if (!bin || bin.length === 0) return out;
  try {
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
      if (typeUrl.endsWith("/google.rpc.ErrorInfo")) readErrorInfo(r, out);
      else if (typeUrl.endsWith("/google.rpc.RetryInfo")) readRetryInfo(r, out);
      else if (typeUrl.endsWith("/google.rpc.BadRequest")) readBadRequest(r, out);
    }
  } catch {
    // Malformed details: keep what was read; the code still says what happened.
  }
  return out;
}

/** The typed error for a status: `code`, its message, and the raw `grpc-status-details-bin` bytes. */
export function errorFromStatus(code: grpc.status, message: string, detailsBin?: Uint8Array): TokendError {
  const d = decodeStatusDetails(detailsBin);
  if (d.reason === "RECORD_UNREADABLE") return new RecordUnreadable(code, message, d);
  switch (code) {
    case grpc.status.NOT_FOUND:
      return new NotFound(code, message, d);
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidArgument(code, message, d);
    case grpc.status.ALREADY_EXISTS:
      return new AlreadyExists(code, message, d);
    case grpc.status.ABORTED:
      return new Aborted(code, message, d);
    case grpc.status.FAILED_PRECONDITION:
      if (d.reason === "RECONNECT_REQUIRED") return new ReconnectRequired(code, message, d);
      if (d.reason === "PROVIDER_MISCONFIGURED") return new ProviderMisconfigured(code, message, d);
      return new TokendError(code, message, d);
    case grpc.status.UNAVAILABLE:
      // Without tokend's ErrorInfo (or RetryInfo) it comes from the
      // transport: the broker is down, restarting or unreachable.
      return d.domain === ERROR_DOMAIN || d.reason || d.retryAfterSeconds !== undefined
        ? new Unavailable(code, message, d)
        : new TransportError(code, message, d);
    case grpc.status.DEADLINE_EXCEEDED:
      return new DeadlineExceeded(code, message, d);
    case grpc.status.UNAUTHENTICATED:
      return new Unauthenticated(code, message, d);
    case grpc.status.PERMISSION_DENIED:
      return new PermissionDenied(code, message, d);
    case grpc.status.RESOURCE_EXHAUSTED:
      return new ResourceExhausted(code, message, d);
    case grpc.status.OUT_OF_RANGE:
      return d.reason === "CURSOR_EXPIRED" ? new CursorExpired(code, message, d) : new TokendError(code, message, d);
    default:
      return new TokendError(code, message, d);
  }
}

/** The typed error for what grpc-js reported (a ServiceError, or anything thrown). */
export function toError(e: unknown): TokendError {
  if (e instanceof TokendError) return e;
  const se = e as Partial<grpc.ServiceError>;
  if (typeof se?.code !== "number") {
    return new TokendError(grpc.status.UNKNOWN, e instanceof Error ? e.message : String(e));
  }
  const raw = se.metadata?.get("grpc-status-details-bin")?.[0];
  const bin = raw === undefined ? undefined : typeof raw === "string" ? Buffer.from(raw, "base64") : raw;
  return errorFromStatus(se.code, se.details ?? se.message ?? "", bin);
}
