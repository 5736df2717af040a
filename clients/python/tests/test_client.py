"""The Python client against a live tokend with the sandbox provider: get a
token, force a refresh, hear RECONNECT_REQUIRED on the watch stream, and
follow the event feed (watch_all) across a resume and a server restart."""

import base64
import json
import os
import queue
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

import tokend_client as tokend

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BINARY = os.environ.get("TOKEND_BIN", os.path.join(ROOT, "target", "debug", "tokend"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRPC_TARGET = [""]


def start_server(grpc_port: int, http_port: int, data: str) -> subprocess.Popen:
    return subprocess.Popen(
        [BINARY, "serve", "--sandbox", "--listen", f"127.0.0.1:{grpc_port}",
         "--sandbox-listen", f"127.0.0.1:{http_port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(client, proc) -> None:
    deadline = time.time() + 20
    while True:
        try:
            client.get_token("warmup")
        except tokend.NotFound:
            return
        except tokend.TokendError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server():
    grpc_port, http_port = free_port(), free_port()
    proc = start_server(grpc_port, http_port, tempfile.mkdtemp())
    client = tokend.Client(f"127.0.0.1:{grpc_port}")
    GRPC_TARGET[0] = f"127.0.0.1:{grpc_port}"
    wait_ready(client, proc)
    yield client, f"http://127.0.0.1:{http_port}"
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


def sandbox(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as r:
        raw = r.read()
        return json.loads(raw) if raw else {}


def install(client, base, account):
    issued = sandbox(base, "/sandbox/tokens", {"account_id": account, "scopes": ["crm"]})
    client.install_import("sandbox", account, issued["access_token"], issued["refresh_token"], 1800)
    return f"sandbox-{account}", issued


def test_get_token_and_force_refresh(server):
    client, base = server
    cid, issued = install(client, base, "py-1")
    token = client.get_token(cid)
    assert token.access_token == issued["access_token"]
    assert token.expires_in_seconds > 1700
    assert issued["access_token"] not in repr(token)
    fresh, refreshed = client.force_refresh(cid, rejected_version=token.version)
    assert refreshed and fresh.version == token.version + 1
    assert fresh.access_token != token.access_token
    again, refreshed = client.force_refresh(cid, rejected_version=token.version)
    assert not refreshed and again.access_token == fresh.access_token


def test_typed_errors(server):
    client, _ = server
    with pytest.raises(tokend.NotFound):
        client.get_token("py-missing")
    with pytest.raises(tokend.InvalidArgument) as e:
        client.get_token("not valid")
    assert e.value.field == "connection_id"


def test_watch_hears_reconnect_required(server):
    client, base = server
    cid, _ = install(client, base, "py-2")
    events = client.watch(cid)
    first = next(events)
    assert first.kind == "snapshot" and not first.reconnect_required
    sandbox(base, "/sandbox/revoke", {"account_id": "py-2"})
    with pytest.raises(tokend.ReconnectRequired) as e:
        client.force_refresh(cid)
    assert e.value.provider_error == "invalid_grant"
    assert e.value.cause == "REVOKED"
    event = next(e for e in events if e.kind == "status_changed")
    assert event.reconnect_required
    assert event.connection.last_error.code == "invalid_grant"


def test_endpoints_may_be_urls(server):
    """Issue 11: host:port and http://host:port both work."""
    assert tokend._target("http://h:1") == ("h:1", False)
    assert tokend._target("https://h:1/") == ("h:1", True)
    assert tokend._target("h:1") == ("h:1", False)
    url_client = tokend.Client("http://" + GRPC_TARGET[0])
    with pytest.raises(tokend.NotFound):
        url_client.get_token("not-there")
    url_client.close()


class Collector:
    """Iterates an EventStream on a thread, as a consumer would, so the test
    can wait for the stream to start (its first checkpoint moves `cursor`)
    and take events with a timeout."""

    def __init__(self, stream: tokend.EventStream):
        self.stream = stream
        self.events: "queue.Queue" = queue.Queue()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.stream:
                self.events.put(event)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def started(self, timeout: float = 10.0) -> "Collector":
        deadline = time.time() + timeout
        while self.stream.cursor is None:
            assert self.error is None, self.error
            assert time.time() < deadline, "the stream sent no checkpoint"
            time.sleep(0.01)
        return self

    def take(self, n: int, timeout: float = 10.0) -> list:
        deadline, out = time.time() + timeout, []
        while len(out) < n:
            try:
                out.append(self.events.get(timeout=max(0.0, deadline - time.time())))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {n} events; error: {self.error!r}")
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


def next_within(stream: tokend.EventStream, timeout: float = 10.0):
    """next(stream), but a stream that yields nothing in time (say, one that
    retries forever) is closed and fails the test instead of hanging it."""
    timer = threading.Timer(timeout, stream.close)
    timer.start()
    try:
        return next(stream)
    except StopIteration:
        raise AssertionError(f"no event within {timeout}s") from None
    finally:
        timer.cancel()


def install_many(client, base, accounts) -> list:
    return [install(client, base, a)[0] for a in accounts]


def test_watch_all_live_events_and_cursor(server):
    client, base = server
    stream = client.watch_all()
    assert stream.cursor is None
    feed = Collector(stream).started()
    ids = install_many(client, base, ["py-live-1", "py-live-2", "py-live-3"])
    events = feed.take(3)
    feed.quiet()
    assert [e.event_type for e in events] == [tokend.pb.EVENT_TYPE_INSTALLED] * 3
    assert [e.connection_id for e in events] == ids
    assert [e.connection.connection_id for e in events] == ids
    assert events[0].sequence < events[1].sequence < events[2].sequence
    assert len({e.cursor for e in events}) == 3
    assert stream.cursor == events[-1].cursor
    feed.close()
    assert stream.closed


def test_watch_all_resumes_after_cursor(server):
    client, base = server
    with client.watch_all() as stream:
        feed = Collector(stream).started()
        first = install_many(client, base, ["py-resume-1", "py-resume-2", "py-resume-3"])
        assert [e.connection_id for e in feed.take(3)] == first
        feed.close()
    saved = stream.cursor
    later = install_many(client, base, ["py-resume-4", "py-resume-5"])
    resumed = client.watch_all(resume_after=saved)
    feed = Collector(resumed)
    events = feed.take(2)
    feed.quiet()
    assert [e.connection_id for e in events] == later
    assert [e.event_type for e in events] == [tokend.pb.EVENT_TYPE_INSTALLED] * 2
    assert events[0].sequence < events[1].sequence
    assert resumed.cursor == events[-1].cursor
    feed.close()


def test_watch_all_filters_server_side(server):
    client, base = server
    rr_a, rr_b = install_many(client, base, ["py-filter-a1", "py-filter-b1"])
    only_a = Collector(client.watch_all(event_types=["reconnect_required"],
                                        connection_id_prefixes=["sandbox-py-filter-a"])).started()
    by_status = Collector(client.watch_all(statuses=["reconnect_required"],
                                           connection_id_prefixes=("sandbox-py-filter-",),
                                           providers="sandbox")).started()
    install_many(client, base, ["py-filter-a2"])  # INSTALLED: filtered out
    for account, cid in (("py-filter-b1", rr_b), ("py-filter-a1", rr_a)):
        sandbox(base, "/sandbox/revoke", {"account_id": account})
        with pytest.raises(tokend.ReconnectRequired):
            client.force_refresh(cid)
    [event] = only_a.take(1)
    only_a.quiet()
    assert event.connection_id == rr_a
    assert event.event_type == tokend.pb.EVENT_TYPE_RECONNECT_REQUIRED
    assert event.cause == tokend.pb.RECONNECT_CAUSE_REVOKED
    assert event.connection.status == tokend.pb.CONNECTION_STATUS_RECONNECT_REQUIRED
    assert event.connection.last_error.code == "invalid_grant"
    events = by_status.take(2)
    by_status.quiet()
    assert [e.connection_id for e in events] == [rr_b, rr_a]
    assert {e.event_type for e in events} == {tokend.pb.EVENT_TYPE_RECONNECT_REQUIRED}
    only_a.close()
    by_status.close()
    with pytest.raises(ValueError):
        client.watch_all(event_types=["no_such_type"])


def foreign(cursor: str) -> str:
    """The same position in another event log: a cursor is base64url of the
    log id and the sequence, 8 bytes each, big-endian."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    log_id, sequence = struct.unpack(">QQ", raw)
    return base64.urlsafe_b64encode(
        struct.pack(">QQ", log_id ^ 0x5A5A5A5A5A5A5A5A, sequence)).rstrip(b"=").decode()


def test_watch_all_bad_cursors_raise_typed_errors(server):
    client, base = server
    started = time.time()
    with pytest.raises(tokend.InvalidArgument) as e:
        next_within(client.watch_all(resume_after="garbage"))
    assert e.value.field == "resume_after"
    with client.watch_all() as stream:
        feed = Collector(stream).started()
        install_many(client, base, ["py-cursor-1"])
        [event] = feed.take(1)
        feed.close()
    stream = client.watch_all(resume_after=foreign(event.cursor))
    with pytest.raises(tokend.CursorExpired) as e:
        next_within(stream)
    assert e.value.reason == "CURSOR_EXPIRED"
    assert e.value.oldest_cursor
    assert e.value.oldest_cursor != foreign(event.cursor)
    assert stream.closed and list(stream) == []
    assert time.time() - started < 5, "a non-retryable error was retried"
    # The oldest cursor is a real one: resuming from it works.
    with client.watch_all(resume_after=e.value.oldest_cursor,
                          connection_id_prefixes=["sandbox-py-cursor-"]) as again:
        assert next_within(again).connection_id == "sandbox-py-cursor-1"


def test_watch_all_reconnects_across_a_server_restart():
    grpc_port, http_port = free_port(), free_port()
    data = tempfile.mkdtemp()
    base = f"http://127.0.0.1:{http_port}"
    proc = start_server(grpc_port, http_port, data)
    client = tokend.Client(f"127.0.0.1:{grpc_port}")
    try:
        wait_ready(client, proc)
        stream = client.watch_all()
        feed = Collector(stream).started()
        [before] = install_many(client, base, ["py-restart-1"])
        [first] = feed.take(1)
        assert first.connection_id == before
        proc.terminate()
        proc.wait(timeout=10)
        time.sleep(0.3)  # the stream notices, and fails to reconnect for a while
        proc = start_server(grpc_port, http_port, data)
        wait_ready(client, proc)
        [after] = install_many(client, base, ["py-restart-2"])
        [second] = feed.take(1, timeout=15)
        feed.quiet()
        assert second.connection_id == after
        assert second.event_type == tokend.pb.EVENT_TYPE_INSTALLED
        assert second.sequence > first.sequence
        assert stream.cursor == second.cursor
        feed.close()

        # A consumer that is not reading while the server restarts: the
        # events written while it was away come on its next read, resumed
        # from its cursor, none lost, none repeated.
        stream = client.watch_all(resume_after=second.cursor)
        [third] = install_many(client, base, ["py-restart-3"])
        assert next_within(stream).connection_id == third
        proc.terminate()
        proc.wait(timeout=10)
        proc = start_server(grpc_port, http_port, data)
        wait_ready(client, proc)
        missed = install_many(client, base, ["py-restart-4", "py-restart-5"])
        assert [next_within(stream).connection_id for _ in missed] == missed
        feed = Collector(stream)
        feed.quiet()
        feed.close()
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
