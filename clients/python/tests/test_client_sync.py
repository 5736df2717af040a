"""The sync Client against a live broker: installs (token import, code
exchange, client credentials with params), tokens, force refresh, typed
errors, the cache (1,000 concurrent calls, eviction), paging, deletion."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import Broker, free_port, unique

import tokend_client as tokend


def install(client: tokend.Client, broker: Broker, prefix: str) -> tuple[str, dict]:
    account = unique(prefix)
    issued = broker.mint(account)
    result = client.install_import(
        "sandbox",
        account,
        issued["access_token"],
        issued["refresh_token"],
        issued["expires_in"],
        scopes=["crm"],
    )
    return result.connection.connection_id, issued


def test_install_by_token_import_code_and_client_credentials(
    client: tokend.Client, broker: Broker
) -> None:
    # Token import, and its retry answered without a second effect.
    account = unique("sync-import")
    issued = broker.mint(account)
    grant = tokend.TokenImport(issued["access_token"], issued["refresh_token"], 1800, ("crm",))
    first = client.install("sandbox", grant, account_id=account)
    assert first.created and not first.replayed
    c = first.connection
    assert (c.connection_id, c.provider, c.account_id) == (f"sandbox-{account}", "sandbox", account)
    assert c.status == "ACTIVE" and c.reconnect_cause == "UNSPECIFIED"
    assert c.scopes == ("crm",) and c.version >= 1
    again = client.install("sandbox", grant, account_id=account)
    assert again.replayed and again.connection.version == c.version
    assert client.get_token(c.connection_id).access_token == issued["access_token"]

    # Code exchange: the sandbox mints a code, tokend exchanges it.
    account = unique("sync-code")
    installed = client.install_code("sandbox", broker.code(account))
    assert installed.connection.connection_id == f"sandbox-{account}"
    assert broker.api_me(client.get_token(f"sandbox-{account}").access_token) == 200

    # Client credentials: just provider, connection id and params.
    cid = unique("sync-reports")
    cc = client.install_client_credentials("reports", cid, params={"host": "127.0.0.1"})
    assert cc.created and cc.connection.provider == "reports"
    assert dict(client.get_connection(cid).params) == {"host": "127.0.0.1"}
    token = client.get_token(cid)
    assert token.scopes == ("reports.read",)
    assert broker.api_me(token.access_token) == 200


def test_get_token_and_force_refresh(client: tokend.Client, broker: Broker) -> None:
    cid, issued = install(client, broker, "sync-refresh")
    token = client.get_token(cid)
    assert token.access_token == issued["access_token"]
    assert token.token_type.lower() == "bearer" and token.scopes == ("crm",)
    assert 1700 < token.expires_in_seconds <= 1800 and 1700 < token.ttl() <= 1800
    assert issued["access_token"] not in repr(token) and issued["access_token"] not in str(token)

    calls = broker.provider_calls()
    fresh, refreshed = client.force_refresh(cid, rejected_version=token.version)
    assert refreshed and fresh.version == token.version + 1
    assert fresh.access_token != token.access_token
    assert broker.provider_calls() == calls + 1
    # A second refresh naming the old version: the newer token, no provider call.
    again, refreshed = client.force_refresh(cid, rejected_version=token.version)
    assert not refreshed and again.access_token == fresh.access_token
    assert broker.provider_calls() == calls + 1
    # The cache never hands out the rejected token again.
    assert client.token(cid).access_token == fresh.access_token


def test_typed_errors(client: tokend.Client, broker: Broker) -> None:
    with pytest.raises(tokend.NotFound) as not_found:
        client.get_token("sync-missing")
    assert not_found.value.reason == "CONNECTION_NOT_FOUND"
    with pytest.raises(tokend.InvalidArgument) as invalid:
        client.get_token("not valid")
    assert invalid.value.field == "connection_id"

    cid, issued = install(client, broker, "sync-errors")
    other = broker.mint(unique("sync-errors-other"))
    with pytest.raises(tokend.AlreadyExists):
        client.install_import(
            "sandbox", "someone-else", other["access_token"], other["refresh_token"], 1800,
            connection_id=cid,
        )  # fmt: skip

    # Each fault on a connection of its own: after a failed refresh the
    # broker backs off that connection and answers with the same error.
    flaky, _ = install(client, broker, "sync-errors-503")
    version = client.get_token(flaky).version
    broker.fault(kind="status", status=503, count=5)
    try:
        with pytest.raises(tokend.Unavailable) as unavailable:
            client.force_refresh(flaky, rejected_version=version)
    finally:
        broker.clear_faults()
    assert not isinstance(unavailable.value, tokend.TransportError)
    assert unavailable.value.reason == "PROVIDER_UNAVAILABLE"
    assert unavailable.value.retry_after is not None and unavailable.value.retry_after > 0

    slow, _ = install(client, broker, "sync-errors-slow")
    version = client.get_token(slow).version
    broker.fault(kind="latency", delay_ms=1500, count=1)
    try:
        started = time.monotonic()
        with pytest.raises(tokend.DeadlineExceeded):
            client.force_refresh(slow, rejected_version=version, timeout=0.3)
        assert time.monotonic() - started < 1.2
    finally:
        time.sleep(1.5)  # let the slow refresh finish before the next test
        broker.clear_faults()

    broker.revoke(issued["account_id"])
    with pytest.raises(tokend.ReconnectRequired) as revoked:
        client.force_refresh(cid)
    assert revoked.value.cause == "REVOKED"
    assert revoked.value.provider_error == "invalid_grant"
    assert revoked.value.connection_id == cid
    assert isinstance(revoked.value, tokend.TokendError)


def test_not_found_evicts_the_cached_token(client: tokend.Client, broker: Broker) -> None:
    """A NotFound answer about a connection drops its cached token: the
    connection was deleted elsewhere (another process, the CLI)."""
    cid, _ = install(client, broker, "sync-gone")
    client.token(cid)
    assert client.cache.peek(cid) is not None
    with tokend.Client(broker.target) as other:
        other.delete_connection(cid)
    with pytest.raises(tokend.NotFound):
        client.get_token(cid)
    assert client.cache.peek(cid) is None


def test_unavailable_with_retry_info_is_not_retried(client: tokend.Client, broker: Broker) -> None:
    """The broker's UNAVAILABLE (with RetryInfo) reaches the caller after
    one call: only an unreachable broker is retried by the SDK."""
    flaky, _ = install(client, broker, "sync-no-retry")
    version = client.get_token(flaky).version
    before = broker.rpc_count("ForceRefresh")
    broker.fault(kind="status", status=503, count=5)
    try:
        with pytest.raises(tokend.Unavailable) as e:
            client.force_refresh(flaky, rejected_version=version)
    finally:
        broker.clear_faults()
    assert e.value.retry_after is not None and not isinstance(e.value, tokend.TransportError)
    assert broker.rpc_count("ForceRefresh") == before + 1


def test_provider_misconfigured(own_broker: Broker) -> None:
    """On a broker of its own: invalid_client trips the provider's breaker."""
    with tokend.Client(own_broker.target) as client:
        cid, _ = install(client, own_broker, "sync-misconfigured")
        own_broker.fault(kind="invalid_client", count=1)
        with pytest.raises(tokend.ProviderMisconfigured) as e:
            client.force_refresh(cid, rejected_version=client.get_token(cid).version)
    assert e.value.reason == "PROVIDER_MISCONFIGURED"
    assert e.value.metadata["provider_error"] == "invalid_client"


def test_unreachable_broker_is_a_transport_error_within_the_deadline(broker: Broker) -> None:
    with tokend.Client(f"127.0.0.1:{free_port()}", timeout=1.0) as dead:
        started = time.monotonic()
        with pytest.raises(tokend.TransportError) as e:
            dead.get_token("anything")
        assert time.monotonic() - started < 2.0
    assert isinstance(e.value, tokend.Unavailable)


def test_reconnect_required_evicts_the_cached_token(client: tokend.Client, broker: Broker) -> None:
    cid, issued = install(client, broker, "sync-evict")
    assert client.token(cid).access_token == issued["access_token"]
    assert client.cache.peek(cid) is not None
    broker.revoke(issued["account_id"])
    with pytest.raises(tokend.ReconnectRequired):
        client.force_refresh(cid)
    assert client.cache.peek(cid) is None
    # Not served from the cache any more: the broker says why.
    with pytest.raises(tokend.ReconnectRequired):
        client.token(cid)


def test_1000_concurrent_token_calls_cost_at_most_2_broker_calls(
    client: tokend.Client, broker: Broker
) -> None:
    cid, issued = install(client, broker, "sync-flight")
    before = broker.rpc_count("GetToken")
    barrier = threading.Barrier(1000)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait(timeout=30)
            tokens.append(client.token(cid).access_token)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(tokens) == 1000 and set(tokens) == {issued["access_token"]}
    calls = broker.rpc_count("GetToken") - before
    assert 1 <= calls <= 2, f"{calls} GetToken calls at the broker"


def test_list_connections_iterates_every_page(client: tokend.Client, broker: Broker) -> None:
    prefix = unique("sync-list")
    ids = []
    for i in range(5):
        issued = broker.mint(f"{prefix}-{i}")
        ids.append(
            client.install_import(
                "sandbox", f"{prefix}-{i}", issued["access_token"], issued["refresh_token"], 1800
            ).connection.connection_id
        )
    pages_before = broker.rpc_count("ListConnections")
    listed = client.list_connections(provider="sandbox", page_size=2)
    mine = [c for c in listed if c.connection_id.startswith(f"sandbox-{prefix}-")]
    assert [c.connection_id for c in mine] == sorted(ids)
    assert all(isinstance(c, tokend.Connection) and c.status == "ACTIVE" for c in mine)
    assert broker.rpc_count("ListConnections") - pages_before >= 3

    broker.revoke(f"{prefix}-3")
    with pytest.raises(tokend.ReconnectRequired):
        client.force_refresh(ids[3])
    revoked = [
        c.connection_id
        for c in client.list_connections(status="reconnect_required", page_size=1)
        if c.connection_id.startswith(f"sandbox-{prefix}-")
    ]
    assert revoked == [ids[3]]
    with pytest.raises(ValueError):
        client.list_connections(status="nonsense")
    connections, next_token = client.list_connections_page(provider="sandbox", page_size=1)
    assert len(connections) == 1 and next_token


def test_get_and_delete_connection(client: tokend.Client, broker: Broker) -> None:
    cid, _ = install(client, broker, "sync-delete")
    c = client.get_connection(cid)
    assert c.connection_id == cid and c.status == "ACTIVE" and c.last_error is None
    assert c.access_token_expires_at is not None and c.created_at is not None
    client.token(cid)
    client.delete_connection(cid)
    assert client.cache.peek(cid) is None
    with pytest.raises(tokend.NotFound):
        client.get_connection(cid)
    with pytest.raises(tokend.NotFound):
        client.token(cid)


def test_endpoints_may_be_urls(broker: Broker) -> None:
    for target in (broker.target, f"http://{broker.target}", f"http://{broker.target}/"):
        with tokend.Client(target) as c, pytest.raises(tokend.NotFound):
            c.get_token("not-there")
    with pytest.raises(ValueError):
        tokend.Client(f"http://{broker.target}", root_certificates=b"pem")


def test_closed_client_refuses_calls(broker: Broker) -> None:
    c = tokend.Client(broker.target)
    c.close()
    with pytest.raises(ValueError):
        c.get_token("x")
    with pytest.raises(ValueError):
        c.watch("x")
