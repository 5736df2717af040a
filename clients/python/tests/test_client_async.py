"""The AsyncClient against a live broker: the same surface as the sync
client, with asyncio-safe singleflight (1,000 concurrent token() calls)."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import Broker, free_port, unique

import tokend_client as tokend


async def install(client: tokend.AsyncClient, broker: Broker, prefix: str) -> tuple[str, dict]:
    account = unique(prefix)
    issued = broker.mint(account)
    result = await client.install_import(
        "sandbox",
        account,
        issued["access_token"],
        issued["refresh_token"],
        issued["expires_in"],
        scopes=["crm"],
    )
    return result.connection.connection_id, issued


async def test_install_by_token_import_code_and_client_credentials(
    aclient: tokend.AsyncClient, broker: Broker
) -> None:
    account = unique("async-import")
    issued = broker.mint(account)
    grant = tokend.TokenImport(issued["access_token"], issued["refresh_token"], 1800, ("crm",))
    first = await aclient.install("sandbox", grant, account_id=account)
    assert first.created and first.connection.status == "ACTIVE"
    assert (await aclient.install("sandbox", grant, account_id=account)).replayed

    account = unique("async-code")
    installed = await aclient.install_code("sandbox", broker.code(account))
    assert installed.connection.connection_id == f"sandbox-{account}"

    cid = unique("async-reports")
    cc = await aclient.install_client_credentials("reports", cid, params={"host": "127.0.0.1"})
    assert cc.created and dict(cc.connection.params) == {"host": "127.0.0.1"}
    token = await aclient.get_token(cid)
    assert broker.api_me(token.access_token) == 200


async def test_get_token_and_force_refresh(aclient: tokend.AsyncClient, broker: Broker) -> None:
    cid, issued = await install(aclient, broker, "async-refresh")
    token = await aclient.get_token(cid)
    assert token.access_token == issued["access_token"]
    assert issued["access_token"] not in repr(token)
    calls = broker.provider_calls()
    fresh, refreshed = await aclient.force_refresh(cid, rejected_version=token.version)
    assert refreshed and fresh.version == token.version + 1
    assert broker.provider_calls() == calls + 1
    again, refreshed = await aclient.force_refresh(cid, rejected_version=token.version)
    assert not refreshed and again.access_token == fresh.access_token
    assert broker.provider_calls() == calls + 1
    assert (await aclient.token(cid)).access_token == fresh.access_token


async def test_typed_errors(aclient: tokend.AsyncClient, broker: Broker) -> None:
    with pytest.raises(tokend.NotFound):
        await aclient.get_token("async-missing")
    with pytest.raises(tokend.InvalidArgument) as invalid:
        await aclient.get_token("not valid")
    assert invalid.value.field == "connection_id"

    flaky, _ = await install(aclient, broker, "async-errors-503")
    version = (await aclient.get_token(flaky)).version
    broker.fault(kind="status", status=503, count=5)
    try:
        with pytest.raises(tokend.Unavailable) as unavailable:
            await aclient.force_refresh(flaky, rejected_version=version)
    finally:
        broker.clear_faults()
    assert unavailable.value.reason == "PROVIDER_UNAVAILABLE"
    assert unavailable.value.retry_after is not None

    slow, _ = await install(aclient, broker, "async-errors-slow")
    version = (await aclient.get_token(slow)).version
    broker.fault(kind="latency", delay_ms=1500, count=1)
    try:
        with pytest.raises(tokend.DeadlineExceeded):
            await aclient.force_refresh(slow, rejected_version=version, timeout=0.3)
    finally:
        await asyncio.sleep(1.5)
        broker.clear_faults()

    cid, issued = await install(aclient, broker, "async-errors")
    broker.revoke(issued["account_id"])
    with pytest.raises(tokend.ReconnectRequired) as revoked:
        await aclient.force_refresh(cid)
    assert revoked.value.cause == "REVOKED" and revoked.value.provider_error == "invalid_grant"


async def test_unreachable_broker_is_a_transport_error_within_the_deadline() -> None:
    async with tokend.AsyncClient(f"127.0.0.1:{free_port()}", timeout=1.0) as dead:
        started = time.monotonic()
        with pytest.raises(tokend.TransportError):
            await dead.get_token("anything")
        assert time.monotonic() - started < 2.0


async def test_reconnect_required_evicts_the_cached_token(
    aclient: tokend.AsyncClient, broker: Broker
) -> None:
    cid, issued = await install(aclient, broker, "async-evict")
    assert (await aclient.token(cid)).access_token == issued["access_token"]
    broker.revoke(issued["account_id"])
    with pytest.raises(tokend.ReconnectRequired):
        await aclient.force_refresh(cid)
    assert aclient.cache.peek(cid) is None
    with pytest.raises(tokend.ReconnectRequired):
        await aclient.token(cid)


async def test_not_found_evicts_the_cached_token(
    aclient: tokend.AsyncClient, broker: Broker
) -> None:
    cid, _ = await install(aclient, broker, "async-gone")
    await aclient.token(cid)
    assert aclient.cache.peek(cid) is not None
    async with tokend.AsyncClient(broker.target) as other:
        await other.delete_connection(cid)
    with pytest.raises(tokend.NotFound):
        await aclient.get_token(cid)
    assert aclient.cache.peek(cid) is None


async def test_1000_concurrent_token_calls_cost_at_most_2_broker_calls(
    aclient: tokend.AsyncClient, broker: Broker
) -> None:
    cid, issued = await install(aclient, broker, "async-flight")
    before = broker.rpc_count("GetToken")
    tokens = await asyncio.gather(*(aclient.token(cid) for _ in range(1000)))
    assert {t.access_token for t in tokens} == {issued["access_token"]}
    calls = broker.rpc_count("GetToken") - before
    assert 1 <= calls <= 2, f"{calls} GetToken calls at the broker"


async def test_list_connections_iterates_every_page(
    aclient: tokend.AsyncClient, broker: Broker
) -> None:
    prefix = unique("async-list")
    ids = []
    for i in range(5):
        issued = broker.mint(f"{prefix}-{i}")
        result = await aclient.install_import(
            "sandbox", f"{prefix}-{i}", issued["access_token"], issued["refresh_token"], 1800
        )
        ids.append(result.connection.connection_id)
    before = broker.rpc_count("ListConnections")
    mine = [
        c.connection_id
        async for c in aclient.list_connections(provider="sandbox", page_size=2)
        if c.connection_id.startswith(f"sandbox-{prefix}-")
    ]
    assert mine == sorted(ids)
    assert broker.rpc_count("ListConnections") - before >= 3
    with pytest.raises(ValueError):
        aclient.list_connections(status="nonsense")


async def test_get_and_delete_connection(aclient: tokend.AsyncClient, broker: Broker) -> None:
    cid, _ = await install(aclient, broker, "async-delete")
    c = await aclient.get_connection(cid)
    assert c.connection_id == cid and c.status == "ACTIVE"
    await aclient.token(cid)
    await aclient.delete_connection(cid)
    assert aclient.cache.peek(cid) is None
    with pytest.raises(tokend.NotFound):
        await aclient.get_connection(cid)
