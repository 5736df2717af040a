// @tokend/client: the Node client of tokend, the OAuth2 token broker.
//
//   const tokend = new Client("127.0.0.1:50051", { apiKey });
//   const api = authorizedFetch(tokend, "hubspot-portal-123");
//   const contacts = await api("https://api.hubapi.com/crm/v3/objects/contacts");

export {
  Client,
  grpcTarget,
  type ClientOptions,
  type ConnectionPage,
  type InstallOptions,
  type InstallResult,
  type ListConnectionsOptions,
  type Rejected,
  type TlsOptions,
} from "./client.js";
export {
  Aborted,
  AlreadyExists,
  CursorExpired,
  DeadlineExceeded,
  ERROR_DOMAIN,
  InvalidArgument,
  NotFound,
  PermissionDenied,
  ProviderMisconfigured,
  ReconnectRequired,
  RecordUnreadable,
  ResourceExhausted,
  StillUnauthorized,
  TokendError,
  TransportError,
  Unauthenticated,
  Unavailable,
  decodeStatusDetails,
  errorFromStatus,
  type StatusDetails,
} from "./errors.js";
export { EventStream, type WatchAllOptions } from "./events.js";
export { useTokendAuth, type AxiosAuthOptions, type AxiosInstanceLike } from "./axios.js";
export { authorizedFetch, type AuthorizedFetchOptions, type Second401, type TokenSource } from "./fetch.js";
export { WatchStream } from "./watch.js";
export {
  Token,
  type Connection,
  type ConnectionEvent,
  type ConnectionStatus,
  type ErrorClass,
  type EventType,
  type ProviderError,
  type ReconnectCause,
  type WatchEvent,
  type WatchEventKind,
} from "./types.js";
