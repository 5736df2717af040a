"""Python client for tokend: get_token, force_refresh, watch as an iterator,
watch_all (the durable event feed, resumable by cursor), and typed exceptions
built from the gRPC status and google.rpc.ErrorInfo."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Union

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# The generated stubs import themselves as `tokend.v1`; make that resolvable
# without claiming a top-level `tokend` package for this distribution.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_gen"))
from tokend.v1 import tokend_pb2 as pb  # noqa: E402
from tokend.v1 import tokend_pb2_grpc as pb_grpc  # noqa: E402

__all__ = [
    "Client", "Token", "WatchEvent", "TokendError", "NotFound", "InvalidArgument",
    "ReconnectRequired", "Unavailable", "PermissionDenied", "Unauthenticated",
    "ResourceExhausted", "ProviderMisconfigured", "CursorExpired", "EventStream", "pb",
]


class TokendError(Exception):
    """A tokend error: the gRPC code, ErrorInfo reason and metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "",
                 metadata: Optional[dict] = None, retry_after: Optional[float] = None,
                 field: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.retry_after = retry_after
        self.field = field


class NotFound(TokendError):
    pass


class InvalidArgument(TokendError):
    pass


class ReconnectRequired(TokendError):
    @property
    def provider_error(self) -> str:
        return self.metadata.get("provider_error", "")

    @property
    def cause(self) -> str:
        """REVOKED, ROTATION_LOST (lost in a refresh cut off by a crash), NO_REFRESH_TOKEN, CONSENT_REQUIRED or INTERACTION_REQUIRED."""
        return self.metadata.get("cause", "")


class ProviderMisconfigured(TokendError):
    pass


class Unavailable(TokendError):
    pass


class PermissionDenied(TokendError):
    pass


class Unauthenticated(TokendError):
    pass


class ResourceExhausted(TokendError):
    pass


class CursorExpired(TokendError):
    """OUT_OF_RANGE, reason CURSOR_EXPIRED: the resume cursor is older than the
    event log's retention, or from another log (a restored or replaced data
    dir). Events were lost to this subscriber: resync from ListConnections,
    then watch again from `oldest_cursor` (or live)."""

    @property
    def oldest_cursor(self) -> str:
        return self.metadata.get("oldest_cursor", "")


def _error(e: grpc.RpcError) -> TokendError:
    code = e.code()
    message = e.details() or ""
    reason, metadata, retry_after, bad_field = "", {}, None, ""
    status = rpc_status.from_call(e)
    for detail in (status.details if status else []):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                bad_field = bad.field_violations[0].field
    cls = {
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    }.get(code, TokendError)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        cls = ReconnectRequired if reason == "RECONNECT_REQUIRED" else ProviderMisconfigured
    elif code == grpc.StatusCode.OUT_OF_RANGE and reason == "CURSOR_EXPIRED":
        cls = CursorExpired
    return cls(code, message, reason, metadata, retry_after, bad_field or metadata.get("field", ""))


@dataclass
class Token:
    connection_id: str
    access_token: str = field(repr=False)  # never printed by repr()
    token_type: str
    expires_in_seconds: int
    version: int
    scopes: list
    account_id: str
    # Local monotonic deadline, so this machine's clock skew does not matter.
    expires_at_monotonic: float = 0.0

    @classmethod
    def _from(cls, t: "pb.AccessToken") -> "Token":
        return cls(t.connection_id, t.access_token, t.token_type, t.expires_in_seconds,
                   t.version, list(t.scopes), t.account_id,
                   time.monotonic() + t.expires_in_seconds)


@dataclass
class WatchEvent:
    kind: str  # snapshot | token_rotated | status_changed | refresh_failed | deleted
    connection: "pb.Connection"

    @property
    def reconnect_required(self) -> bool:
        return self.connection.status == pb.CONNECTION_STATUS_RECONNECT_REQUIRED


_KINDS = {
    pb.WATCH_EVENT_TYPE_SNAPSHOT: "snapshot",
    pb.WATCH_EVENT_TYPE_TOKEN_ROTATED: "token_rotated",
    pb.WATCH_EVENT_TYPE_STATUS_CHANGED: "status_changed",
    pb.WATCH_EVENT_TYPE_REFRESH_FAILED: "refresh_failed",
    pb.WATCH_EVENT_TYPE_DELETED: "deleted",
}


def _target(endpoint: str) -> "tuple[str, bool]":
    """`host:port` and `http(s)://host:port` alike (as every tokend client
    accepts): the gRPC target, and whether the URL asked for TLS."""
    endpoint = endpoint.strip().rstrip("/")
    for scheme, tls in (("https://", True), ("http://", False)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme):], tls
    return endpoint, False


def _enum_values(values, enum, prefix: str, what: str) -> "list[int]":
    """Enum values from names ("reconnect_required", "RECONNECT_REQUIRED" or
    the full "EVENT_TYPE_RECONNECT_REQUIRED") or from the ints themselves."""
    if isinstance(values, (str, int)):
        values = (values,)
    out = []
    for v in values:
        if isinstance(v, str):
            name = v.strip().upper()
            if not name.startswith(prefix):
                name = prefix + name
            try:
                out.append(enum.Value(name))
            except ValueError:
                known = ", ".join(k[len(prefix):].lower() for k in enum.keys()
                                  if not k.endswith("_UNSPECIFIED"))
                raise ValueError(f"unknown {what} {v!r}; expected one of: {known}") from None
        else:
            out.append(int(v))
    return out


def _strings(values) -> "list[str]":
    return [values] if isinstance(values, str) else list(values)


# Codes after which a watch_all stream reconnects: the server went away
# (restart, network) rather than refusing the request.
_RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


class EventStream:
    """The stream of `Client.watch_all`: iterate it for `pb.ConnectionEvent`s.

    Checkpoints are not yielded; like events they move `cursor`, the cursor of
    the last message received, which is what to persist and pass back as
    `resume_after`. When the server goes away (UNAVAILABLE, a restart) the
    stream reconnects by itself with exponential backoff and resumes after
    `cursor`, so no event is lost or repeated; it keeps retrying for as long
    as the server is unreachable. Any other error is raised as a TokendError
    (`CursorExpired` for a cursor past the log's retention) and ends the
    stream. `close()`, from any thread, ends the iteration, and so does closing
    the Client; the stream is also a context manager."""

    def __init__(self, open_call, request: "pb.WatchConnectionsRequest",
                 initial_backoff: float = 0.1, max_backoff: float = 5.0):
        self._open_call = open_call
        self._request = request
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._delay = initial_backoff
        self._cursor: Optional[str] = None
        self._call = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._current_call()  # open now: a live stream starts from here, not the first next()

    @property
    def cursor(self) -> Optional[str]:
        """The cursor of the last message received (event or checkpoint);
        None before the first."""
        return self._cursor

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _current_call(self):
        with self._lock:
            if self._closed.is_set():
                return None
            if self._call is None:
                request = pb.WatchConnectionsRequest()
                request.CopyFrom(self._request)
                if self._cursor:
                    request.resume_after = self._cursor
                try:
                    self._call = self._open_call(request)
                except Exception:
                    self._closed.set()
                    raise
                if self._call is None:  # the Client was closed: nothing to retry
                    self._closed.set()
            return self._call

    def _drop(self, call) -> None:
        with self._lock:
            if self._call is call:
                self._call = None
        call.cancel()

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> "pb.ConnectionEvent":
        while True:
            call = self._current_call()
            if call is None:
                raise StopIteration
            try:
                m = next(call)
            except StopIteration:
                pass  # the server ended the stream, as it does when shutting down
            except grpc.RpcError as e:
                if self._closed.is_set() or e.code() == grpc.StatusCode.CANCELLED:
                    self.close()  # close(), or the Client's channel was closed
                    raise StopIteration from None
                if e.code() not in _RECONNECT_CODES:
                    self.close()
                    raise _error(e) from None
            else:
                if m.cursor:
                    self._cursor = m.cursor
                self._delay = self._initial_backoff
                if m.event_type == pb.EVENT_TYPE_CHECKPOINT:
                    continue
                return m
            self._drop(call)
            if self._closed.wait(self._delay):
                raise StopIteration
            self._delay = min(self._delay * 2, self._max_backoff)

    def close(self) -> None:
        """Cancels the call; an iteration blocked in another thread ends."""
        with self._lock:
            self._closed.set()
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Reconnect to a server that went away within seconds (gRPC's default backoff
# grows to two minutes), so watch_all streams resume soon after a restart.
_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 5000))


class Client:
    """A tokend client. `target` is host:port or http(s)://host:port; pass
    `credentials` from grpc.ssl_channel_credentials(...) for TLS (an
    https:// target without them uses the system roots), `api_key` for
    x-api-key."""

    def __init__(self, target: str = "127.0.0.1:50051", api_key: Optional[str] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None, timeout: float = 10.0):
        target, tls = _target(target)
        if tls and credentials is None:
            credentials = grpc.ssl_channel_credentials()
        self._channel = (grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
                         if credentials else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS))
        self._stub = pb_grpc.TokenServiceStub(self._channel)
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._timeout = timeout
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e) from None

    def get_token(self, connection_id: str, min_ttl_seconds: int = 0) -> Token:
        r = self._call(self._stub.GetToken, pb.GetTokenRequest(
            connection_id=connection_id, min_ttl_seconds=min_ttl_seconds))
        return Token._from(r.token)

    def force_refresh(self, connection_id: str, rejected_version: Optional[int] = None,
                      rejected_access_token: Optional[str] = None) -> tuple[Token, bool]:
        request = pb.ForceRefreshRequest(connection_id=connection_id)
        if rejected_version is not None:
            request.rejected_version = rejected_version
        elif rejected_access_token is not None:
            request.rejected_access_token = rejected_access_token
        r = self._call(self._stub.ForceRefresh, request)
        return Token._from(r.token), r.refreshed

    def install_import(self, provider: str, account_id: str, access_token: str,
                       refresh_token: str, expires_in_seconds: int, connection_id: str = "",
                       scopes: Optional[list] = None) -> "pb.InstallResponse":
        return self._call(self._stub.Install, pb.InstallRequest(
            provider=provider, connection_id=connection_id, account_id=account_id,
            token_import=pb.TokenImport(access_token=access_token, refresh_token=refresh_token,
                                        expires_in_seconds=expires_in_seconds,
                                        scopes=scopes or [])))

    def get_connection(self, connection_id: str) -> "pb.Connection":
        return self._call(self._stub.GetConnection,
                          pb.GetConnectionRequest(connection_id=connection_id)).connection

    def delete_connection(self, connection_id: str) -> None:
        self._call(self._stub.DeleteConnection,
                   pb.DeleteConnectionRequest(connection_id=connection_id))

    def watch(self, connection_id: str) -> Iterator[WatchEvent]:
        """The current state, then every change, as an iterator. Ends after
        a `deleted` event; raises a TokendError if the stream fails."""
        stream = self._stub.WatchConnection(
            pb.WatchConnectionRequest(connection_id=connection_id), metadata=self._metadata)
        try:
            for m in stream:
                kind = _KINDS.get(m.event_type)
                if kind is None:
                    continue
                yield WatchEvent(kind, m.connection)
                if kind == "deleted":
                    return
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise _error(e) from None
        finally:
            stream.cancel()

    def watch_all(self, providers: Iterable[str] = (), connection_id_prefixes: Iterable[str] = (),
                  event_types: Iterable[Union[str, int]] = (),
                  statuses: Iterable[Union[str, int]] = (),
                  resume_after: Optional[str] = None, from_oldest: bool = False) -> EventStream:
        """The events of every connection this caller may see, from tokend's
        durable event log, as an `EventStream` of `pb.ConnectionEvent`s.

        Filters: within one, any value matches; across them, all must; empty
        ones match everything. `event_types` are names such as "installed",
        "token_rotated", "refresh_failed", "reconnect_required", "recovered",
        "deleted" (or `pb.EVENT_TYPE_*` values); `statuses` are "active" or
        "reconnect_required" (or `pb.CONNECTION_STATUS_*`), the status after
        the event. With `resume_after` (a persisted `EventStream.cursor`) the
        stream replays what came after it, then goes on live; without it, it
        starts live, or with `from_oldest` at the oldest retained event.

        Errors surface while iterating: `InvalidArgument` for a malformed
        cursor, `CursorExpired` for one past retention. Closing the Client ends
        the iteration."""
        if self._closed:
            raise ValueError("the Client is closed")
        request = pb.WatchConnectionsRequest(
            filter=pb.EventFilter(
                providers=_strings(providers),
                connection_id_prefixes=_strings(connection_id_prefixes),
                event_types=_enum_values(event_types, pb.EventType, "EVENT_TYPE_", "event type"),
                statuses=_enum_values(statuses, pb.ConnectionStatus, "CONNECTION_STATUS_",
                                      "status")),
            resume_after=resume_after or "", from_oldest=from_oldest)
        return EventStream(
            lambda r: None if self._closed else self._stub.WatchConnections(
                r, metadata=self._metadata), request)
