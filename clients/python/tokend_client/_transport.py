"""What the sync and asyncio clients share about reaching tokend: the target,
TLS or mutual TLS, the API key, channel options, deadlines and backoff."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tokend_client.errors import (
    NotFound,
    ReconnectRequired,
    TokendError,
    TransportError,
    Unavailable,
)

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 5

# Reconnect to a broker that went away within seconds (gRPC's default
# backoff grows to two minutes), and notice a dead connection under a
# long-lived watch stream (keepalive pings) instead of waiting forever.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def parse_target(endpoint: str) -> tuple[str, bool | None]:
    """``host:port`` or ``http(s)://host:port`` (as every tokend client
    accepts): the gRPC target, and whether the URL asked for TLS (None when
    it did not say)."""
    endpoint = endpoint.strip().rstrip("/")
    for scheme, tls in (("https://", True), ("http://", False)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :], tls
    return endpoint, None


@dataclass(frozen=True, repr=False)
class Settings:
    """A client's resolved settings. Holds the API key: no repr."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]
    timeout: float
    retries: int

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    def describe(self) -> str:
        return (
            f"target={self.target!r}, tls={self.tls}, api_key={'set' if self.metadata else 'none'}"
        )


def make_settings(
    target: str,
    *,
    api_key: str | None,
    tls: bool | None,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
    server_name: str | None,
    credentials: grpc.ChannelCredentials | None,
    timeout: float,
    retries: int,
    options: Sequence[tuple[str, Any]],
) -> Settings:
    address, url_tls = parse_target(target)
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("mutual TLS needs both certificate_chain and private_key")
    has_tls_material = any(
        x is not None for x in (credentials, root_certificates, certificate_chain)
    )
    if has_tls_material and (tls is False or (tls is None and url_tls is False)):
        raise ValueError("TLS credentials given for a plaintext (http://) target")
    wants_tls = bool(tls or url_tls or has_tls_material)
    if credentials is None and wants_tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if api_key is not None and (not api_key or any(c in api_key for c in "\r\n")):
        raise ValueError("api_key must be a non-empty header value")
    opts = list(_CHANNEL_OPTIONS)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    opts.extend(options)
    # The key goes as `authorization: Bearer <key>` (docs/configuration.md,
    # "Callers, TLS and audit"): one credential per call.
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return Settings(address, credentials, tuple(opts), metadata, float(timeout), max(retries, 0))


class Backoff:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, ... up to `maximum`."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self, at_least: float | None = None) -> float:
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.maximum)
        return max(delay, at_least or 0.0)


def call_retryable(err: TokendError) -> bool:
    """A unary call is retried only when tokend could not be reached (no
    gRPC status from tokend). Every answer from tokend is final, an
    UNAVAILABLE with RetryInfo too: it surfaces as Unavailable with
    `retry_after`, for the caller to decide."""
    return isinstance(err, TransportError)


def evicts_on_error(err: TokendError) -> bool:
    """Whether an error about a connection makes its cached token stale:
    the grant is dead (ReconnectRequired) or the connection is gone
    (NotFound)."""
    return isinstance(err, (ReconnectRequired, NotFound))


_STREAM_RETRY_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)


def stream_retryable(err: TokendError) -> bool:
    """A watch stream re-subscribes after these: the broker went away or
    broke the stream (restart, network, shutdown), or failed transiently.
    Anything else (not found, permission, a bad or expired cursor) ends it
    with the typed error."""
    return isinstance(err, Unavailable) or err.code in _STREAM_RETRY_CODES
