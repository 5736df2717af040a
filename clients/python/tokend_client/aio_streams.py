"""Watch streams of the asyncio client: the async twins of `streams`.

They re-subscribe with exponential backoff when the broker goes away or ends
the stream (a restart), for as long as it takes; they never end silently.
They end after DELETED (`watch`), on `aclose()`, when the AsyncClient is
closed, or with the typed error that makes re-subscribing pointless.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from tokend_client._pb import pb
from tokend_client._transport import Backoff, stream_retryable
from tokend_client.errors import error_from_rpc
from tokend_client.models import ConnectionEvent, WatchEvent

__all__ = ["AsyncEventStream", "AsyncWatchStream"]

T = TypeVar("T")

Opener = Callable[[Any], Any]


class _AsyncResubscribing(Generic[T]):
    """An async iterator over a server stream that re-opens it after a break.
    Made inside the running event loop (the call opens at once)."""

    def __init__(
        self,
        open_call: Opener,
        observe: Callable[[T], None],
        client_closed: Callable[[], bool],
    ) -> None:
        self._open_call = open_call
        self._observe = observe
        self._client_closed = client_closed
        self._backoff = Backoff(0.1, 5.0)
        self._call: Any = None
        self._closed = False
        self._closed_event = asyncio.Event()
        #: How many times the stream was re-opened after a break.
        self.resubscribes = 0
        self._current_call()

    def _request(self) -> Any:
        raise NotImplementedError

    def _convert(self, message: Any) -> T | None:
        raise NotImplementedError

    def _is_last(self, item: T) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def _current_call(self) -> Any:
        if self._closed:
            return None
        if self._call is None:
            self._call = self._open_call(self._request())
            if self._call is None:  # the AsyncClient was closed
                self._mark_closed()
        return self._call

    def _drop(self, call: Any) -> None:
        if self._call is call:
            self._call = None
        call.cancel()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            call = self._current_call()
            if call is None:
                raise StopAsyncIteration
            retry_after: float | None = None
            try:
                message = await call.read()
            except asyncio.CancelledError:
                # The call was cancelled under us: by aclose() from another
                # task, or by closing the AsyncClient (its channel). Anything
                # else is this task being cancelled: let that through.
                if self._closed or self._client_closed():
                    self._mark_closed()
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as e:
                if self._closed or self._client_closed():
                    self._mark_closed()
                    raise StopAsyncIteration from None
                err = error_from_rpc(e)
                if not stream_retryable(err):
                    self.close()
                    raise err from None
                retry_after = err.retry_after
            else:
                if message is not grpc.aio.EOF:  # EOF: the broker ended the stream
                    self._backoff.reset()
                    item = self._convert(message)
                    if item is None:
                        continue
                    self._observe(item)
                    if self._is_last(item):
                        self.close()
                    return item
            self._drop(call)
            try:
                await asyncio.wait_for(self._closed_event.wait(), self._backoff.next(retry_after))
                raise StopAsyncIteration
            except asyncio.TimeoutError:
                pass
            self.resubscribes += 1

    def _mark_closed(self) -> None:
        self._closed = True
        self._closed_event.set()

    def close(self) -> None:
        """Cancels the call; an iteration awaiting in another task ends."""
        self._mark_closed()
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncWatchStream(_AsyncResubscribing[WatchEvent]):
    """`AsyncClient.watch(connection_id)`: SNAPSHOT, then every change;
    a fresh SNAPSHOT after each re-subscribe; ends after DELETED."""

    def __init__(
        self,
        connection_id: str,
        open_call: Opener,
        observe: Callable[[WatchEvent], None],
        client_closed: Callable[[], bool],
    ) -> None:
        self.connection_id = connection_id
        super().__init__(open_call, observe, client_closed)

    def _request(self) -> Any:
        return pb.WatchConnectionRequest(connection_id=self.connection_id)

    def _convert(self, message: Any) -> WatchEvent | None:
        return WatchEvent.from_pb(message)

    def _is_last(self, item: WatchEvent) -> bool:
        return item.kind == "DELETED"

    async def __aenter__(self) -> AsyncWatchStream:
        return self


class AsyncEventStream(_AsyncResubscribing[ConnectionEvent]):
    """`AsyncClient.watch_all(...)`: the durable event feed; CHECKPOINTs
    move `cursor` without being yielded; resumes after `cursor`."""

    def __init__(
        self,
        request: Any,
        open_call: Opener,
        observe: Callable[[ConnectionEvent], None],
        client_closed: Callable[[], bool],
    ) -> None:
        self._base_request = request
        self._cursor: str | None = None
        self._caught_up = False
        super().__init__(open_call, observe, client_closed)

    @property
    def cursor(self) -> str | None:
        return self._cursor

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    def _request(self) -> Any:
        request = pb.WatchConnectionsRequest()
        request.CopyFrom(self._base_request)
        if self._cursor:
            request.resume_after = self._cursor
        return request

    def _convert(self, message: Any) -> ConnectionEvent | None:
        if message.cursor:
            self._cursor = message.cursor
        if message.caught_up:
            self._caught_up = True
        if message.event_type == pb.EVENT_TYPE_CHECKPOINT:
            return None
        return ConnectionEvent.from_pb(message)

    async def __aenter__(self) -> AsyncEventStream:
        return self
