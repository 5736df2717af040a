"""The SDK's own types: tokens, connections and events as dataclasses with
enums as NAMES ("ACTIVE", "RECONNECT_REQUIRED"), never numbers, and the
conversions from the generated protobuf messages.

Secrets (access tokens, refresh tokens, codes) are left out of every repr.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

from google.protobuf.timestamp_pb2 import Timestamp

from tokend_client._pb import pb

__all__ = [
    "AuthorizationCode",
    "Connection",
    "ConnectionEvent",
    "InstallResult",
    "ProviderError",
    "Token",
    "TokenImport",
    "WatchEvent",
]


def enum_name(enum: Any, prefix: str, value: int) -> str:
    """The value's name without the enum's prefix: 2 of ConnectionStatus is
    "RECONNECT_REQUIRED". A value this SDK does not know yet (a newer
    broker) comes out as "UNKNOWN"."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "UNKNOWN"
    return name[len(prefix) :] if name.startswith(prefix) else name


def enum_values(values: str | int | Iterable[str | int], enum: Any, prefix: str) -> list[int]:
    """Enum numbers from names in any case, with or without the prefix
    ("reconnect_required", "EVENT_TYPE_RECONNECT_REQUIRED"), or numbers."""
    if isinstance(values, (str, int)):
        values = (values,)
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
            continue
        name = v.strip().upper()
        if not name.startswith(prefix):
            name = prefix + name
        try:
            out.append(enum.Value(name))
        except ValueError:
            known = ", ".join(
                k[len(prefix) :] for k in enum.keys() if not k.endswith("_UNSPECIFIED")
            )
            raise ValueError(f"unknown value {v!r}; expected one of: {known}") from None
    return out


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    ts: Timestamp = getattr(message, name)
    return ts.ToDatetime(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ProviderError:
    """The last failure tokend saw from a provider (never a secret)."""

    error_class: str  # REVOKED | CLIENT_MISCONFIGURED | RATE_LIMITED | TRANSIENT
    code: str  # the provider's code: "invalid_grant", "http_503"
    message: str
    correlation_id: str
    http_status: int
    occurred_at: datetime | None

    @classmethod
    def from_pb(cls, e: Any) -> ProviderError:
        return cls(
            error_class=enum_name(pb.ErrorClass, "ERROR_CLASS_", e.error_class),
            code=e.code,
            message=e.message,
            correlation_id=e.correlation_id,
            http_status=e.http_status,
            occurred_at=_time(e, "occurred_at"),
        )


@dataclass(frozen=True)
class Connection:
    """A connection's metadata. It never carries a secret."""

    connection_id: str
    provider: str
    account_id: str
    status: str  # ACTIVE | RECONNECT_REQUIRED
    version: int
    scopes: tuple[str, ...]
    token_type: str
    access_token_expires_at: datetime | None
    last_refresh_at: datetime | None
    last_error: ProviderError | None
    created_at: datetime | None
    updated_at: datetime | None
    next_refresh_at: datetime | None
    # REVOKED | ROTATION_LOST | NO_REFRESH_TOKEN | CONSENT_REQUIRED |
    # INTERACTION_REQUIRED; "UNSPECIFIED" while none applies.
    reconnect_cause: str
    params: Mapping[str, str]
    metadata: Mapping[str, str]

    @property
    def reconnect_required(self) -> bool:
        return self.status == "RECONNECT_REQUIRED"

    @classmethod
    def from_pb(cls, c: Any) -> Connection:
        return cls(
            connection_id=c.connection_id,
            provider=c.provider,
            account_id=c.account_id,
            status=enum_name(pb.ConnectionStatus, "CONNECTION_STATUS_", c.status),
            version=c.version,
            scopes=tuple(c.scopes),
            token_type=c.token_type,
            access_token_expires_at=_time(c, "access_token_expires_at"),
            last_refresh_at=_time(c, "last_refresh_at"),
            last_error=ProviderError.from_pb(c.last_error) if c.HasField("last_error") else None,
            created_at=_time(c, "created_at"),
            updated_at=_time(c, "updated_at"),
            next_refresh_at=_time(c, "next_refresh_at"),
            reconnect_cause=enum_name(pb.ReconnectCause, "RECONNECT_CAUSE_", c.reconnect_cause),
            params=dict(c.params),
            metadata=dict(c.metadata),
        )


@dataclass(frozen=True)
class Token:
    """An access token as tokend handed it out. `access_token` is the
    secret: put it in an Authorization header, never in a log; it is left
    out of repr() and str()."""

    connection_id: str
    access_token: str = field(repr=False)
    token_type: str
    # Seconds of validity left when tokend sent it.
    expires_in_seconds: int
    # The connection's token version: what ForceRefresh wants after a 401.
    version: int
    scopes: tuple[str, ...]
    account_id: str
    # Absolute expiry by tokend's clock (informational; use ttl()).
    expires_at: datetime | None
    # Expiry on this process's MONOTONIC clock: receipt time + expires_in,
    # so neither clock skew nor wall-clock jumps matter.
    expires_at_monotonic: float

    @classmethod
    def from_pb(cls, t: Any, received_at: float | None = None) -> Token:
        received = time.monotonic() if received_at is None else received_at
        ttl = max(int(t.expires_in_seconds), 0)
        return cls(
            connection_id=t.connection_id,
            access_token=t.access_token,
            token_type=t.token_type or "Bearer",
            expires_in_seconds=ttl,
            version=t.version,
            scopes=tuple(t.scopes),
            account_id=t.account_id,
            expires_at=_time(t, "expires_at"),
            expires_at_monotonic=received + ttl,
        )

    def ttl(self, now: float | None = None) -> float:
        """Seconds left before expiry, by the monotonic clock."""
        return self.expires_at_monotonic - (time.monotonic() if now is None else now)

    @property
    def authorization(self) -> str:
        """The Authorization header value: ``Bearer <token>``."""
        return f"Bearer {self.access_token}"


@dataclass(frozen=True)
class AuthorizationCode:
    """Install by exchanging an OAuth2 authorization code (PKCE supported)."""

    code: str = field(repr=False)
    redirect_uri: str = ""
    code_verifier: str = field(default="", repr=False)


@dataclass(frozen=True)
class TokenImport:
    """Install by importing a token set obtained elsewhere."""

    access_token: str = field(repr=False)
    refresh_token: str = field(default="", repr=False)
    # Seconds of validity left on access_token; 0 means already expired.
    expires_in_seconds: int = 0
    scopes: tuple[str, ...] = ()
    token_type: str = ""


#: What `install` takes as its grant: None installs a client-credentials
#: connection (the provider's grant = "client_credentials").
Grant = Union[AuthorizationCode, TokenImport, None]


@dataclass(frozen=True)
class InstallResult:
    connection: Connection
    # False when an existing connection was replaced.
    created: bool
    # True when this was a retry of an install already applied.
    replayed: bool

    @classmethod
    def from_pb(cls, r: Any) -> InstallResult:
        return cls(Connection.from_pb(r.connection), r.created, r.replayed)


@dataclass(frozen=True)
class WatchEvent:
    """One event of `watch(connection_id)`."""

    # SNAPSHOT (on subscribe and after every re-subscribe) | TOKEN_ROTATED |
    # STATUS_CHANGED | REFRESH_FAILED | DELETED
    kind: str
    connection: Connection
    event_time: datetime | None

    @property
    def reconnect_required(self) -> bool:
        return self.connection.reconnect_required

    @classmethod
    def from_pb(cls, m: Any) -> WatchEvent | None:
        kind = enum_name(pb.WatchEventType, "WATCH_EVENT_TYPE_", m.event_type)
        if kind in ("UNSPECIFIED", "UNKNOWN") or not m.HasField("connection"):
            return None
        return cls(kind, Connection.from_pb(m.connection), _time(m, "event_time"))


@dataclass(frozen=True)
class ConnectionEvent:
    """One entry of tokend's durable event log (`watch_all`)."""

    # Opaque; persist it and pass it as resume_after to continue after it.
    cursor: str
    sequence: int
    # INSTALLED | TOKEN_ROTATED | REFRESH_FAILED | RECONNECT_REQUIRED |
    # RECOVERED | DELETED (CHECKPOINTs are consumed by the stream)
    event_type: str
    event_time: datetime | None
    connection_id: str
    # The connection after the event; None when the broker could not decode it.
    connection: Connection | None
    # For RECONNECT_REQUIRED: why ("REVOKED", ...); "UNSPECIFIED" otherwise.
    cause: str

    @classmethod
    def from_pb(cls, m: Any) -> ConnectionEvent:
        return cls(
            cursor=m.cursor,
            sequence=m.sequence,
            event_type=enum_name(pb.EventType, "EVENT_TYPE_", m.event_type),
            event_time=_time(m, "event_time"),
            connection_id=m.connection_id,
            connection=Connection.from_pb(m.connection) if m.HasField("connection") else None,
            cause=enum_name(pb.ReconnectCause, "RECONNECT_CAUSE_", m.cause),
        )
