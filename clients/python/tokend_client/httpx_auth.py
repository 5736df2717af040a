"""Refresh-and-retry for httpx (``pip install 'tokend-client[httpx]'``).

``auth=TokendAuth(tokend, "sandbox-portal-123")`` sets ``Authorization:
Bearer <token>`` from the client's cache. On a 401 it calls ForceRefresh
with the version of the token that was sent, then retries ONCE with the new
token. POST and PATCH are not replayed unless `replay_non_idempotent=True`
(a replayed write can duplicate data): their 401 comes back as it is, and
the token is still refreshed for the next request. A second 401 (to the
replay with the refreshed token) raises `tokend_client.StillUnauthorized`
from ``client.get(...)``, carrying the final response (body read,
connection released); with ``second_401="return"`` that response is
returned instead. ReconnectRequired and the other typed errors propagate
from ``client.get(...)`` as they are.

Works in both httpx flows: with `httpx.Client` it needs a sync
`tokend_client.Client`; with `httpx.AsyncClient` an `AsyncClient` (or a
sync `Client`, whose calls then run in a worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator

import httpx

from tokend_client._http import Second401, check_second_401
from tokend_client.aio import AsyncClient
from tokend_client.client import Client
from tokend_client.errors import StillUnauthorized
from tokend_client.models import Token

__all__ = ["TokendAuth", "REPLAYED_METHODS", "Second401"]

#: Methods retried after a 401 without opting in.
REPLAYED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class TokendAuth(httpx.Auth):
    # The body is read before sending so that a retry can send it again.
    requires_request_body = True

    def __init__(
        self,
        tokend: Client | AsyncClient,
        connection_id: str,
        *,
        replay_non_idempotent: bool = False,
        second_401: Second401 = "raise",
    ) -> None:
        self.tokend = tokend
        self.connection_id = connection_id
        self.replay_non_idempotent = replay_non_idempotent
        self.second_401 = check_second_401(second_401)

    def __repr__(self) -> str:
        return f"TokendAuth(connection_id={self.connection_id!r})"

    def may_replay(self, method: str) -> bool:
        return method.upper() in REPLAYED_METHODS or self.replay_non_idempotent

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        tokend = self.tokend
        if not isinstance(tokend, Client):
            raise TypeError("httpx.Client needs a sync tokend_client.Client in TokendAuth")
        token = tokend.token(self.connection_id)
        _authorize(request, token)
        response = yield request
        if response.status_code != 401:
            return
        fresh, _ = tokend.force_refresh(self.connection_id, rejected_version=token.version)
        if not self.may_replay(request.method):
            return
        _authorize(request, fresh)
        response = yield request
        if response.status_code == 401 and self.second_401 == "raise":
            response.read()  # the error hands it over readable; httpx closes it
            raise StillUnauthorized(self.connection_id, response)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._token()
        _authorize(request, token)
        response = yield request
        if response.status_code != 401:
            return
        fresh = await self._refresh(token.version)
        if not self.may_replay(request.method):
            return
        _authorize(request, fresh)
        response = yield request
        if response.status_code == 401 and self.second_401 == "raise":
            await response.aread()
            raise StillUnauthorized(self.connection_id, response)

    async def _token(self) -> Token:
        tokend = self.tokend
        if isinstance(tokend, AsyncClient):
            return await tokend.token(self.connection_id)
        return await asyncio.to_thread(tokend.token, self.connection_id)

    async def _refresh(self, rejected_version: int) -> Token:
        tokend = self.tokend
        if isinstance(tokend, AsyncClient):
            token, _ = await tokend.force_refresh(
                self.connection_id, rejected_version=rejected_version
            )
        else:
            token, _ = await asyncio.to_thread(
                tokend.force_refresh, self.connection_id, rejected_version
            )
        return token


def _authorize(request: httpx.Request, token: Token) -> None:
    request.headers["Authorization"] = token.authorization
