"""Watch streams of the sync client that survive broker restarts.

Both re-subscribe by themselves with exponential backoff when the broker
goes away or ends the stream (a restart), for as long as it takes; they
never end silently. They end after DELETED (`watch`), on close(), when the
Client is closed, or with the typed error that makes re-subscribing
pointless (NotFound, PermissionDenied, CursorExpired, ...).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc

from tokend_client._pb import pb
from tokend_client._transport import Backoff, stream_retryable
from tokend_client.errors import error_from_rpc
from tokend_client.models import ConnectionEvent, WatchEvent

__all__ = ["EventStream", "WatchStream"]

T = TypeVar("T")

# Opens a server-streaming call for a request; None once the client is closed.
Opener = Callable[[Any], Any]
# Told of what went by, to keep the client's token cache right.
Observer = Callable[[T], None]


class _Resubscribing(Generic[T]):
    """An iterator over a server stream that re-opens it after a break."""

    def __init__(
        self, open_call: Opener, observe: Callable[[T], None], client_closed: Callable[[], bool]
    ) -> None:
        self._open_call = open_call
        self._observe = observe
        self._client_closed = client_closed
        self._backoff = Backoff(0.1, 5.0)
        self._call: Any = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        #: How many times the stream was re-opened after a break.
        self.resubscribes = 0
        # Open now: a live stream starts here, not at the first next().
        self._current_call()

    # What subclasses define.
    def _request(self) -> Any:
        raise NotImplementedError

    def _convert(self, message: Any) -> T | None:
        """The item for a message, or None to skip it."""
        raise NotImplementedError

    def _is_last(self, item: T) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _current_call(self) -> Any:
        with self._lock:
            if self._closed.is_set():
                return None
            if self._call is None:
                try:
                    self._call = self._open_call(self._request())
                except grpc.RpcError as e:
                    self._call = _Failed(e)
                except BaseException:
                    self._closed.set()
                    raise
                if self._call is None:  # the Client was closed
                    self._closed.set()
            return self._call

    def _drop(self, call: Any) -> None:
        with self._lock:
            if self._call is call:
                self._call = None
        call.cancel()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        while True:
            call = self._current_call()
            if call is None:
                raise StopIteration
            retry_after: float | None = None
            try:
                message = next(call)
            except StopIteration:
                pass  # the broker ended the stream, as it does when shutting down
            except grpc.RpcError as e:
                if self._closed.is_set() or self._client_closed():
                    self.close()
                    raise StopIteration from None
                err = error_from_rpc(e)
                if not stream_retryable(err):
                    self.close()
                    raise err from None
                retry_after = err.retry_after
            else:
                self._backoff.reset()
                item = self._convert(message)
                if item is None:
                    continue
                self._observe(item)
                if self._is_last(item):
                    self.close()
                return item
            self._drop(call)
            if self._closed.wait(self._backoff.next(retry_after)):
                raise StopIteration
            self.resubscribes += 1

    def close(self) -> None:
        """Cancels the call; an iteration blocked in another thread ends."""
        with self._lock:
            self._closed.set()
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failed:
    """A call that failed to open: raises its error on the first next()."""

    def __init__(self, error: grpc.RpcError) -> None:
        self._error = error

    def __next__(self) -> Any:
        raise self._error

    def cancel(self) -> None:
        pass


class WatchStream(_Resubscribing[WatchEvent]):
    """`Client.watch(connection_id)`: the connection's current state
    (SNAPSHOT), then every change. After a broker restart it re-subscribes
    and yields a fresh SNAPSHOT, so a change made while it was away is
    seen. Ends after DELETED; raises NotFound for a connection that does
    not exist (any more)."""

    def __init__(
        self,
        connection_id: str,
        open_call: Opener,
        observe: Observer[WatchEvent],
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

    def __enter__(self) -> WatchStream:
        return self


class EventStream(_Resubscribing[ConnectionEvent]):
    """`Client.watch_all(...)`: events of every connection the caller may
    see, from tokend's durable log. CHECKPOINTs are not yielded; like
    events they move `cursor`, the position to persist and pass back as
    `resume_after`. After a break it resumes after `cursor`, so no event
    is lost or repeated. `close()` works from any thread."""

    def __init__(
        self,
        request: Any,
        open_call: Opener,
        observe: Observer[ConnectionEvent],
        client_closed: Callable[[], bool],
    ) -> None:
        self._base_request = request
        self._cursor: str | None = None
        self._caught_up = False
        super().__init__(open_call, observe, client_closed)

    @property
    def cursor(self) -> str | None:
        """The cursor of the last message received (event or checkpoint);
        None before the first."""
        return self._cursor

    @property
    def caught_up(self) -> bool:
        """Whether the replay (of resume_after / from_oldest) is over."""
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

    def __enter__(self) -> EventStream:
        return self
