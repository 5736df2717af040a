"""Fixtures: live `tokend serve --sandbox` brokers on free ports, sandbox
controls, broker metrics, and a checked import of the INSTALLED package.

Nothing is skipped: a missing tokend binary or openssl fails the run at
start (pytest exits with a usage error)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BINARY, REPORTS_PROVIDER, Broker, start_broker


def pytest_configure(config: pytest.Config) -> None:
    if not (os.path.isfile(BINARY) and os.access(BINARY, os.X_OK)):
        raise pytest.UsageError(
            f"tokend binary not found at {BINARY!r}: build it (cargo build --bin tokend) "
            "or set TOKEND_BIN to its absolute path"
        )
    if shutil.which("openssl") is None:
        raise pytest.UsageError("openssl is needed for the TLS tests (apt-get install openssl)")
    import tokend_client

    where = Path(tokend_client.__file__).resolve()
    source = (Path(__file__).resolve().parent.parent / "tokend_client").resolve()
    if os.environ.get("TOKEND_CLIENT_EXPECT_INSTALLED") == "1" and source in where.parents:
        raise pytest.UsageError(
            f"tokend_client was imported from the source tree ({where}), not the installed wheel"
        )


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The shared broker: sandbox with 1800 s tokens, plus the `reports`
    client-credentials provider."""
    tmp = Path(tempfile.mkdtemp(prefix="tokend-py-"))
    b = start_broker(tmp, config=REPORTS_PROVIDER)
    yield b
    b.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def short_broker() -> Iterator[Broker]:
    """A broker whose sandbox hands out 2-second tokens."""
    tmp = Path(tempfile.mkdtemp(prefix="tokend-py-short-"))
    b = start_broker(tmp, lifetime=2)
    yield b
    b.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def own_broker() -> Iterator[Broker]:
    """A broker of this test alone: to restart, or to trip its provider breaker."""
    tmp = Path(tempfile.mkdtemp(prefix="tokend-py-restart-"))
    b = start_broker(tmp)
    yield b
    b.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def client(broker: Broker) -> Iterator[Any]:
    import tokend_client

    with tokend_client.Client(broker.target) as c:
        yield c


@pytest.fixture()
async def aclient(broker: Broker) -> AsyncIterator[Any]:
    import tokend_client

    async with tokend_client.AsyncClient(broker.target) as c:
        yield c
