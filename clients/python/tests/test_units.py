"""Units without a broker: the cache's freshness rule on a fake monotonic
clock, its LRU bound and singleflight (errors shared too; an asyncio waiter
cancelled without cancelling the fetch), and the one error mapping."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import tokend_client as tokend
from tokend_client.errors import error_from_status


def token(cid: str = "c", ttl: int = 100, version: int = 1, received: float = 0.0) -> tokend.Token:
    return tokend.Token(
        connection_id=cid,
        access_token=f"at-{cid}-{version}",
        token_type="Bearer",
        expires_in_seconds=ttl,
        version=version,
        scopes=(),
        account_id="a",
        expires_at=None,
        expires_at_monotonic=received + ttl,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_freshness_is_min_of_margin_and_a_quarter_of_the_lifetime() -> None:
    clock = Clock()
    cache = tokend.TokenCache(margin=30.0, clock=clock)
    fetches: list[float] = []

    def fetch(ttl: int) -> tokend.Token:
        fetches.append(clock.now)
        return token(ttl=ttl, version=len(fetches), received=clock.now)

    # 100 s token: margin min(30, 25) = 25 s, so reused until 75 s in.
    assert cache.get("c", lambda: fetch(100)).version == 1
    clock.now = 74.9
    assert cache.get("c", lambda: fetch(100)).version == 1
    clock.now = 75.1
    assert cache.get("c", lambda: fetch(100)).version == 2
    # 3600 s token: the 30 s margin applies.
    cache.evict("c")
    clock.now = 1000.0
    cache.get("c", lambda: fetch(3600))
    clock.now = 1000.0 + 3569.0
    assert cache.get("c", lambda: fetch(3600)).version == 3
    clock.now = 1000.0 + 3571.0
    assert cache.get("c", lambda: fetch(3600)).version == 4


def test_lru_bound_and_store_keeps_the_newest() -> None:
    cache = tokend.TokenCache(capacity=2)
    for cid in "abc":
        cache.get(cid, lambda cid=cid: token(cid, received=time.monotonic()))
    assert len(cache) == 2 and cache.peek("a") is None and cache.peek("c") is not None
    cache.store(token("c", version=5, received=time.monotonic()))
    cache.store(token("c", version=4, received=time.monotonic()))
    assert cache.peek("c").version == 5  # type: ignore[union-attr]
    cache.evict("c")
    assert cache.peek("c") is None


def test_singleflight_shares_one_fetch_and_its_error() -> None:
    cache = tokend.TokenCache()
    calls = 0
    release = threading.Event()

    def failing() -> tokend.Token:
        nonlocal calls
        calls += 1
        release.wait(5)
        raise tokend.Unavailable(grpc.StatusCode.UNAVAILABLE, "provider down")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            cache.get("c", failing)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == 1 and len(errors) == 50
    assert all(isinstance(e, tokend.Unavailable) for e in errors)
    # The failure is not cached: the next call fetches again.
    assert cache.get("c", lambda: token(received=time.monotonic())).version == 1


async def test_async_singleflight_survives_a_cancelled_waiter() -> None:
    cache = tokend.AsyncTokenCache()
    calls = 0

    async def fetch() -> tokend.Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return token(received=time.monotonic())

    first = asyncio.ensure_future(cache.get("c", fetch))
    others = [asyncio.ensure_future(cache.get("c", fetch)) for _ in range(99)]
    await asyncio.sleep(0.01)
    first.cancel()
    results = await asyncio.gather(*others)
    assert calls == 1 and {t.version for t in results} == {1}
    assert first.cancelled()


def status(code: grpc.StatusCode, *details: object) -> status_pb2.Status:
    s = status_pb2.Status(code=code.value[0], message="m")
    for d in details:
        packed = any_pb2.Any()
        packed.Pack(d)  # type: ignore[arg-type]
        s.details.append(packed)
    return s


def info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="tokend.dev", metadata=metadata)


@pytest.mark.parametrize(
    ("code", "details", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, [info("CONNECTION_NOT_FOUND")], tokend.NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, [info("INVALID_ARGUMENT")], tokend.InvalidArgument),
        (grpc.StatusCode.ALREADY_EXISTS, [info("CONNECTION_ID_TAKEN")], tokend.AlreadyExists),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            [info("RECONNECT_REQUIRED", cause="ROTATION_LOST", provider_error="invalid_grant")],
            tokend.ReconnectRequired,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            [info("PROVIDER_MISCONFIGURED")],
            tokend.ProviderMisconfigured,
        ),
        (grpc.StatusCode.UNAVAILABLE, [info("PROVIDER_UNAVAILABLE")], tokend.Unavailable),
        (grpc.StatusCode.UNAVAILABLE, [], tokend.TransportError),
        (grpc.StatusCode.ABORTED, [info("CONCURRENT_MODIFICATION")], tokend.Aborted),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            [info("RECORD_UNREADABLE", connection_id="c1")],
            tokend.RecordUnreadable,
        ),
        (grpc.StatusCode.DATA_LOSS, [info("RECORD_UNREADABLE")], tokend.RecordUnreadable),
        (grpc.StatusCode.UNAUTHENTICATED, [info("UNAUTHENTICATED")], tokend.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, [info("PERMISSION_DENIED")], tokend.PermissionDenied),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            [info("CALLER_RATE_LIMITED")],
            tokend.ResourceExhausted,
        ),
        (
            grpc.StatusCode.OUT_OF_RANGE,
            [info("CURSOR_EXPIRED", oldest_cursor="abc")],
            tokend.CursorExpired,
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, [], tokend.DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, [], tokend.TokendError),
    ],
)
def test_one_error_mapping(code: grpc.StatusCode, details: list[object], cls: type) -> None:
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="min_ttl_seconds", description="d")
        ]
    )
    # A TransportError has no status from tokend: no RetryInfo either.
    extra = [bad] if cls is tokend.TransportError else [retry, bad]
    err = error_from_status(code, "m", status(code, *details, *extra))
    assert type(err) is cls and err.code == code and str(err) == "m"
    assert err.field == "min_ttl_seconds" and err.description == "d"
    assert err.retry_after == (None if cls is tokend.TransportError else 2.5)
    if isinstance(err, tokend.ReconnectRequired):
        assert (err.cause, err.provider_error) == ("ROTATION_LOST", "invalid_grant")
    if isinstance(err, tokend.CursorExpired):
        assert err.oldest_cursor == "abc"
    if isinstance(err, tokend.RecordUnreadable) and code == grpc.StatusCode.FAILED_PRECONDITION:
        assert err.connection_id == "c1"


def test_unavailable_with_retry_info_is_not_a_transport_error() -> None:
    """UNAVAILABLE with RetryInfo is an answer from tokend: surfaced as
    Unavailable with retry_after, and never retried by the SDK."""
    from tokend_client._transport import call_retryable

    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
    code = grpc.StatusCode.UNAVAILABLE
    answered = error_from_status(code, "m", status(code, retry))
    assert type(answered) is tokend.Unavailable and answered.retry_after == 1.0
    assert not call_retryable(answered)
    assert call_retryable(error_from_status(code, "m", None))


def test_still_unauthorized_carries_the_response_and_no_token() -> None:
    response = object()
    e = tokend.StillUnauthorized("sandbox-a", response)
    assert (e.connection_id, e.status, e.response) == ("sandbox-a", 401, response)
    assert e.code == grpc.StatusCode.UNAUTHENTICATED and e.reason == "STILL_UNAUTHORIZED"
    assert "sandbox-a" in str(e) and isinstance(e, tokend.TokendError)
    assert not isinstance(e, tokend.Unauthenticated)
