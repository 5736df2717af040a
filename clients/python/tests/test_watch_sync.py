"""The sync client's streams against a live broker: watch sees
RECONNECT_REQUIRED after a sandbox revocation (and evicts the cached
token), re-subscribes across a broker restart, ends after DELETED; watch_all
follows the durable feed, resumes by cursor, filters server-side, raises
typed errors for bad cursors, and reconnects across a restart."""

from __future__ import annotations

import base64
import queue
import struct
import threading
import time
from typing import Any

import pytest
from helpers import Broker, unique

import tokend_client as tokend


def install(client: tokend.Client, broker: Broker, prefix: str) -> tuple[str, str]:
    account = unique(prefix)
    issued = broker.mint(account)
    result = client.install_import(
        "sandbox", account, issued["access_token"], issued["refresh_token"], 1800
    )
    return result.connection.connection_id, account


def next_within(stream: Any, timeout: float = 10.0) -> Any:
    """next(stream), but a stream that yields nothing in time is closed and
    fails the test instead of hanging it."""
    timer = threading.Timer(timeout, stream.close)
    timer.start()
    try:
        return next(stream)
    except StopIteration:
        raise AssertionError(f"no event within {timeout}s") from None
    finally:
        timer.cancel()


def test_watch_sees_reconnect_required_and_evicts(client: tokend.Client, broker: Broker) -> None:
    cid, account = install(client, broker, "sync-watch")
    client.token(cid)
    with client.watch(cid) as events:
        first = next_within(events)
        assert first.kind == "SNAPSHOT" and first.connection.status == "ACTIVE"
        assert isinstance(first.connection, tokend.Connection)
        broker.revoke(account)
        # Another client hits the revocation; this one hears of it on its watch.
        with tokend.Client(broker.target) as other, pytest.raises(tokend.ReconnectRequired):
            other.force_refresh(cid)
        event = next_within(events)
        while event.kind != "STATUS_CHANGED":
            event = next_within(events)
    assert event.reconnect_required and event.connection.status == "RECONNECT_REQUIRED"
    assert event.connection.reconnect_cause == "REVOKED"
    assert event.connection.last_error is not None
    assert event.connection.last_error.code == "invalid_grant"
    assert event.connection.last_error.error_class == "REVOKED"
    # The watch event evicted this client's cached token.
    assert client.cache.peek(cid) is None
    with pytest.raises(tokend.ReconnectRequired):
        client.token(cid)


def test_watch_resubscribes_across_a_broker_restart(own_broker: Broker) -> None:
    with tokend.Client(own_broker.target) as client:
        cid, account = install(client, own_broker, "sync-watch-restart")
        events = client.watch(cid)
        assert next_within(events).kind == "SNAPSHOT"
        own_broker.restart()
        again = next_within(events, timeout=20)
        assert again.kind == "SNAPSHOT" and again.connection.connection_id == cid
        assert events.resubscribes >= 1 and not events.closed
        own_broker.revoke(account)
        with pytest.raises(tokend.ReconnectRequired):
            client.force_refresh(cid)
        event = next_within(events)
        while not event.reconnect_required:
            event = next_within(events)
        assert event.kind == "STATUS_CHANGED"
        events.close()


def test_watch_ends_after_deleted_and_raises_not_found(
    client: tokend.Client, broker: Broker
) -> None:
    cid, _ = install(client, broker, "sync-watch-delete")
    events = client.watch(cid)
    assert next_within(events).kind == "SNAPSHOT"
    client.delete_connection(cid)
    assert next_within(events).kind == "DELETED"
    assert list(events) == [] and events.closed
    with pytest.raises(tokend.NotFound):
        next_within(client.watch(cid))


class Collector:
    """Iterates an EventStream on a thread, as a consumer would, so the test
    can wait for the stream to start (its first checkpoint moves `cursor`)
    and take events with a timeout."""

    def __init__(self, stream: tokend.EventStream) -> None:
        self.stream = stream
        self.events: queue.Queue[tokend.ConnectionEvent] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                self.events.put(event)
        except Exception as e:
            self.error = e

    def started(self, timeout: float = 10.0) -> Collector:
        deadline = time.monotonic() + timeout
        while self.stream.cursor is None:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "the stream sent no checkpoint"
            time.sleep(0.01)
        return self

    def take(self, n: int, timeout: float = 10.0) -> list[tokend.ConnectionEvent]:
        deadline, out = time.monotonic() + timeout, []
        while len(out) < n:
            try:
                out.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"got {len(out)} of {n} events; error: {self.error!r}"
                ) from None
        return out

    def quiet(self, seconds: float = 0.3) -> None:
        time.sleep(seconds)
        assert self.events.empty(), [e.connection_id for e in list(self.events.queue)]
        assert self.error is None, self.error

    def close(self) -> None:
        self.stream.close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "close() did not end the iteration"
        assert self.error is None, self.error


def install_many(client: tokend.Client, broker: Broker, prefix: str, n: int) -> list[str]:
    return [install(client, broker, prefix)[0] for _ in range(n)]


def test_watch_all_live_events_and_cursor(client: tokend.Client, broker: Broker) -> None:
    prefix = unique("sync-live")
    stream = client.watch_all(connection_id_prefixes=f"sandbox-{prefix}")
    assert stream.cursor is None
    feed = Collector(stream).started()
    ids = install_many(client, broker, prefix, 3)
    events = feed.take(3)
    feed.quiet()
    assert [e.event_type for e in events] == ["INSTALLED"] * 3
    assert [e.connection_id for e in events] == ids
    assert [e.connection.connection_id for e in events if e.connection] == ids
    assert all(isinstance(e.connection, tokend.Connection) for e in events)
    assert events[0].sequence < events[1].sequence < events[2].sequence
    assert len({e.cursor for e in events}) == 3
    assert stream.cursor == events[-1].cursor and stream.caught_up
    feed.close()
    assert stream.closed


def test_watch_all_resumes_after_cursor(client: tokend.Client, broker: Broker) -> None:
    prefix = unique("sync-resume")
    with client.watch_all(connection_id_prefixes=[f"sandbox-{prefix}"]) as stream:
        feed = Collector(stream).started()
        first = install_many(client, broker, prefix, 3)
        assert [e.connection_id for e in feed.take(3)] == first
        feed.close()
    saved = stream.cursor
    later = install_many(client, broker, prefix, 2)
    resumed = client.watch_all(resume_after=saved, connection_id_prefixes=[f"sandbox-{prefix}"])
    feed = Collector(resumed)
    events = feed.take(2)
    feed.quiet()
    assert [e.connection_id for e in events] == later
    assert [e.event_type for e in events] == ["INSTALLED"] * 2
    assert events[0].sequence < events[1].sequence
    assert resumed.cursor == events[-1].cursor
    feed.close()


def test_watch_all_filters_server_side(client: tokend.Client, broker: Broker) -> None:
    prefix = unique("sync-filter")
    (rr_a, account_a), (rr_b, account_b) = (
        install(client, broker, f"{prefix}-a"),
        install(client, broker, f"{prefix}-b"),
    )
    only_a = Collector(
        client.watch_all(event_types=["reconnect_required"], connection_id_prefixes=[rr_a])
    ).started()
    by_status = Collector(
        client.watch_all(
            statuses=["RECONNECT_REQUIRED"],
            connection_id_prefixes=(f"sandbox-{prefix}-",),
            providers="sandbox",
        )
    ).started()
    install(client, broker, f"{prefix}-a")  # INSTALLED: filtered out
    for account, cid in ((account_b, rr_b), (account_a, rr_a)):
        broker.revoke(account)
        with pytest.raises(tokend.ReconnectRequired):
            client.force_refresh(cid)
    [event] = only_a.take(1)
    only_a.quiet()
    assert event.connection_id == rr_a
    assert event.event_type == "RECONNECT_REQUIRED" and event.cause == "REVOKED"
    assert event.connection is not None and event.connection.status == "RECONNECT_REQUIRED"
    assert event.connection.last_error is not None
    assert event.connection.last_error.code == "invalid_grant"
    events = by_status.take(2)
    by_status.quiet()
    assert [e.connection_id for e in events] == [rr_b, rr_a]
    assert {e.event_type for e in events} == {"RECONNECT_REQUIRED"}
    only_a.close()
    by_status.close()
    with pytest.raises(ValueError):
        client.watch_all(event_types=["no_such_type"])


def foreign(cursor: str) -> str:
    """The same position in another event log: a cursor is base64url of the
    log id and the sequence, 8 bytes each, big-endian."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    log_id, sequence = struct.unpack(">QQ", raw)
    return (
        base64.urlsafe_b64encode(struct.pack(">QQ", log_id ^ 0x5A5A5A5A5A5A5A5A, sequence))
        .rstrip(b"=")
        .decode()
    )


def test_watch_all_bad_cursors_raise_typed_errors(client: tokend.Client, broker: Broker) -> None:
    prefix = unique("sync-cursor")
    started = time.monotonic()
    with pytest.raises(tokend.InvalidArgument) as e:
        next_within(client.watch_all(resume_after="garbage"))
    assert e.value.field == "resume_after"
    with client.watch_all(connection_id_prefixes=[f"sandbox-{prefix}"]) as stream:
        feed = Collector(stream).started()
        [cid] = install_many(client, broker, prefix, 1)
        [event] = feed.take(1)
        feed.close()
    stream = client.watch_all(resume_after=foreign(event.cursor))
    with pytest.raises(tokend.CursorExpired) as expired:
        next_within(stream)
    assert expired.value.reason == "CURSOR_EXPIRED"
    assert expired.value.oldest_cursor
    assert expired.value.oldest_cursor != foreign(event.cursor)
    assert stream.closed and list(stream) == []
    assert time.monotonic() - started < 5, "a non-retryable error was retried"
    # The oldest cursor is a real one: resuming from it works.
    with client.watch_all(
        resume_after=expired.value.oldest_cursor, connection_id_prefixes=[f"sandbox-{prefix}"]
    ) as again:
        assert next_within(again).connection_id == cid


def test_watch_all_reconnects_across_a_broker_restart(own_broker: Broker) -> None:
    broker = own_broker
    with tokend.Client(broker.target) as client:
        stream = client.watch_all()
        feed = Collector(stream).started()
        [before] = install_many(client, broker, "sync-restart", 1)
        [first] = feed.take(1)
        assert first.connection_id == before
        broker.restart()  # the stream notices, and fails to reconnect for a while
        [after] = install_many(client, broker, "sync-restart", 1)
        [second] = feed.take(1, timeout=20)
        feed.quiet()
        assert second.connection_id == after and second.event_type == "INSTALLED"
        assert second.sequence > first.sequence
        assert stream.cursor == second.cursor and stream.resubscribes >= 1
        feed.close()

        # A consumer that is not reading while the broker restarts: the
        # events written while it was away come on its next read, resumed
        # from its cursor, none lost, none repeated.
        stream = client.watch_all(resume_after=second.cursor)
        [third] = install_many(client, broker, "sync-restart", 1)
        assert next_within(stream).connection_id == third
        broker.restart(down_for=0)
        missed = install_many(client, broker, "sync-restart", 2)
        assert [next_within(stream, 20).connection_id for _ in missed] == missed
        feed = Collector(stream)
        feed.quiet()
        feed.close()


def test_closing_the_client_ends_its_streams(broker: Broker) -> None:
    client = tokend.Client(broker.target)
    cid, _ = install(client, broker, "sync-close")
    watch = client.watch(cid)
    assert next_within(watch).kind == "SNAPSHOT"
    feed = Collector(client.watch_all()).started()
    ended = threading.Event()

    def drain() -> None:
        for _ in watch:
            pass
        ended.set()

    threading.Thread(target=drain, daemon=True).start()
    time.sleep(0.1)
    client.close()
    assert ended.wait(5), "watch did not end when the client closed"
    feed.thread.join(5)
    assert not feed.thread.is_alive() and feed.error is None
    assert watch.closed and feed.stream.closed
