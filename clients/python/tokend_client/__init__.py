"""Python SDK for tokend, the OAuth2 token broker.

- `Client` (sync, thread-safe) and `AsyncClient` (asyncio, grpc.aio): get_token,
  token (cached, singleflight), force_refresh, install (code exchange, token
  import, client credentials), get_connection, list_connections (all pages),
  delete_connection, watch (re-subscribes across broker restarts) and
  watch_all (the durable event feed, resumable by cursor).
- Typed errors (`TokendError` and subclasses) from the gRPC status and
  ErrorInfo / RetryInfo / BadRequest.
- Refresh-and-retry on 401 for HTTP clients: `tokend_client.httpx_auth.TokendAuth`
  and `tokend_client.requests_auth.TokendAuth`; a 401 to the replay raises
  `StillUnauthorized` (or, with ``second_401="return"``, comes back).
"""

from tokend_client.aio import AsyncClient
from tokend_client.aio_streams import AsyncEventStream, AsyncWatchStream
from tokend_client.cache import AsyncTokenCache, TokenCache
from tokend_client.client import Client
from tokend_client.errors import (
    Aborted,
    AlreadyExists,
    CursorExpired,
    DeadlineExceeded,
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
)
from tokend_client.models import (
    AuthorizationCode,
    Connection,
    ConnectionEvent,
    InstallResult,
    ProviderError,
    Token,
    TokenImport,
    WatchEvent,
)
from tokend_client.streams import EventStream, WatchStream

__version__ = "0.2.0"

# The HTTP helpers need their optional extras (httpx, requests), so they are
# imported on first use: `import tokend_client` works without them, and
# `tokend_client.httpx_auth.TokendAuth` works as the README shows.
_LAZY_SUBMODULES = ("httpx_auth", "requests_auth")


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncTokenCache",
    "AsyncWatchStream",
    "AuthorizationCode",
    "Client",
    "Connection",
    "ConnectionEvent",
    "CursorExpired",
    "DeadlineExceeded",
    "EventStream",
    "InstallResult",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ProviderError",
    "ProviderMisconfigured",
    "ReconnectRequired",
    "RecordUnreadable",
    "ResourceExhausted",
    "StillUnauthorized",
    "Token",
    "TokenCache",
    "TokenImport",
    "TokendError",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "WatchEvent",
    "WatchStream",
]
