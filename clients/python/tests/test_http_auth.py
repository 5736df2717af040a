"""Refresh-and-retry for httpx (sync and async flows) and requests.

Against a local upstream that answers 401 to chosen tokens: a GET that gets
a 401 is retried once with a ForceRefresh'ed token; a POST that gets a 401
is not replayed (its 401 comes back, the token is still refreshed) unless
opted in; a replay answered 401 again raises StillUnauthorized, or with
second_401="return" comes back as the response. Against the sandbox's
/api/me with 2-second tokens: requests for 13 s span at least 5 token
expiries with 0 failed requests. A revoked grant surfaces as
ReconnectRequired from the HTTP call itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import requests
from helpers import Broker, Upstream, unique

import tokend_client as tokend
from tokend_client.httpx_auth import TokendAuth as HttpxAuth
from tokend_client.requests_auth import TokendAuth as RequestsAuth

SPAN_SECONDS = 13.0


@pytest.fixture()
def upstream() -> Iterator[Upstream]:
    u = Upstream().start()
    yield u
    u.stop()


def install(client: tokend.Client, broker: Broker, prefix: str) -> tuple[str, str]:
    account = unique(prefix)
    issued = broker.mint(account)
    result = client.install_import(
        "sandbox", account, issued["access_token"], issued["refresh_token"], issued["expires_in"]
    )
    return result.connection.connection_id, account


class Scenario:
    """The three 401 cases, for any HTTP stack: `send(method, url, body,
    replay)` sends one request through the stack's TokendAuth."""

    def __init__(self, client: tokend.Client, broker: Broker, upstream: Upstream) -> None:
        self.client, self.broker, self.upstream = client, broker, upstream
        self.cid, _ = install(client, broker, "http")

    def reject_current(self) -> str:
        token = self.client.token(self.cid).access_token
        self.upstream.rejected.add(token)
        self.upstream.seen.clear()
        return token

    def check_get_retried(self, status: int, history: list[int]) -> None:
        seen = self.upstream.seen
        assert status == 200 and history == [401]
        assert [s.method for s in seen] == ["GET", "GET"]
        assert seen[0].token in self.upstream.rejected
        assert seen[1].token not in self.upstream.rejected and seen[1].token

    def check_post_not_replayed(self, status: int, rejected: str) -> None:
        seen = self.upstream.seen
        assert status == 401
        assert [(s.method, s.token) for s in seen] == [("POST", rejected)]
        # ... but the token was refreshed for the next request.
        fresh = self.client.cache.peek(self.cid)
        assert fresh is not None and fresh.access_token != rejected

    def check_post_replayed(self, status: int, body: bytes) -> None:
        seen = self.upstream.seen
        assert status == 200
        assert [s.method for s in seen] == ["POST", "POST"]
        assert seen[0].body == seen[1].body == body
        assert seen[0].token != seen[1].token


@pytest.fixture()
def scenario(client: tokend.Client, broker: Broker, upstream: Upstream) -> Scenario:
    return Scenario(client, broker, upstream)


def test_httpx_sync_retries_get_once_and_not_post(scenario: Scenario) -> None:
    s = scenario
    url = s.upstream.url + "/v1/things"
    with httpx.Client(auth=HttpxAuth(s.client, s.cid)) as http:
        s.reject_current()
        r = http.get(url)
        s.check_get_retried(r.status_code, [h.status_code for h in r.history])

        rejected = s.reject_current()
        r = http.post(url, json={"n": 1})
        s.check_post_not_replayed(r.status_code, rejected)
        after = http.get(url)
        assert after.status_code == 200 and not after.history  # carries the refreshed token

    with httpx.Client(auth=HttpxAuth(s.client, s.cid, replay_non_idempotent=True)) as http:
        s.reject_current()
        r = http.post(url, content=b'{"n": 2}')
        s.check_post_replayed(r.status_code, b'{"n": 2}')


async def test_httpx_async_retries_get_once_and_not_post(
    broker: Broker, upstream: Upstream
) -> None:
    url = upstream.url + "/v1/things"
    with tokend.Client(broker.target) as sync_client:
        s = Scenario(sync_client, broker, upstream)
    async with tokend.AsyncClient(broker.target) as tokend_async:

        async def reject_current() -> str:
            token = (await tokend_async.token(s.cid)).access_token
            upstream.rejected.add(token)
            upstream.seen.clear()
            return token

        s.client = tokend_async  # type: ignore[assignment]  # check_* only peek at the cache
        async with httpx.AsyncClient(auth=HttpxAuth(tokend_async, s.cid)) as http:
            await reject_current()
            r = await http.get(url)
            s.check_get_retried(r.status_code, [h.status_code for h in r.history])
            rejected = await reject_current()
            r = await http.post(url, json={"n": 1})
            s.check_post_not_replayed(r.status_code, rejected)

        auth = HttpxAuth(tokend_async, s.cid, replay_non_idempotent=True)
        async with httpx.AsyncClient(auth=auth) as http:
            await reject_current()
            r = await http.post(url, content=b"x=1")
            s.check_post_replayed(r.status_code, b"x=1")


def test_requests_retries_get_once_and_not_post(scenario: Scenario) -> None:
    s = scenario
    url = s.upstream.url + "/v1/things"
    with requests.Session() as http:
        http.auth = RequestsAuth(s.client, s.cid)
        s.reject_current()
        r = http.get(url, timeout=10)
        s.check_get_retried(r.status_code, [h.status_code for h in r.history])

        rejected = s.reject_current()
        r = http.post(url, json={"n": 1}, timeout=10)
        s.check_post_not_replayed(r.status_code, rejected)
        assert http.get(url, timeout=10).status_code == 200

        http.auth = RequestsAuth(s.client, s.cid, replay_non_idempotent=True)
        s.reject_current()
        r = http.post(url, data=b"payload", timeout=10)
        s.check_post_replayed(r.status_code, b"payload")

        # A body that cannot be sent twice is never replayed.
        s.reject_current()
        r = http.post(url, data=iter([b"stream"]), timeout=10)
        assert r.status_code == 401 and len(s.upstream.seen) == 1


def test_reconnect_required_propagates_from_the_http_call(
    client: tokend.Client, broker: Broker
) -> None:
    cid, account = install(client, broker, "http-revoked")
    url = broker.base + "/api/me"
    with httpx.Client(auth=HttpxAuth(client, cid)) as http:
        assert http.get(url).status_code == 200
        broker.revoke(account)  # the sandbox now rejects the account's tokens
        with pytest.raises(tokend.ReconnectRequired) as e:
            http.get(url)
    assert e.value.cause == "REVOKED"
    with requests.Session() as session:
        session.auth = RequestsAuth(client, cid)
        with pytest.raises(tokend.ReconnectRequired):
            session.get(url, timeout=10)


class Tally:
    def __init__(self) -> None:
        self.ok = self.failed = self.retried = 0
        self.tokens: set[str] = set()

    def record(self, status: int, history: list[Any], token: str) -> None:
        self.tokens.add(token)
        self.retried += bool(history)
        if status == 200:
            self.ok += 1
        else:
            self.failed += 1

    def check(self) -> None:
        assert self.failed == 0, f"{self.failed} failed requests of {self.ok + self.failed}"
        assert self.ok >= 50, self.ok
        # 2-second tokens over 13 s: at least 6 tokens is at least 5 expiries.
        assert len(self.tokens) >= 6, f"only {len(self.tokens)} tokens in {SPAN_SECONDS}s"


def sent_token(request: Any) -> str:
    return str(request.headers["authorization"]).removeprefix("Bearer ")


def httpx_sync_run(broker: Broker, client: tokend.Client, cid: str, tally: Tally) -> None:
    with httpx.Client(auth=HttpxAuth(client, cid)) as http:
        end = time.monotonic() + SPAN_SECONDS
        while time.monotonic() < end:
            r = http.get(broker.base + "/api/me")
            tally.record(r.status_code, r.history, sent_token(r.request))
            time.sleep(0.05)


def requests_run(broker: Broker, client: tokend.Client, cid: str, tally: Tally) -> None:
    with requests.Session() as http:
        http.auth = RequestsAuth(client, cid)
        end = time.monotonic() + SPAN_SECONDS
        while time.monotonic() < end:
            r = http.get(broker.base + "/api/me", timeout=10)
            tally.record(r.status_code, r.history, sent_token(r.request))
            time.sleep(0.05)


async def httpx_async_run(broker: Broker, cid: str, tally: Tally) -> None:
    async with tokend.AsyncClient(broker.target) as tokend_async:
        async with httpx.AsyncClient(auth=HttpxAuth(tokend_async, cid)) as http:
            end = time.monotonic() + SPAN_SECONDS

            async def worker() -> None:
                while time.monotonic() < end:
                    r = await http.get(broker.base + "/api/me")
                    tally.record(r.status_code, r.history, sent_token(r.request))
                    await asyncio.sleep(0.05)

            await asyncio.gather(*(worker() for _ in range(4)))


def test_401_helpers_across_5_token_expiries_without_a_failed_request(
    short_broker: Broker,
) -> None:
    """httpx (sync), httpx (async, 4 concurrent workers) and requests, side
    by side for 13 s against /api/me with 2-second tokens, each on its own
    connection: every request succeeds, across at least 5 expiries each.
    A fourth, "stale", uses a cache told to keep tokens 1.5 s past expiry, so
    the sandbox answers 401 at every expiry: the helper refreshes and
    retries, and still no request fails."""
    with (
        tokend.Client(short_broker.target) as client,
        tokend.Client(short_broker.target, cache_margin=-1.5) as stale,
    ):
        names = ("httpx", "httpx-async", "requests", "stale")
        tallies = {name: Tally() for name in names}
        cids = {name: install(client, short_broker, f"expiry-{name}")[0] for name in tallies}
        errors: list[BaseException] = []

        def guard(run: Any, *args: Any) -> None:
            try:
                run(*args)
            except BaseException as e:
                errors.append(e)

        runs = [
            (httpx_sync_run, short_broker, client, cids["httpx"], tallies["httpx"]),
            (requests_run, short_broker, client, cids["requests"], tallies["requests"]),
            (httpx_sync_run, short_broker, stale, cids["stale"], tallies["stale"]),
            (
                asyncio.run,
                httpx_async_run(short_broker, cids["httpx-async"], tallies["httpx-async"]),
            ),
        ]
        threads = [threading.Thread(target=guard, args=run) for run in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SPAN_SECONDS + 30)
        assert not errors, errors
        for name, tally in tallies.items():
            print(f"{name}: {tally.ok} ok, {tally.failed} failed, {tally.retried} retried "
                  f"after a 401, {len(tally.tokens)} tokens")  # fmt: skip
            tally.check()
        assert tallies["stale"].retried >= 5, "the sandbox never rejected an expired token"


def reject_every_token(s: Scenario) -> str:
    """The upstream refuses the current token and every refreshed one (a
    token with the wrong scopes, say): the replay is answered 401 too."""
    rejected = s.reject_current()
    s.upstream.reject_all = True
    return rejected


def check_second_401_error(s: Scenario, e: tokend.StillUnauthorized, rejected: str) -> None:
    assert isinstance(e, tokend.TokendError) and not isinstance(e, tokend.Unauthenticated)
    assert e.connection_id == s.cid and e.status == 401
    assert e.code == grpc.StatusCode.UNAUTHENTICATED and e.reason == "STILL_UNAUTHORIZED"
    # Exactly one replay, with a fresh token; no refresh loop.
    assert [x.method for x in s.upstream.seen] == ["GET", "GET"]
    assert s.upstream.seen[0].token == rejected and s.upstream.seen[1].token != rejected
    # The final response is handed over, its body readable; no token in the message.
    assert e.response is not None and e.response.status_code == 401
    assert e.response.content == b'{"ok": false}'
    for x in s.upstream.seen:
        assert x.token not in str(e) and x.token not in repr(e)


def test_httpx_sync_second_401_raises_or_returns(scenario: Scenario) -> None:
    s = scenario
    url = s.upstream.url + "/v1/things"
    with httpx.Client(auth=HttpxAuth(s.client, s.cid)) as http:
        rejected = reject_every_token(s)
        with pytest.raises(tokend.StillUnauthorized) as e:
            http.get(url)
        check_second_401_error(s, e.value, rejected)
    with httpx.Client(auth=HttpxAuth(s.client, s.cid, second_401="return")) as http:
        s.upstream.seen.clear()
        r = http.get(url)
        assert r.status_code == 401 and [h.status_code for h in r.history] == [401]
        assert len(s.upstream.seen) == 2
    with pytest.raises(ValueError, match="second_401"):
        HttpxAuth(s.client, s.cid, second_401="ignore")  # type: ignore[arg-type]


async def test_httpx_async_second_401_raises_or_returns(broker: Broker, upstream: Upstream) -> None:
    url = upstream.url + "/v1/things"
    with tokend.Client(broker.target) as sync_client:
        s = Scenario(sync_client, broker, upstream)
        async with tokend.AsyncClient(broker.target) as tokend_async:
            rejected = reject_every_token(s)
            async with httpx.AsyncClient(auth=HttpxAuth(tokend_async, s.cid)) as http:
                with pytest.raises(tokend.StillUnauthorized) as e:
                    await http.get(url)
                check_second_401_error(s, e.value, rejected)
            auth = HttpxAuth(tokend_async, s.cid, second_401="return")
            async with httpx.AsyncClient(auth=auth) as http:
                upstream.seen.clear()
                r = await http.get(url)
                assert r.status_code == 401 and [h.status_code for h in r.history] == [401]
                assert len(upstream.seen) == 2
            # A sync tokend Client behind httpx.AsyncClient: the same rule.
            async with httpx.AsyncClient(auth=HttpxAuth(sync_client, s.cid)) as http:
                with pytest.raises(tokend.StillUnauthorized):
                    await http.get(url)


def test_requests_second_401_raises_or_returns(scenario: Scenario) -> None:
    s = scenario
    url = s.upstream.url + "/v1/things"
    with requests.Session() as http:
        http.auth = RequestsAuth(s.client, s.cid)
        rejected = reject_every_token(s)
        with pytest.raises(tokend.StillUnauthorized) as e:
            http.get(url, timeout=10)
        check_second_401_error(s, e.value, rejected)
        http.auth = RequestsAuth(s.client, s.cid, second_401="return")
        s.upstream.seen.clear()
        r = http.get(url, timeout=10)
        assert r.status_code == 401 and [h.status_code for h in r.history] == [401]
        assert len(s.upstream.seen) == 2
    with pytest.raises(ValueError, match="second_401"):
        RequestsAuth(s.client, s.cid, second_401="")  # type: ignore[arg-type]


def test_a_post_not_replayed_returns_its_401_under_either_setting(scenario: Scenario) -> None:
    """One 401 to a request that is not replayed comes back as a response
    (no StillUnauthorized: nothing was retried), in every helper."""
    s = scenario
    url = s.upstream.url + "/v1/things"
    for mode in ("raise", "return"):
        with httpx.Client(auth=HttpxAuth(s.client, s.cid, second_401=mode)) as http:
            reject_every_token(s)
            assert http.post(url, json={"n": 1}).status_code == 401
            assert len(s.upstream.seen) == 1
        with requests.Session() as session:
            session.auth = RequestsAuth(s.client, s.cid, second_401=mode)
            s.upstream.seen.clear()
            assert session.post(url, json={"n": 1}, timeout=10).status_code == 401
            assert len(s.upstream.seen) == 1
