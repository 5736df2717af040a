// Refresh-and-retry for axios (an optional peer: this file never imports
// it): interceptors on an instance the caller made. The same rules as
// authorizedFetch: a Bearer token from the client's cache on every request;
// on a 401, ForceRefresh naming the rejected version, then the request once
// more with the new token; POST and PATCH (and stream bodies) are not
// replayed unless opted in, and their 401 comes back as axios gave it. A
// replay answered 401 again rejects with StillUnauthorized (carrying axios's
// response), unless the caller chose `second401: "return"` (then it comes back
// as axios gives any 401: an AxiosError, or a response under a permissive
// validateStatus).

import { StillUnauthorized } from "./errors.js";
import { type Second401, type TokenSource, checkSecond401 } from "./fetch.js";

/** The part of an axios instance the interceptors use. */
export interface AxiosInstanceLike {
  interceptors: {
    request: { use(onFulfilled: (config: any) => any): number; eject(id: number): void };
    response: {
      use(onFulfilled: (response: any) => any, onRejected: (error: any) => any): number;
      eject(id: number): void;
    };
  };
  request(config: any): Promise<any>;
}

export interface AxiosAuthOptions {
  /** A 401 to the replay: reject with StillUnauthorized ("raise", default) or pass it on as axios gave it ("return"). */
  second401?: Second401;
  /** Also replay POST and PATCH after a 401: only where replaying a write is safe. */
  replayNonIdempotent?: boolean;
}

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);
const STATE = Symbol("tokend");

interface State {
  version: number;
  retried: boolean;
}

function setAuthorization(config: any, value: string): void {
  if (typeof config.headers?.set === "function") config.headers.set("Authorization", value);
  else config.headers = { ...config.headers, Authorization: value };
}

/**
 * Authorizes every request of `instance` with `connectionId`'s token and
 * refreshes-and-retries once on a 401. Returns a function that removes the
 * interceptors.
 *
 * ```ts
 * const api = axios.create({ baseURL: "https://api.hubapi.com" });
 * useTokendAuth(api, tokend, "hubspot-portal-123");
 * ```
 */
export function useTokendAuth(
  instance: AxiosInstanceLike,
  client: TokenSource,
  connectionId: string,
  options: AxiosAuthOptions = {},
): () => void {
  const second401 = checkSecond401(options.second401);
  const request = instance.interceptors.request.use(async (config: any) => {
    const token = await client.token(connectionId);
    setAuthorization(config, token.authorization);
    const state: State = { version: token.version, retried: config[STATE]?.retried ?? false };
    config[STATE] = state;
    return config;
  });

  const retry = async (config: any, response: any, passOn: () => any): Promise<any> => {
    const state: State | undefined = config?.[STATE];
    if (!state) return passOn();
    if (state.retried) {
      if (second401 === "return") return passOn();
      throw new StillUnauthorized(connectionId, response);
    }
    // The next request carries a good token whether or not this one is replayed.
    await client.forceRefresh(connectionId, { version: state.version });
    const method = String(config.method ?? "get").toUpperCase();
    const stream = typeof config.data?.pipe === "function" || typeof config.data?.getReader === "function";
    if (stream || !(IDEMPOTENT.has(method) || options.replayNonIdempotent === true)) return passOn();
    state.retried = true;
    return instance.request(config);
  };

  const response = instance.interceptors.response.use(
    // A 401 the instance's validateStatus accepts arrives here...
    (r: any) => (r?.status === 401 ? retry(r.config, r, () => r) : r),
    // ...and by default as an AxiosError.
    (e: any) =>
      e?.response?.status === 401
        ? retry(e.config, e.response, () => {
            throw e;
          })
        : Promise.reject(e),
  );

  return () => {
    instance.interceptors.request.eject(request);
    instance.interceptors.response.eject(response);
  };
}
