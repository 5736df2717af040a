"""The asyncio client (grpc.aio), with the same surface as `Client`.

Create it inside the running event loop and use it from that loop only
(``async with AsyncClient(...) as tokend:``); its channel, cache and streams
belong to that loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from tokend_client import _build, _core
from tokend_client._pb import stub
from tokend_client._transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT, make_settings
from tokend_client.aio_streams import AsyncEventStream, AsyncWatchStream
from tokend_client.cache import DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_MARGIN, AsyncTokenCache
from tokend_client.errors import error_from_rpc
from tokend_client.models import (
    Connection,
    ConnectionEvent,
    Grant,
    InstallResult,
    Token,
    WatchEvent,
)

__all__ = ["AsyncClient"]


class AsyncClient:
    """The asyncio twin of `tokend_client.Client`: same arguments, same
    methods (coroutines; `list_connections` is an async iterator; `watch`
    and `watch_all` return async iterators)."""

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
            self._channel = grpc.aio.secure_channel(s.target, s.credentials, options=s.options)
        else:
            self._channel = grpc.aio.insecure_channel(s.target, options=s.options)
        self._stub = stub(self._channel)
        self.cache = AsyncTokenCache(cache_capacity, cache_margin)
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncClient({self._settings.describe()})"

    async def close(self) -> None:
        """Closes the channel; open watch streams end."""
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------

    async def _call(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None = None,
        connection_id: str | None = None,
    ) -> Any:
        if self._closed:
            raise ValueError("the AsyncClient is closed")
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
                return await stub_method(
                    request, timeout=call.attempt_timeout(time.monotonic()), metadata=metadata
                )
            except grpc.RpcError as e:
                step = call.failed(error_from_rpc(e), now=time.monotonic(), closed=self._closed)
            if isinstance(step, _core.Fail):
                if step.evict:
                    self.cache.evict(step.evict)
                raise step.error
            await asyncio.sleep(step.delay)

    def _open_stream(self, method: str) -> Any:
        stub_method = getattr(self._stub, method)

        def open_call(request: Any) -> Any:
            if self._closed:
                return None
            return stub_method(request, metadata=self._settings.metadata)

        return open_call

    def _is_closed(self) -> bool:
        return self._closed

    def _observe(self, event: WatchEvent | ConnectionEvent) -> None:
        stale = _core.evicts(event)
        if stale:
            self.cache.evict(stale)

    # -- tokens -----------------------------------------------------------

    async def get_token(
        self, connection_id: str, min_ttl_seconds: int = 0, *, timeout: float | None = None
    ) -> Token:
        received = time.monotonic()
        r = await self._call(
            "GetToken",
            _build.get_token(connection_id, min_ttl_seconds),
            timeout=timeout,
            connection_id=connection_id,
        )
        return _core.token_reply(r, received)

    async def token(self, connection_id: str) -> Token:
        """A valid token from the cache; concurrent callers share one fetch."""
        return await self.cache.get(connection_id, lambda: self.get_token(connection_id))

    async def force_refresh(
        self,
        connection_id: str,
        rejected_version: int | None = None,
        rejected_access_token: str | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[Token, bool]:
        received = time.monotonic()
        r = await self._call(
            "ForceRefresh",
            _build.force_refresh(connection_id, rejected_version, rejected_access_token),
            timeout=timeout,
            connection_id=connection_id,
        )
        token, refreshed = _core.force_refresh_reply(r, received)
        self.cache.store(token)
        return token, refreshed

    # -- installs ---------------------------------------------------------

    async def install(
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
        request = _core.install_request(provider, grant, connection_id, account_id, params, replace)
        result = _core.install_reply(await self._call("Install", request, timeout=timeout))
        self.cache.evict(result.connection.connection_id)
        return result

    async def install_code(
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
        grant = _core.code_grant(code, redirect_uri, code_verifier)
        return await self.install(
            provider,
            grant,
            connection_id=connection_id,
            account_id=account_id,
            params=params,
            replace=replace,
        )

    async def install_import(
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
        grant = _core.import_grant(
            access_token, refresh_token, expires_in_seconds, scopes, token_type
        )
        return await self.install(
            provider,
            grant,
            connection_id=connection_id,
            account_id=account_id,
            params=params,
            replace=replace,
        )

    async def install_client_credentials(
        self,
        provider: str,
        connection_id: str,
        *,
        params: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> InstallResult:
        return await self.install(
            provider, None, connection_id=connection_id, params=params, replace=replace
        )

    # -- connections ------------------------------------------------------

    async def get_connection(
        self, connection_id: str, *, timeout: float | None = None
    ) -> Connection:
        r = await self._call(
            "GetConnection",
            _core.get_connection_request(connection_id),
            timeout=timeout,
            connection_id=connection_id,
        )
        return _core.connection_reply(r)

    async def list_connections_page(
        self,
        *,
        provider: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> tuple[list[Connection], str]:
        request = _build.list_connections(provider, status, page_size, page_token)
        r = await self._call("ListConnections", request, timeout=timeout)
        return _core.page_reply(r)

    def list_connections(
        self,
        *,
        provider: str | None = None,
        status: str | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[Connection]:
        """Every connection, page by page: ``async for c in tokend.list_connections()``."""
        _build.list_connections(provider, status, page_size, "")
        return self._pages(provider, status, page_size)

    async def _pages(
        self, provider: str | None, status: str | None, page_size: int
    ) -> AsyncIterator[Connection]:
        token = ""
        while True:
            connections, token = await self.list_connections_page(
                provider=provider, status=status, page_size=page_size, page_token=token
            )
            for c in connections:
                yield c
            if not token:
                return

    async def delete_connection(self, connection_id: str, *, timeout: float | None = None) -> None:
        await self._call(
            "DeleteConnection",
            _core.delete_connection_request(connection_id),
            timeout=timeout,
            connection_id=connection_id,
        )
        self.cache.evict(connection_id)

    # -- streams ----------------------------------------------------------

    def watch(self, connection_id: str) -> AsyncWatchStream:
        """``async for event in tokend.watch(id)``: see `Client.watch`."""
        if self._closed:
            raise ValueError("the AsyncClient is closed")
        return AsyncWatchStream(
            connection_id, self._open_stream("WatchConnection"), self._observe, self._is_closed
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
    ) -> AsyncEventStream:
        """``async for event in tokend.watch_all(...)``: see `Client.watch_all`."""
        if self._closed:
            raise ValueError("the AsyncClient is closed")
        request = _build.watch_all(
            providers, connection_id_prefixes, event_types, statuses, resume_after, from_oldest
        )
        return AsyncEventStream(
            request, self._open_stream("WatchConnections"), self._observe, self._is_closed
        )
