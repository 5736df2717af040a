"""The sans-IO core without any I/O: a unary call's decisions driven by
hand with made-up times and errors (no broker, no clock, no sleep), the
reply decoders on protobuf messages built here, and the event eviction
rule. The live tests drive the same core through Client and AsyncClient."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

import tokend_client as tokend
from tokend_client import _core
from tokend_client._pb import pb
from tokend_client._transport import make_settings
from tokend_client.errors import error_from_status


def settings(retries: int = 5, timeout: float = 10.0) -> object:
    return make_settings(
        "127.0.0.1:1",
        api_key=None,
        tls=None,
        root_certificates=None,
        certificate_chain=None,
        private_key=None,
        server_name=None,
        credentials=None,
        timeout=timeout,
        retries=retries,
        options=(),
    )


def unreachable() -> tokend.TokendError:
    return error_from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)


def answered(code: grpc.StatusCode, reason: str, retry: float | None = None) -> tokend.TokendError:
    details = [error_details_pb2.ErrorInfo(reason=reason, domain="tokend.dev")]
    if retry is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    status = status_pb2.Status(code=code.value[0], message="m")
    for d in details:
        status.details.add().Pack(d)
    return error_from_status(code, "m", status)


def drive(call: _core.UnaryCall, errors: list[tokend.TokendError]) -> tuple[int, _core.Fail]:
    """Feeds `errors` (the last repeated) to the call until it fails for
    good, advancing a fake clock by each retry's delay; returns the number
    of attempts sent and the final step."""
    now = 0.0
    for i in range(100):
        assert call.attempt_timeout(now) > 0
        step = call.failed(errors[min(i, len(errors) - 1)], now=now)
        if isinstance(step, _core.Fail):
            return call.attempts, step
        assert 0 < step.delay <= 2.0 * 1.2
        now += step.delay
    raise AssertionError("never failed")


@pytest.mark.parametrize("retries", [0, 1, 5, 7])
def test_unreachable_is_retried_retries_times_then_a_transport_error(retries: int) -> None:
    call = _core.UnaryCall.start(settings(retries, 60.0), "GetToken", None, now=0.0)
    attempts, step = drive(call, [unreachable()])
    assert attempts == retries + 1
    assert isinstance(step.error, tokend.TransportError) and step.evict is None


def test_default_is_five_retries() -> None:
    call = _core.UnaryCall.start(settings(), "GetToken", None, now=0.0)
    assert drive(call, [unreachable()])[0] == 6


def test_retries_stop_at_the_deadline() -> None:
    call = _core.UnaryCall.start(settings(50, 0.5), "GetToken", None, now=0.0)
    attempts, step = drive(call, [unreachable()])
    assert 1 < attempts < 10 and isinstance(step.error, tokend.TransportError)
    # Each attempt is sent with what is left of the deadline.
    fresh = _core.UnaryCall.start(settings(), "GetToken", None, now=100.0, timeout=2.0)
    assert fresh.attempt_timeout(100.5) == pytest.approx(1.5)
    assert fresh.attempt_timeout(200.0) == _core.MIN_ATTEMPT_TIMEOUT


@pytest.mark.parametrize(
    "err",
    [
        answered(grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", retry=1.0),
        answered(grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"),
        answered(grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_RATE_LIMITED", retry=1.0),
        answered(grpc.StatusCode.ABORTED, "CONCURRENT_MODIFICATION"),
        answered(grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_answers_from_tokend_are_never_retried(err: tokend.TokendError) -> None:
    call = _core.UnaryCall.start(settings(), "ForceRefresh", None, now=0.0, connection_id="c")
    attempts, step = drive(call, [err])
    assert attempts == 1 and step.error is err and step.evict is None


def test_a_retry_then_an_answer_ends_with_the_answer() -> None:
    err = answered(grpc.StatusCode.NOT_FOUND, "CONNECTION_NOT_FOUND")
    call = _core.UnaryCall.start(settings(), "GetToken", None, now=0.0, connection_id="c")
    attempts, step = drive(call, [unreachable(), unreachable(), err])
    assert attempts == 3 and step.error is err


@pytest.mark.parametrize(
    ("err", "evicted"),
    [
        (answered(grpc.StatusCode.FAILED_PRECONDITION, "RECONNECT_REQUIRED"), True),
        (answered(grpc.StatusCode.NOT_FOUND, "CONNECTION_NOT_FOUND"), True),
        (answered(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), False),
        (answered(grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_MISCONFIGURED"), False),
    ],
)
def test_reconnect_required_and_not_found_evict(err: tokend.TokendError, evicted: bool) -> None:
    call = _core.UnaryCall.start(settings(), "GetToken", None, now=0.0, connection_id="c")
    assert drive(call, [err])[1].evict == ("c" if evicted else None)
    # A call about no one connection (ListConnections) evicts nothing.
    anonymous = _core.UnaryCall.start(settings(), "ListConnections", None, now=0.0)
    assert drive(anonymous, [err])[1].evict is None


def test_cancelled_at_the_deadline_is_deadline_exceeded() -> None:
    cancelled = error_from_status(grpc.StatusCode.CANCELLED, "Timeout expired", None)
    call = _core.UnaryCall.start(settings(), "GetToken", None, now=0.0, timeout=1.0)
    call.attempt_timeout(0.0)
    step = call.failed(cancelled, now=1.0)
    assert isinstance(step, _core.Fail) and isinstance(step.error, tokend.DeadlineExceeded)
    early = _core.UnaryCall.start(settings(), "GetToken", None, now=0.0, timeout=1.0)
    early.attempt_timeout(0.0)
    step = early.failed(cancelled, now=0.2)
    assert isinstance(step, _core.Fail) and step.error is cancelled


def test_a_closed_client_does_not_retry() -> None:
    call = _core.UnaryCall.start(settings(), "GetToken", None, now=0.0)
    call.attempt_timeout(0.0)
    step = call.failed(unreachable(), now=0.0, closed=True)
    assert isinstance(step, _core.Fail) and isinstance(step.error, tokend.TransportError)


def test_reply_decoders() -> None:
    reply = pb.ForceRefreshResponse(
        token=pb.AccessToken(
            connection_id="c", access_token="at", token_type="Bearer", expires_in_seconds=60,
            version=3, account_id="a",
        ),
        refreshed=True,
    )  # fmt: skip
    token, refreshed = _core.force_refresh_reply(reply, 100.0)
    assert (token.connection_id, token.version, refreshed) == ("c", 3, True)
    assert token.ttl(100.0) == pytest.approx(60.0)
    page = pb.ListConnectionsResponse(
        connections=[pb.Connection(connection_id="a"), pb.Connection(connection_id="b")],
        next_page_token="n",
    )
    connections, next_token = _core.page_reply(page)
    assert [c.connection_id for c in connections] == ["a", "b"] and next_token == "n"
    grant = _core.import_grant("at", "rt", 60, ["crm"], "")
    request = _core.install_request("sandbox", grant, "", "acct", {"k": "v"}, False)
    assert request.token_import.scopes == ["crm"] and request.params == {"k": "v"}
    code = _core.install_request("sandbox", _core.code_grant("c", "u", "v"), "", "", None, True)
    assert code.authorization_code.code == "c" and code.replace


def test_event_eviction() -> None:
    def event(kind: str) -> tokend.ConnectionEvent:
        m = pb.ConnectionEvent(connection_id="c", event_type=getattr(pb, f"EVENT_TYPE_{kind}"))
        return tokend.ConnectionEvent.from_pb(m)

    assert _core.evicts(event("RECONNECT_REQUIRED")) == "c"
    assert _core.evicts(event("DELETED")) == "c"
    assert _core.evicts(event("TOKEN_ROTATED")) is None
