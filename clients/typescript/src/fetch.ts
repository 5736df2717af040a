// Refresh-and-retry for the fetch API (Node 18+'s global fetch): each request
// carries `Authorization: Bearer <token>` from the client's cache; on a 401
// the client calls ForceRefresh naming the rejected version, then sends the
// request again ONCE with the new token. POST and PATCH are not replayed
// unless the caller opted in (a replayed write can duplicate data): their
// 401 response is returned as it came, and the next request gets the new
// token. A replay answered 401 again throws StillUnauthorized (carrying that
// response), unless the caller chose `second401: "return"`. A
// ReconnectRequired (or any broker error) is thrown as itself.

import type { Rejected } from "./client.js";
import { StillUnauthorized } from "./errors.js";
import type { Token } from "./types.js";

/** What the wrapper needs from a Client. */
export interface TokenSource {
  token(connectionId: string): Promise<Token>;
  forceRefresh(connectionId: string, rejected?: Rejected): Promise<{ token: Token; refreshed: boolean }>;
}

/**
 * What an HTTP helper does when the replay with a force-refreshed token is
 * answered 401 again: throw StillUnauthorized ("raise", the default) or
 * return the 401 response ("return").
 */
export type Second401 = "raise" | "return";

/** Checks a second401 option, for callers without the type checker. */
export function checkSecond401(value: unknown): Second401 {
  if (value === undefined) return "raise";
  if (value === "raise" || value === "return") return value;
  throw new TypeError(`second401 must be "raise" or "return", not ${JSON.stringify(value)}`);
}

export interface AuthorizedFetchOptions {
  /** A 401 to the replay: throw StillUnauthorized ("raise", default) or return the response ("return"). */
  second401?: Second401;
  /** Also replay POST and PATCH after a 401: only for APIs where that is safe (idempotency keys, upserts). */
  replayNonIdempotent?: boolean;
  /** The fetch to wrap (default: the global one). */
  fetch?: (request: Request) => Promise<Response>;
}

/** Methods replayed after a 401 without opting in. */
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);

/** Whether a body given in RequestInit can be sent twice: not a stream, which is consumed by the first send. */
function reusable(body: unknown): boolean {
  if (body === undefined || body === null) return true;
  if (typeof body === "string") return true;
  return (
    body instanceof URLSearchParams ||
    body instanceof Blob ||
    body instanceof FormData ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body)
  );
}

/**
 * A fetch that authorizes every request with `connectionId`'s token and
 * refreshes-and-retries once on a 401. Request bodies given as strings,
 * buffers, Blobs, FormData or URLSearchParams can be replayed; a
 * ReadableStream body never is (the 401 comes back as it is), and a Request
 * object's body is kept (buffered) for the replay only when its method may be
 * replayed.
 *
 * ```ts
 * const api = authorizedFetch(tokend, "hubspot-portal-123");
 * const r = await api("https://api.hubapi.com/crm/v3/objects/contacts");
 * ```
 */
export function authorizedFetch(
  client: TokenSource,
  connectionId: string,
  options: AuthorizedFetchOptions = {},
): (input: string | URL | Request, init?: RequestInit) => Promise<Response> {
  const send = options.fetch ?? ((request: Request) => fetch(request));
  const second401 = checkSecond401(options.second401);
  return async function tokendFetch(input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const request = new Request(input, init);
    const replayableMethod = IDEMPOTENT.has(request.method) || options.replayNonIdempotent === true;
    const replayableBody = init?.body !== undefined ? reusable(init.body) : true;
    // A clone tees the body: it is the copy sent again after a 401.
    const spare = replayableMethod && replayableBody ? request.clone() : undefined;
    const token = await client.token(connectionId);
    request.headers.set("authorization", token.authorization);
    const response = await send(request);
    if (response.status !== 401) return response;
    // Refresh (or pick up a refresh someone else already made): the next
    // request carries a good token either way.
    const { token: fresh } = await client.forceRefresh(connectionId, { version: token.version });
    if (!spare) return response;
    await response.body?.cancel().catch(() => undefined);
    spare.headers.set("authorization", fresh.authorization);
    const again = await send(spare);
    if (again.status !== 401 || second401 === "return") return again;
    // Read the body, releasing the connection, and hand it over readable.
    const body = await again.arrayBuffer().catch(() => new ArrayBuffer(0));
    const final = new Response(body, { status: again.status, statusText: again.statusText, headers: again.headers });
    throw new StillUnauthorized(connectionId, final);
  };
}
