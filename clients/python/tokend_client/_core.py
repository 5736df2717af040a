"""The sans-IO core that `Client` (threads) and `AsyncClient` (asyncio)
both drive: what to send, how to read the answer, and every decision in
between, with no I/O, no clock and no sleeping of its own.

- `UnaryCall`: one unary call's state machine. It says with which timeout
  to send each attempt; after a failure, whether to retry and after how
  long (only while tokend cannot be reached, with backoff, `retries` times
  within the deadline), which connection's cached token to evict
  (ReconnectRequired, NotFound), and the error to raise (a CANCELLED past
  the deadline becomes DeadlineExceeded). The I/O layers only send, sleep
  and raise.
- Request builders for each RPC (`_build` holds the message assembly) and
  reply decoders that turn protobuf replies into the SDK's models.
- `evicts(event)`: which cached token a watch event makes stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from tokend_client import _build
from tokend_client._pb import pb
from tokend_client._transport import Backoff, Settings, call_retryable, evicts_on_error
from tokend_client.errors import DeadlineExceeded, TokendError
from tokend_client.models import (
    AuthorizationCode,
    Connection,
    ConnectionEvent,
    Grant,
    InstallResult,
    Token,
    TokenImport,
    WatchEvent,
)

__all__ = [
    "Fail",
    "Retry",
    "UnaryCall",
    "code_grant",
    "connection_reply",
    "evicts",
    "import_grant",
    "page_reply",
    "token_reply",
]

#: The smallest timeout an attempt is sent with (a deadline already passed
#: still gets one quick attempt that fails with DEADLINE_EXCEEDED).
MIN_ATTEMPT_TIMEOUT = 0.001


@dataclass(frozen=True)
class Retry:
    """Sleep `delay` seconds, then send again."""

    delay: float


@dataclass(frozen=True)
class Fail:
    """Evict `evict`'s cached token (if named), then raise `error`."""

    error: TokendError
    evict: str | None = None


@dataclass
class UnaryCall:
    """One unary call's decisions. `now` is a monotonic time the I/O layer
    reads; nothing here reads a clock or sleeps."""

    method: str
    request: Any
    deadline: float
    retries: int
    connection_id: str | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(0.1, 2.0))
    attempts: int = 0

    @classmethod
    def start(
        cls,
        settings: Settings,
        method: str,
        request: Any,
        *,
        now: float,
        timeout: float | None = None,
        connection_id: str | None = None,
    ) -> UnaryCall:
        budget = timeout if timeout is not None else settings.timeout
        return cls(method, request, now + budget, settings.retries, connection_id)

    def attempt_timeout(self, now: float) -> float:
        """The timeout to send the next attempt with: what is left."""
        self.attempts += 1
        return max(self.deadline - now, MIN_ATTEMPT_TIMEOUT)

    def failed(self, err: TokendError, *, now: float, closed: bool = False) -> Retry | Fail:
        """After an attempt failed with `err`: retry, or fail for good."""
        err = self._deadline_or(err, now)
        if call_retryable(err) and self.attempts <= self.retries and not closed:
            delay = self.backoff.next()
            if now + delay < self.deadline:
                return Retry(delay)
        evict = self.connection_id if self.connection_id and evicts_on_error(err) else None
        return Fail(err, evict)

    def _deadline_or(self, err: TokendError, now: float) -> TokendError:
        """DeadlineExceeded when the deadline has passed, whichever side
        noticed first: the server cuts a call at its grpc-timeout with
        CANCELLED ("Timeout expired")."""
        if err.code == grpc.StatusCode.CANCELLED and now >= self.deadline - 0.05:
            return DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED, err.message or "deadline exceeded", err.reason
            )
        return err


# -- requests and replies ------------------------------------------------


def get_connection_request(connection_id: str) -> Any:
    return pb.GetConnectionRequest(connection_id=connection_id)


def delete_connection_request(connection_id: str) -> Any:
    return pb.DeleteConnectionRequest(connection_id=connection_id)


def token_reply(reply: Any, received: float) -> Token:
    """GetToken's or ForceRefresh's token, its expiry counted from
    `received` (the monotonic time the request was sent)."""
    return Token.from_pb(reply.token, received)


def force_refresh_reply(reply: Any, received: float) -> tuple[Token, bool]:
    return token_reply(reply, received), bool(reply.refreshed)


def install_reply(reply: Any) -> InstallResult:
    return InstallResult.from_pb(reply)


def connection_reply(reply: Any) -> Connection:
    return Connection.from_pb(reply.connection)


def page_reply(reply: Any) -> tuple[list[Connection], str]:
    return [Connection.from_pb(c) for c in reply.connections], str(reply.next_page_token)


def code_grant(code: str, redirect_uri: str, code_verifier: str) -> Grant:
    return AuthorizationCode(code, redirect_uri, code_verifier)


def import_grant(
    access_token: str,
    refresh_token: str,
    expires_in_seconds: int,
    scopes: Iterable[str],
    token_type: str,
) -> Grant:
    return TokenImport(access_token, refresh_token, expires_in_seconds, tuple(scopes), token_type)


def install_request(
    provider: str,
    grant: Grant,
    connection_id: str,
    account_id: str,
    params: Mapping[str, str] | None,
    replace: bool,
) -> Any:
    return _build.install(provider, grant, connection_id, account_id, params, replace)


# -- cache decisions -----------------------------------------------------


def evicts(event: WatchEvent | ConnectionEvent) -> str | None:
    """The connection whose cached token an event makes stale, if any: it
    needs reconnecting, was deleted or was re-installed."""
    if isinstance(event, WatchEvent):
        if event.kind == "DELETED" or event.reconnect_required:
            return event.connection.connection_id
        return None
    if event.event_type in ("RECONNECT_REQUIRED", "DELETED", "INSTALLED"):
        return event.connection_id
    return None
