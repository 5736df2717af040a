"""Callers against a broker with TLS, mutual TLS and identities: an API key
(sent as `authorization: Bearer`), a client certificate, and the typed
errors of refusals (Unauthenticated, PermissionDenied, ResourceExhausted,
a TLS failure as TransportError). Secrets stay out of every repr."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Broker, Certs, make_certs, sha256_hex, start_broker, unique

import tokend_client as tokend

ADMIN_KEY = "tk_admin_0123456789abcdef"
LIMITED_KEY = "tk_limited_fedcba9876543210"


@pytest.fixture(scope="module")
def secure() -> Iterator[tuple[Broker, Certs]]:
    tmp = Path(tempfile.mkdtemp(prefix="tokend-py-tls-"))
    (tmp / "certs").mkdir()
    certs = make_certs(tmp / "certs")
    config = f"""
[tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
client_ca_file = "{certs.ca_file}"

[[identities]]
name = "admin-key"
api_key_sha256 = "{sha256_hex(ADMIN_KEY)}"
grants = [{{ permissions = ["tokens", "install", "admin"], connections = ["*"] }}]

[[identities]]
name = "mtls-service"
cert_sha256 = "{certs.client_cert_sha256}"
grants = [{{ permissions = ["tokens", "install", "admin"], connections = ["*"] }}]

[[identities]]
name = "limited"
api_key_sha256 = "{sha256_hex(LIMITED_KEY)}"
grants = [{{ permissions = ["tokens"], connections = ["sandbox-allowed-*"] }}]
requests_per_second = 1
"""
    broker = start_broker(tmp, config=config.replace("{", "{{").replace("}", "}}"))
    yield broker, certs
    broker.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def installed(client: tokend.Client, broker: Broker, prefix: str) -> str:
    account = unique(prefix)
    issued = broker.mint(account)
    return client.install_import(
        "sandbox", account, issued["access_token"], issued["refresh_token"], 1800
    ).connection.connection_id


def test_api_key_over_tls(secure: tuple[Broker, Certs]) -> None:
    broker, certs = secure
    with tokend.Client(broker.target, api_key=ADMIN_KEY, root_certificates=certs.ca) as client:
        cid = installed(client, broker, "tls-key")
        assert client.token(cid).connection_id == cid
        assert ADMIN_KEY not in repr(client)
    # https:// asks for TLS too; the CA still has to be ours.
    with tokend.Client(
        f"https://{broker.target}", api_key=ADMIN_KEY, root_certificates=certs.ca
    ) as client:
        assert client.get_connection(cid).connection_id == cid


def test_mutual_tls(secure: tuple[Broker, Certs]) -> None:
    broker, certs = secure
    with tokend.Client(
        broker.target,
        root_certificates=certs.ca,
        certificate_chain=certs.client_cert,
        private_key=certs.client_key,
    ) as client:
        cid = installed(client, broker, "tls-mtls")
        assert client.get_token(cid).connection_id == cid
    # A certificate from the same CA that no identity names is refused.
    with (
        tokend.Client(
            broker.target,
            root_certificates=certs.ca,
            certificate_chain=certs.other_client_cert,
            private_key=certs.other_client_key,
        ) as client,
        pytest.raises(tokend.Unauthenticated),
    ):
        client.get_token(cid)


async def test_async_api_key_and_mutual_tls(secure: tuple[Broker, Certs]) -> None:
    broker, certs = secure
    async with tokend.AsyncClient(
        broker.target, api_key=ADMIN_KEY, root_certificates=certs.ca
    ) as client:
        account = unique("tls-async")
        issued = broker.mint(account)
        result = await client.install_import(
            "sandbox", account, issued["access_token"], issued["refresh_token"], 1800
        )
        cid = result.connection.connection_id
    async with tokend.AsyncClient(
        broker.target,
        root_certificates=certs.ca,
        certificate_chain=certs.client_cert,
        private_key=certs.client_key,
    ) as client:
        assert (await client.token(cid)).connection_id == cid
    async with tokend.AsyncClient(broker.target, root_certificates=certs.ca) as client:
        with pytest.raises(tokend.Unauthenticated):
            await client.get_token(cid)


def test_refusals_are_typed(secure: tuple[Broker, Certs]) -> None:
    broker, certs = secure
    with tokend.Client(broker.target, root_certificates=certs.ca) as anonymous:
        with pytest.raises(tokend.Unauthenticated):
            anonymous.get_token("sandbox-anything")
    with tokend.Client(broker.target, api_key="not-a-key", root_certificates=certs.ca) as wrong:
        with pytest.raises(tokend.Unauthenticated) as e:
            wrong.get_token("sandbox-anything")
        assert "not-a-key" not in str(e.value) and "not-a-key" not in repr(e.value)
    with tokend.Client(broker.target, api_key=LIMITED_KEY, root_certificates=certs.ca) as limited:
        with pytest.raises(tokend.PermissionDenied) as denied:
            limited.get_token("sandbox-elsewhere")
        assert denied.value.reason == "PERMISSION_DENIED"
        # One request a second: the next one at once is refused, with RetryInfo.
        with pytest.raises(tokend.ResourceExhausted) as limited_out:
            for _ in range(5):
                try:
                    limited.get_token("sandbox-allowed-x")
                except tokend.NotFound:
                    pass
        assert limited_out.value.reason == "CALLER_RATE_LIMITED"
        assert limited_out.value.retry_after == pytest.approx(1.0)


def test_tls_failures_are_transport_errors(secure: tuple[Broker, Certs]) -> None:
    broker, _ = secure
    # Plaintext against a TLS listener, and TLS with the wrong roots (the
    # system's): tokend cannot be reached, within the deadline.
    for kwargs in ({}, {"tls": True}):
        with tokend.Client(broker.target, api_key=ADMIN_KEY, timeout=1.0, **kwargs) as c:
            with pytest.raises(tokend.TransportError):
                c.get_token("sandbox-anything")


def test_secrets_stay_out_of_reprs() -> None:
    token = tokend.Token(
        connection_id="c",
        access_token="SECRET-AT",
        token_type="Bearer",
        expires_in_seconds=60,
        version=1,
        scopes=(),
        account_id="a",
        expires_at=None,
        expires_at_monotonic=0.0,
    )
    imported = tokend.TokenImport("SECRET-AT", "SECRET-RT", 60)
    code = tokend.AuthorizationCode("SECRET-CODE", "https://app/cb", "SECRET-VERIFIER")
    client = tokend.Client("127.0.0.1:1", api_key="SECRET-KEY")
    try:
        from tokend_client.httpx_auth import TokendAuth as HttpxAuth
        from tokend_client.requests_auth import TokendAuth as RequestsAuth

        texts = [repr(token), str(token), repr(imported), str(imported), repr(code), repr(client)]
        texts += [repr(client.cache), repr(HttpxAuth(client, "c")), repr(RequestsAuth(client, "c"))]
        for text in texts:
            assert "SECRET" not in text, text
    finally:
        client.close()
