"""The local token cache with singleflight, as in the Rust client.

Per connection id, concurrent callers share one in-flight GetToken (its
result, or its error). A cached token is handed out while more than
``min(margin, a quarter of its lifetime on receipt)`` is left, measured on
the monotonic clock from receipt time + expires_in. ReconnectRequired or
NotFound from any call about the connection, or a watch event saying it
needs reconnecting or is gone, evicts the connection at once. The number of
cached connections is bounded; the least recently used goes first.

`TokenCache` is thread-safe (for `Client`); `AsyncTokenCache` is safe for
the tasks of one event loop (for `AsyncClient`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from tokend_client.models import Token

__all__ = ["AsyncTokenCache", "TokenCache", "DEFAULT_CACHE_CAPACITY", "DEFAULT_CACHE_MARGIN"]

DEFAULT_CACHE_CAPACITY = 10_000
DEFAULT_CACHE_MARGIN = 30.0

F = TypeVar("F")


class _Slot(Generic[F]):
    __slots__ = ("flight", "token")

    def __init__(self) -> None:
        self.token: Token | None = None
        # The in-flight fetch that callers of this connection share.
        self.flight: F | None = None


class _Slots(Generic[F]):
    """The LRU of slots and the freshness rule, under one lock."""

    def __init__(self, capacity: int, margin: float, clock: Callable[[], float]) -> None:
        if capacity < 1:
            raise ValueError("cache capacity must be at least 1")
        self.capacity = capacity
        self.margin = margin
        self.clock = clock
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot[F]] = OrderedDict()

    def _slot(self, connection_id: str) -> _Slot[F]:
        """The connection's slot, made most recently used. Call under _lock."""
        slot = self._slots.get(connection_id)
        if slot is None:
            slot = self._slots[connection_id] = _Slot()
            while len(self._slots) > self.capacity:
                _, dropped = self._slots.popitem(last=False)
                dropped.token = None
        else:
            self._slots.move_to_end(connection_id)
        return slot

    def fresh(self, token: Token) -> bool:
        """More than min(margin, a quarter of its lifetime) left."""
        return token.ttl(self.clock()) > min(self.margin, token.expires_in_seconds / 4)

    def _keep(self, slot: _Slot[F], token: Token) -> None:
        """Stores a token unless the slot holds a newer one. Under _lock."""
        if slot.token is None or token.version >= slot.token.version:
            slot.token = token

    def store(self, token: Token) -> None:
        """Puts a token in (e.g. the answer of a ForceRefresh), so the
        cache never hands out the token the upstream API just rejected."""
        with self._lock:
            self._keep(self._slot(token.connection_id), token)

    def evict(self, connection_id: str) -> None:
        """Forgets the connection's token at once (ReconnectRequired,
        deleted, re-installed). A fetch in flight still completes for its
        waiters, but is not cached."""
        with self._lock:
            slot = self._slots.pop(connection_id, None)
            if slot is not None:
                slot.token = None

    def peek(self, connection_id: str) -> Token | None:
        """The cached token, fresh or not, without touching the LRU order."""
        with self._lock:
            slot = self._slots.get(connection_id)
            return slot.token if slot is not None else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(connections={len(self)}, capacity={self.capacity})"


class TokenCache(_Slots["Future[Token]"]):
    """Thread-safe cache for the sync client."""

    def __init__(
        self,
        capacity: int = DEFAULT_CACHE_CAPACITY,
        margin: float = DEFAULT_CACHE_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity, margin, clock)

    def get(self, connection_id: str, fetch: Callable[[], Token]) -> Token:
        """A fresh cached token, or the result of `fetch()`, run once for
        all the threads asking for this connection at the same time."""
        with self._lock:
            slot = self._slot(connection_id)
            if slot.token is not None and self.fresh(slot.token):
                return slot.token
            flight = slot.flight
            leader = flight is None
            if flight is None:
                flight = slot.flight = Future()
        if not leader:
            return flight.result()
        try:
            token = fetch()
        except BaseException as e:
            with self._lock:
                if slot.flight is flight:
                    slot.flight = None
            flight.set_exception(e)
            raise
        with self._lock:
            if slot.flight is flight:
                slot.flight = None
            if self._slots.get(connection_id) is slot:  # not evicted meanwhile
                self._keep(slot, token)
        flight.set_result(token)
        return token


class AsyncTokenCache(_Slots["asyncio.Future[Token]"]):
    """Cache for the asyncio client: safe for the tasks of one event loop.
    A caller cancelled while waiting does not cancel the shared fetch."""

    def __init__(
        self,
        capacity: int = DEFAULT_CACHE_CAPACITY,
        margin: float = DEFAULT_CACHE_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity, margin, clock)

    async def get(self, connection_id: str, fetch: Callable[[], Awaitable[Token]]) -> Token:
        with self._lock:
            slot = self._slot(connection_id)
            if slot.token is not None and self.fresh(slot.token):
                return slot.token
            flight = slot.flight
            if flight is None:
                flight = slot.flight = asyncio.ensure_future(
                    self._fetch(connection_id, slot, fetch)
                )
                # Retrieve the error even if every waiter was cancelled.
                flight.add_done_callback(_consume)
        return await asyncio.shield(flight)

    async def _fetch(
        self,
        connection_id: str,
        slot: _Slot[asyncio.Future[Token]],
        fetch: Callable[[], Awaitable[Token]],
    ) -> Token:
        try:
            token = await fetch()
        finally:
            with self._lock:
                slot.flight = None
        with self._lock:
            if self._slots.get(connection_id) is slot:
                self._keep(slot, token)
        return token


def _consume(f: asyncio.Future[Token]) -> None:
    if not f.cancelled():
        f.exception()
