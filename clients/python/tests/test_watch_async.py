"""The AsyncClient's streams against a live broker: watch hears
RECONNECT_REQUIRED and survives a restart; watch_all resumes by cursor and
across a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import Broker, unique

import tokend_client as tokend


async def install(client: tokend.AsyncClient, broker: Broker, prefix: str) -> tuple[str, str]:
    account = unique(prefix)
    issued = broker.mint(account)
    result = await client.install_import(
        "sandbox", account, issued["access_token"], issued["refresh_token"], 1800
    )
    return result.connection.connection_id, account


async def next_within(stream: Any, timeout: float = 10.0) -> Any:
    try:
        return await asyncio.wait_for(stream.__anext__(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no event within {timeout}s") from None


async def until(stream: Any, predicate: Any, timeout: float = 10.0) -> Any:
    while True:
        event = await next_within(stream, timeout)
        if predicate(event):
            return event


async def test_watch_sees_reconnect_required_and_evicts(
    aclient: tokend.AsyncClient, broker: Broker
) -> None:
    cid, account = await install(aclient, broker, "async-watch")
    await aclient.token(cid)
    async with aclient.watch(cid) as events:
        first = await next_within(events)
        assert first.kind == "SNAPSHOT" and not first.reconnect_required
        broker.revoke(account)
        async with tokend.AsyncClient(broker.target) as other:
            with pytest.raises(tokend.ReconnectRequired):
                await other.force_refresh(cid)
        event = await until(events, lambda e: e.kind == "STATUS_CHANGED")
    assert event.connection.status == "RECONNECT_REQUIRED"
    assert event.connection.reconnect_cause == "REVOKED"
    assert aclient.cache.peek(cid) is None
    assert events.closed


async def test_watch_resubscribes_across_a_broker_restart(own_broker: Broker) -> None:
    async with tokend.AsyncClient(own_broker.target) as client:
        cid, account = await install(client, own_broker, "async-watch-restart")
        events = client.watch(cid)
        assert (await next_within(events)).kind == "SNAPSHOT"
        await asyncio.to_thread(own_broker.restart)
        again = await next_within(events, 20)
        assert again.kind == "SNAPSHOT" and events.resubscribes >= 1
        own_broker.revoke(account)
        with pytest.raises(tokend.ReconnectRequired):
            await client.force_refresh(cid)
        event = await until(events, lambda e: e.reconnect_required)
        assert event.kind == "STATUS_CHANGED"
        await events.aclose()
        assert events.closed


async def test_watch_ends_after_deleted(aclient: tokend.AsyncClient, broker: Broker) -> None:
    cid, _ = await install(aclient, broker, "async-watch-delete")
    events = aclient.watch(cid)
    assert (await next_within(events)).kind == "SNAPSHOT"
    await aclient.delete_connection(cid)
    assert (await next_within(events)).kind == "DELETED"
    assert [e async for e in events] == []
    with pytest.raises(tokend.NotFound):
        await next_within(aclient.watch(cid))


async def wait_started(stream: tokend.AsyncEventStream) -> asyncio.Task[Any]:
    """Starts reading the stream in a task; returns once its first
    checkpoint arrived (the stream is live from there)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in stream:
                await queue.put(event)
        except Exception as e:
            await queue.put(e)

    task = asyncio.create_task(pump())
    task.queue = queue  # type: ignore[attr-defined]
    for _ in range(1000):
        if stream.cursor is not None:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the stream sent no checkpoint")


async def take(task: asyncio.Task[Any], n: int, timeout: float = 10.0) -> list[Any]:
    out = []
    for _ in range(n):
        item = await asyncio.wait_for(task.queue.get(), timeout)  # type: ignore[attr-defined]
        if isinstance(item, Exception):
            raise item
        out.append(item)
    return out


async def test_watch_all_resumes_after_cursor(aclient: tokend.AsyncClient, broker: Broker) -> None:
    prefix = unique("async-resume")
    stream = aclient.watch_all(connection_id_prefixes=[f"sandbox-{prefix}"])
    reader = await wait_started(stream)
    first = [(await install(aclient, broker, prefix))[0] for _ in range(2)]
    events = await take(reader, 2)
    assert [e.connection_id for e in events] == first
    assert {e.event_type for e in events} == {"INSTALLED"}
    await stream.aclose()
    await asyncio.wait_for(reader, 5)
    saved = stream.cursor
    later = [(await install(aclient, broker, prefix))[0] for _ in range(2)]
    async with aclient.watch_all(
        resume_after=saved, connection_id_prefixes=[f"sandbox-{prefix}"]
    ) as resumed:
        assert [(await next_within(resumed)).connection_id for _ in later] == later


async def test_watch_all_bad_cursor_is_a_typed_error(aclient: tokend.AsyncClient) -> None:
    with pytest.raises(tokend.InvalidArgument) as e:
        await next_within(aclient.watch_all(resume_after="garbage"))
    assert e.value.field == "resume_after"


async def test_watch_all_reconnects_across_a_broker_restart(own_broker: Broker) -> None:
    async with tokend.AsyncClient(own_broker.target) as client:
        stream = client.watch_all()
        reader = await wait_started(stream)
        before, _ = await install(client, own_broker, "async-restart")
        [first] = await take(reader, 1)
        assert first.connection_id == before
        await asyncio.to_thread(own_broker.restart)
        after, _ = await install(client, own_broker, "async-restart")
        [second] = await take(reader, 1, timeout=20)
        assert second.connection_id == after and second.sequence > first.sequence
        assert stream.cursor == second.cursor and stream.resubscribes >= 1
        await stream.aclose()
        await asyncio.wait_for(reader, 5)


async def test_closing_the_client_ends_its_streams(broker: Broker) -> None:
    client = tokend.AsyncClient(broker.target)
    cid, _ = await install(client, broker, "async-close")
    watch = client.watch(cid)
    assert (await next_within(watch)).kind == "SNAPSHOT"
    feed = client.watch_all()
    reader = await wait_started(feed)
    drained = asyncio.ensure_future(asyncio.wait_for(_drain(watch), 5))
    await asyncio.sleep(0.1)
    await client.close()
    assert await drained == []
    await asyncio.wait_for(reader, 5)
    assert reader.queue.empty()  # type: ignore[attr-defined]  # ended without an error
    assert watch.closed and feed.closed


async def _drain(stream: Any) -> list[Any]:
    return [e async for e in stream]
