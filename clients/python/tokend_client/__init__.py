"""Python client for tokend: get_token, force_refresh, watch as an iterator,
and typed exceptions built from the gRPC status and google.rpc.ErrorInfo."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

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
    "ResourceExhausted", "ProviderMisconfigured", "pb",
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
        """REVOKED, ROTATION_LOST (lost in a refresh cut off by a crash) or NO_REFRESH_TOKEN."""
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
        self._channel = (grpc.secure_channel(target, credentials) if credentials
                         else grpc.insecure_channel(target))
        self._stub = pb_grpc.TokenServiceStub(self._channel)
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._timeout = timeout

    def close(self) -> None:
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
