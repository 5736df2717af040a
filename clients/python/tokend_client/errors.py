"""Typed errors, mapped in this one place from the gRPC status, tokend's
`google.rpc.ErrorInfo` (domain ``tokend.dev``), `google.rpc.RetryInfo` and
`google.rpc.BadRequest`, so callers catch classes instead of parsing messages.

Messages come from tokend, which never puts a secret in them; nothing here
adds request data (tokens, API keys) to a message or a repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "Aborted",
    "AlreadyExists",
    "CursorExpired",
    "DeadlineExceeded",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ProviderMisconfigured",
    "ReconnectRequired",
    "RecordUnreadable",
    "ResourceExhausted",
    "StillUnauthorized",
    "TokendError",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
]

_DETAILS_KEY = "grpc-status-details-bin"


class TokendError(Exception):
    """Any error from tokend: the gRPC code, the ErrorInfo reason and
    metadata, and RetryInfo's delay when the server sent one."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field: str = "",
        description: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        #: Seconds to wait before retrying (google.rpc.RetryInfo), if given.
        self.retry_after = retry_after
        #: The offending request field (google.rpc.BadRequest), if any.
        self.field = field
        #: What is wrong with `field` (google.rpc.BadRequest), if given.
        self.description = description

    @property
    def connection_id(self) -> str:
        return self.metadata.get("connection_id", "")

    def __str__(self) -> str:
        return self.message or self.code.name

    def __repr__(self) -> str:
        parts = [f"code={self.code.name}", f"message={self.message!r}"]
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        if self.field:
            parts.append(f"field={self.field!r}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after}")
        return f"{type(self).__name__}({', '.join(parts)})"


class NotFound(TokendError):
    """NOT_FOUND: the connection does not exist."""


class InvalidArgument(TokendError):
    """INVALID_ARGUMENT: `field` names the malformed request field and
    `description` says what is wrong with it."""


class AlreadyExists(TokendError):
    """ALREADY_EXISTS: e.g. CONNECTION_ID_TAKEN, an install that would
    replace another account's grant without `replace=True`."""


class Aborted(TokendError):
    """ABORTED, reason CONCURRENT_MODIFICATION: another writer changed the
    connection at the same time (or an expected version did not match).
    Read the connection again and decide; the SDK does not retry it."""


class RecordUnreadable(TokendError):
    """Reason RECORD_UNREADABLE (FAILED_PRECONDITION or DATA_LOSS): tokend
    cannot open the stored record of `connection_id` (wrong or missing
    encryption key, corruption). An operator problem; an
    install or delete with ``force`` (the CLI's, or the proto's field)
    replaces or removes the record."""


class ReconnectRequired(TokendError):
    """FAILED_PRECONDITION, reason RECONNECT_REQUIRED: the grant is dead and
    only a new install revives it. The client evicts the connection's cached
    token when it sees this."""

    @property
    def cause(self) -> str:
        """REVOKED, ROTATION_LOST, NO_REFRESH_TOKEN, CONSENT_REQUIRED or
        INTERACTION_REQUIRED; empty from brokers that do not say."""
        return self.metadata.get("cause", "")

    @property
    def provider_error(self) -> str:
        """The provider's error code, e.g. ``invalid_grant``."""
        return self.metadata.get("provider_error", "")

    @property
    def provider_correlation_id(self) -> str:
        return self.metadata.get("provider_correlation_id", "")


class ProviderMisconfigured(TokendError):
    """FAILED_PRECONDITION, reason PROVIDER_MISCONFIGURED: the provider
    rejected tokend's client credentials (an operator problem)."""


class Unavailable(TokendError):
    """UNAVAILABLE: the provider (PROVIDER_UNAVAILABLE) or tokend's storage
    failed transiently; retry after `retry_after` when given."""


class TransportError(Unavailable):
    """UNAVAILABLE without tokend's ErrorInfo: tokend could not be reached
    (down, restarting, network, TLS). Raised after the client's own retries
    with backoff ran out (or the call's deadline passed)."""


class StillUnauthorized(TokendError):
    """Raised by the HTTP helpers (httpx, requests) when the upstream API
    answered 401 again to the replay with a force-refreshed token: a fresh
    token that is still refused means missing scopes or the provider's
    side, not expiry. Not a broker error: `code` is UNAUTHENTICATED (HTTP
    401's gRPC equivalent) and `reason` ``STILL_UNAUTHORIZED``, but it is no
    subclass of `Unauthenticated` (which is tokend refusing the caller).

    `status` is 401 and `response` the final response (its body read, its
    connection released). Pass ``second_401="return"`` to the helper to get
    that response back instead of this error. The message names the
    connection, never the token."""

    def __init__(self, connection_id: str, response: object = None, status: int = 401) -> None:
        super().__init__(
            grpc.StatusCode.UNAUTHENTICATED,
            f"upstream rejected the refreshed token of connection {connection_id!r} "
            f"(HTTP {status} again after a forced refresh)",
            "STILL_UNAUTHORIZED",
            {"connection_id": connection_id},
        )
        #: The upstream's HTTP status: 401.
        self.status = status
        #: The final response (httpx.Response or requests.Response).
        self.response = response


class DeadlineExceeded(TokendError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


class PermissionDenied(TokendError):
    """PERMISSION_DENIED: the caller's grants do not cover the request."""


class Unauthenticated(TokendError):
    """UNAUTHENTICATED: no, an unknown, or more than one credential."""


class ResourceExhausted(TokendError):
    """RESOURCE_EXHAUSTED: a rate limit or stream cap (CALLER_RATE_LIMITED,
    TOO_MANY_WATCH_STREAMS, SERVER_OVERLOADED); retry after `retry_after`."""


class CursorExpired(TokendError):
    """OUT_OF_RANGE, reason CURSOR_EXPIRED: the resume cursor is older than
    the event log's retention, or from another log (a restored data dir).
    Resync from list_connections, then watch again from `oldest_cursor`."""

    @property
    def oldest_cursor(self) -> str:
        return self.metadata.get("oldest_cursor", "")


_BY_CODE: dict[grpc.StatusCode, type[TokendError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def _rich_status(trailers: Any) -> status_pb2.Status | None:
    """google.rpc.Status from the trailers, whatever their container (a
    tuple of pairs for sync calls, grpc.aio.Metadata for asyncio ones)."""
    for key, value in trailers or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a garbled trailer is no reason to lose the code
                return None
    return None


def error_from_status(
    code: grpc.StatusCode, message: str, details: status_pb2.Status | None
) -> TokendError:
    """The typed error for a status code, message and rich details."""
    reason, metadata, retry_after, field, description = "", {}, None, "", ""
    for detail in details.details if details is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
                description = bad.field_violations[0].description
    cls = _BY_CODE.get(code, TokendError)
    if reason == "RECORD_UNREADABLE":
        cls = RecordUnreadable
    elif code == grpc.StatusCode.FAILED_PRECONDITION:
        if reason == "RECONNECT_REQUIRED":
            cls = ReconnectRequired
        elif reason == "PROVIDER_MISCONFIGURED":
            cls = ProviderMisconfigured
    elif code == grpc.StatusCode.OUT_OF_RANGE and reason == "CURSOR_EXPIRED":
        cls = CursorExpired
    elif code == grpc.StatusCode.UNAVAILABLE and not reason and retry_after is None:
        # Neither ErrorInfo nor RetryInfo: the transport failed, not tokend.
        cls = TransportError
    return cls(
        code,
        message,
        reason,
        metadata,
        retry_after,
        field or metadata.get("field", ""),
        description,
    )


def error_from_rpc(e: grpc.RpcError) -> TokendError:
    """Maps a failed call (sync or grpc.aio) to its typed error."""
    code_of = getattr(e, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(e, "details", None)
    message = (details_of() if callable(details_of) else "") or ""
    trailers_of = getattr(e, "trailing_metadata", None)
    trailers = trailers_of() if callable(trailers_of) else None
    return error_from_status(code or grpc.StatusCode.UNKNOWN, message, _rich_status(trailers))
