"""The Python client against a live tokend with the sandbox provider: get a
token, force a refresh, and hear RECONNECT_REQUIRED on the watch stream."""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

import tokend_client as tokend

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BINARY = os.environ.get("TOKEND_BIN", os.path.join(ROOT, "target", "debug", "tokend"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRPC_TARGET = [""]


@pytest.fixture(scope="module")
def server():
    grpc_port, http_port = free_port(), free_port()
    data = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [BINARY, "serve", "--sandbox", "--listen", f"127.0.0.1:{grpc_port}",
         "--sandbox-listen", f"127.0.0.1:{http_port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = tokend.Client(f"127.0.0.1:{grpc_port}")
    GRPC_TARGET[0] = f"127.0.0.1:{grpc_port}"
    deadline = time.time() + 20
    while True:
        try:
            client.get_token("warmup")
        except tokend.NotFound:
            break
        except tokend.TokendError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield client, f"http://127.0.0.1:{http_port}"
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


def sandbox(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as r:
        raw = r.read()
        return json.loads(raw) if raw else {}


def install(client, base, account):
    issued = sandbox(base, "/sandbox/tokens", {"account_id": account, "scopes": ["crm"]})
    client.install_import("sandbox", account, issued["access_token"], issued["refresh_token"], 1800)
    return f"sandbox-{account}", issued


def test_get_token_and_force_refresh(server):
    client, base = server
    cid, issued = install(client, base, "py-1")
    token = client.get_token(cid)
    assert token.access_token == issued["access_token"]
    assert token.expires_in_seconds > 1700
    assert issued["access_token"] not in repr(token)
    fresh, refreshed = client.force_refresh(cid, rejected_version=token.version)
    assert refreshed and fresh.version == token.version + 1
    assert fresh.access_token != token.access_token
    again, refreshed = client.force_refresh(cid, rejected_version=token.version)
    assert not refreshed and again.access_token == fresh.access_token


def test_typed_errors(server):
    client, _ = server
    with pytest.raises(tokend.NotFound):
        client.get_token("py-missing")
    with pytest.raises(tokend.InvalidArgument) as e:
        client.get_token("not valid")
    assert e.value.field == "connection_id"


def test_watch_hears_reconnect_required(server):
    client, base = server
    cid, _ = install(client, base, "py-2")
    events = client.watch(cid)
    first = next(events)
    assert first.kind == "snapshot" and not first.reconnect_required
    sandbox(base, "/sandbox/revoke", {"account_id": "py-2"})
    with pytest.raises(tokend.ReconnectRequired) as e:
        client.force_refresh(cid)
    assert e.value.provider_error == "invalid_grant"
    assert e.value.cause == "REVOKED"
    event = next(e for e in events if e.kind == "status_changed")
    assert event.reconnect_required
    assert event.connection.last_error.code == "invalid_grant"


def test_endpoints_may_be_urls(server):
    """Issue 11: host:port and http://host:port both work."""
    assert tokend._target("http://h:1") == ("h:1", False)
    assert tokend._target("https://h:1/") == ("h:1", True)
    assert tokend._target("h:1") == ("h:1", False)
    url_client = tokend.Client("http://" + GRPC_TARGET[0])
    with pytest.raises(tokend.NotFound):
        url_client.get_token("not-there")
    url_client.close()
