"""The sync client: typed calls and errors, a deadline on every call,
retries with backoff while the broker is unreachable, a token cache with
singleflight, and watch streams that re-subscribe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from tokend_client import _build, _core
from tokend_client._pb import stub
from tokend_client._transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT, make_settings
from tokend_client.cache import DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_MARGIN, TokenCache
from tokend_client.errors import error_from_rpc
from tokend_client.models import (
    Connection,
    ConnectionEvent,
    Grant,
    InstallResult,
    Token,
    WatchEvent,
)
from tokend_client.streams import EventStream, WatchStream

__all__ = ["Client", "evicts"]

# Kept importable from here, where it lived before the core.
evicts = _core.evicts


class Client:
    """A tokend client (thread-safe; share one per process).

    `target` is ``host:port`` or ``http(s)://host:port``. Authenticate with
    `api_key` (sent as ``authorization: Bearer <key>``) and/or mutual TLS
    (`certificate_chain` + `private_key`, PEM bytes). TLS is used for an
    ``https://`` target or when any TLS material is given; `root_certificates`
    is the CA that signed tokend's certificate (default: the system's) and
    `server_name` overrides the name checked in it.

    Every unary call has a deadline (`timeout`, default 10 s, or the call's
    own `timeout=`); while the broker cannot be reached it is retried with
    exponential backoff (up to `retries` times, within the deadline).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tls: bool | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        cache_capacity: int = DEFAULT_CACHE_CAPACITY,
        cache_margin: float = DEFAULT_CACHE_MARGIN,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._settings = make_settings(
            target,
            api_key=api_key,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            server_name=server_name,
            credentials=credentials,
            timeout=timeout,
            retries=retries,
            options=options,
        )
        s = self._settings
        if s.credentials is not None:
            self._channel = grpc.secure_channel(s.target, s.credentials, options=s.options)
        else:
            self._channel = grpc.insecure_channel(s.target, options=s.options)
        self._stub = stub(self._channel)
        self.cache = TokenCache(cache_capacity, cache_margin)
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"Client({self._settings.describe()})"

    def close(self) -> None:
        """Closes the channel; open watch streams end."""
        self._closed.set()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------

    def _call(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None = None,
        connection_id: str | None = None,
    ) -> Any:
        """One unary call: deadline, retries while unreachable, typed errors,
        and eviction of the connection's cached token on ReconnectRequired or
        NotFound, as the sans-IO core (_core.UnaryCall) decides."""
        if self._closed.is_set():
            raise ValueError("the Client is closed")
        call = _core.UnaryCall.start(
            self._settings,
            method,
            request,
            now=time.monotonic(),
            timeout=timeout,
            connection_id=connection_id,
        )
        stub_method = getattr(self._stub, method)
        metadata = self._settings.metadata
        while True:
            try:
                return stub_method(
                    request, timeout=call.attempt_timeout(time.monotonic()), metadata=metadata
                )
            except grpc.RpcError as e:
                step = call.failed(
                    error_from_rpc(e), now=time.monotonic(), closed=self._closed.is_set()
                )
            if isinstance(step, _core.Fail):
                if step.evict:
                    self.cache.evict(step.evict)
                raise step.error
            time.sleep(step.delay)

    def _open_stream(self, method: str) -> Callable[[Any], Any]:
        stub_method = getattr(self._stub, method)

        def open_call(request: Any) -> Any:
            if self._closed.is_set():
                return None
            # No deadline: it would end a stream meant to last; keepalive
            # pings notice a dead connection, and the stream re-subscribes.
            return stub_method(request, metadata=self._settings.metadata)

        return open_call

    def _observe(self, event: WatchEvent | ConnectionEvent) -> None:
        stale = _core.evicts(event)
        if stale:
            self.cache.evict(stale)

    # -- tokens -----------------------------------------------------------

    def get_token(
        self, connection_id: str, min_ttl_seconds: int = 0, *, timeout: float | None = None
    ) -> Token:
        """A token with at least max(refresh buffer, min_ttl_seconds) left,
        straight from the broker (no cache)."""
        received = time.monotonic()
        r = self._call(
            "GetToken",
            _build.get_token(connection_id, min_ttl_seconds),
            timeout=timeout,
            connection_id=connection_id,
        )
        return _core.token_reply(r, received)

    def token(self, connection_id: str) -> Token:
        """A valid token from the local cache, asking the broker only when
        the cached one is near expiry. Concurrent callers of one connection
        share a single broker call."""
        return self.cache.get(connection_id, lambda: self.get_token(connection_id))

    def force_refresh(
        self,
        connection_id: str,
        rejected_version: int | None = None,
        rejected_access_token: str | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[Token, bool]:
        """After an upstream 401: a token newer than the rejected one (name
        it by `rejected_version`, preferably, or by value). Returns the
        token and whether the provider was called; a token already newer
        than the rejected one comes back without a provider call. With
        neither, refreshes unconditionally (rate-limited by the broker)."""
        received = time.monotonic()
        r = self._call(
            "ForceRefresh",
            _build.force_refresh(connection_id, rejected_version, rejected_access_token),
            timeout=timeout,
            connection_id=connection_id,
        )
        token, refreshed = _core.force_refresh_reply(r, received)
        self.cache.store(token)
        return token, refreshed

    # -- installs ---------------------------------------------------------

    def install(
        self,
        provider: str,
        grant: Grant = None,
        *,
        connection_id: str = "",
        account_id: str = "",
        params: Mapping[str, str] | None = None,
        replace: bool = False,
        timeout: float | None = None,
    ) -> InstallResult:
        """Creates a connection, or atomically replaces one: `grant` is an
        AuthorizationCode (code exchange), a TokenImport, or None for a
        client-credentials provider (then give `connection_id`). `params`
        fill the provider's per-connection endpoints, e.g. {"subdomain":
        "acme"}. A retried identical install has no second effect."""
        request = _core.install_request(provider, grant, connection_id, account_id, params, replace)
        result = _core.install_reply(self._call("Install", request, timeout=timeout))
        self.cache.evict(result.connection.connection_id)
        return result

    def install_code(
        self,
        provider: str,
        code: str,
        *,
        redirect_uri: str = "",
        code_verifier: str = "",
        connection_id: str = "",
        account_id: str = "",
        params: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> InstallResult:
        """Installs by exchanging an authorization code."""
        grant = _core.code_grant(code, redirect_uri, code_verifier)
        return self.install(
            provider,
            grant,
            connection_id=connection_id,
            account_id=account_id,
            params=params,
            replace=replace,
        )

    def install_import(
        self,
        provider: str,
        account_id: str,
        access_token: str,
        refresh_token: str = "",
        expires_in_seconds: int = 0,
        *,
        scopes: Iterable[str] = (),
        token_type: str = "",
        connection_id: str = "",
        params: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> InstallResult:
        """Installs by importing a token set obtained elsewhere."""
        grant = _core.import_grant(
            access_token, refresh_token, expires_in_seconds, scopes, token_type
        )
        return self.install(
            provider,
            grant,
            connection_id=connection_id,
            account_id=account_id,
            params=params,
            replace=replace,
        )

    def install_client_credentials(
        self,
        provider: str,
        connection_id: str,
        *,
        params: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> InstallResult:
        """Installs a connection of a client-credentials provider: no user,
        no code, no token; tokend asks for each token with its own client
        credentials."""
        return self.install(
            provider, None, connection_id=connection_id, params=params, replace=replace
        )

    # -- connections ------------------------------------------------------

    def get_connection(self, connection_id: str, *, timeout: float | None = None) -> Connection:
        r = self._call(
            "GetConnection",
            _core.get_connection_request(connection_id),
            timeout=timeout,
            connection_id=connection_id,
        )
        return _core.connection_reply(r)

    def list_connections_page(
        self,
        *,
        provider: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> tuple[list[Connection], str]:
        """One page: its connections and the next page's token ("" on the last)."""
        request = _build.list_connections(provider, status, page_size, page_token)
        r = self._call("ListConnections", request, timeout=timeout)
        return _core.page_reply(r)

    def list_connections(
        self,
        *,
        provider: str | None = None,
        status: str | None = None,
        page_size: int = 0,
    ) -> Iterator[Connection]:
        """Every connection in id order, optionally of one provider and one
        status ("ACTIVE", "RECONNECT_REQUIRED"), fetched page by page as the
        iteration goes (each page a call with its own deadline)."""
        # Validate the filter now, not at the first next().
        _build.list_connections(provider, status, page_size, "")
        return self._pages(provider, status, page_size)

    def _pages(
        self, provider: str | None, status: str | None, page_size: int
    ) -> Iterator[Connection]:
        token = ""
        while True:
            connections, token = self.list_connections_page(
                provider=provider, status=status, page_size=page_size, page_token=token
            )
            yield from connections
            if not token:
                return

    def delete_connection(self, connection_id: str, *, timeout: float | None = None) -> None:
        """Forgets the connection and its tokens; watchers get DELETED."""
        self._call(
            "DeleteConnection",
            _core.delete_connection_request(connection_id),
            timeout=timeout,
            connection_id=connection_id,
        )
        self.cache.evict(connection_id)

    # -- streams ----------------------------------------------------------

    def watch(self, connection_id: str) -> WatchStream:
        """The connection's state, then every change, as an iterator of
        WatchEvent that re-subscribes across broker restarts. A
        RECONNECT_REQUIRED or DELETED event evicts the cached token."""
        if self._closed.is_set():
            raise ValueError("the Client is closed")
        return WatchStream(
            connection_id, self._open_stream("WatchConnection"), self._observe, self._closed.is_set
        )

    def watch_all(
        self,
        *,
        providers: str | Iterable[str] = (),
        connection_id_prefixes: str | Iterable[str] = (),
        event_types: str | Iterable[str] = (),
        statuses: str | Iterable[str] = (),
        resume_after: str | None = None,
        from_oldest: bool = False,
    ) -> EventStream:
        """The events of every connection this caller may see, from tokend's
        durable log, as an EventStream of ConnectionEvent.

        Filters: within one any value matches, across them all must, empty
        ones match everything. `event_types` are names such as "INSTALLED",
        "TOKEN_ROTATED", "REFRESH_FAILED", "RECONNECT_REQUIRED", "RECOVERED",
        "DELETED" (any case); `statuses` "ACTIVE" or "RECONNECT_REQUIRED",
        the status after the event. With `resume_after` (a persisted
        `EventStream.cursor`) it replays what came after, then goes on live;
        without, it starts live, or at the oldest retained event with
        `from_oldest`. Errors come while iterating: InvalidArgument for a
        malformed cursor, CursorExpired for one past retention."""
        if self._closed.is_set():
            raise ValueError("the Client is closed")
        request = _build.watch_all(
            providers, connection_id_prefixes, event_types, statuses, resume_after, from_oldest
        )
        return EventStream(
            request, self._open_stream("WatchConnections"), self._observe, self._closed.is_set
        )
