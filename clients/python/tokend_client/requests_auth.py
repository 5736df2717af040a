"""Refresh-and-retry for requests (``pip install 'tokend-client[requests]'``).

``session.auth = TokendAuth(tokend, "sandbox-portal-123")`` sets
``Authorization: Bearer <token>`` from the client's cache. On a 401 it calls
ForceRefresh with the version of the token that was sent, then retries ONCE
with the new token. POST and PATCH are not replayed unless
`replay_non_idempotent=True`: their 401 comes back as it is, and the token
is still refreshed for the next request. A body that cannot be sent twice
(a generator or a file) is never replayed. A second 401 (to the replay with
the refreshed token) raises `tokend_client.StillUnauthorized` from
``session.get(...)``, carrying the final response (body read, connection
released); with ``second_401="return"`` that response is returned instead.
ReconnectRequired and the other typed errors propagate from
``session.get(...)`` as they are.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import requests
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from tokend_client._http import Second401, check_second_401
from tokend_client.client import Client
from tokend_client.errors import StillUnauthorized

__all__ = ["TokendAuth", "REPLAYED_METHODS", "Second401"]

#: Methods retried after a 401 without opting in.
REPLAYED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class TokendAuth(AuthBase):
    def __init__(
        self,
        tokend: Client,
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

    def may_replay(self, request: requests.PreparedRequest) -> bool:
        method = (request.method or "GET").upper()
        if method not in REPLAYED_METHODS and not self.replay_non_idempotent:
            return False
        return request.body is None or isinstance(request.body, (bytes, str))

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.tokend.token(self.connection_id)
        request.headers["Authorization"] = token.authorization
        # The version that was sent travels with this request's hook, so
        # concurrent requests on one session each name their own.
        request.register_hook(  # type: ignore[no-untyped-call]
            "response", partial(self._on_response, token.version)
        )
        return request

    def _on_response(
        self, sent_version: int, response: requests.Response, **kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401:
            return response
        fresh, _ = self.tokend.force_refresh(self.connection_id, rejected_version=sent_version)
        request = response.request
        if not self.may_replay(request):
            return response
        # Release the connection before sending again on it.
        _ = response.content
        response.close()
        retry = request.copy()
        retry.headers["Authorization"] = fresh.authorization
        jar = getattr(retry, "_cookies", None)
        if jar is not None:
            extract_cookies_to_jar(jar, request, response.raw)  # type: ignore[no-untyped-call]
            retry.prepare_cookies(jar)
        adapter = response.connection
        second: requests.Response = adapter.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        if second.status_code == 401 and self.second_401 == "raise":
            _ = second.content  # readable for the caller, the connection released
            second.close()
            raise StillUnauthorized(self.connection_id, second)
        return second
