"""Test helpers: a live broker process, sandbox controls, broker metrics,
a local upstream that answers 401 to chosen tokens, and test certificates."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
BINARY = os.environ.get("TOKEND_BIN", str(ROOT / "target" / "debug" / "tokend"))

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """An account name no other test uses (sync and async tests share a broker)."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


class Broker:
    """One `tokend serve --sandbox` process on free loopback ports."""

    def __init__(
        self,
        binary: str,
        tmp: Path,
        *,
        grpc_port: int,
        http_port: int,
        admin_port: int,
        lifetime: int | None = None,
    ) -> None:
        self.binary = binary
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.admin_port = admin_port
        self.lifetime = lifetime
        self.config: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base(self) -> str:
        """The sandbox provider (and its upstream API, /api/me)."""
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self, text: str) -> None:
        self.config = self.tmp / "tokend.toml"
        self.config.write_text(text)

    def start(self) -> None:
        args = [
            self.binary,
            "serve",
            "--sandbox",
            "--listen",
            self.target,
            "--sandbox-listen",
            f"127.0.0.1:{self.http_port}",
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            "--data-dir",
            str(self.data_dir),
        ]
        if self.lifetime is not None:
            args += ["--sandbox-token-lifetime-secs", str(self.lifetime)]
        if self.config is not None:
            args += ["--config", str(self.config)]
        env = dict(os.environ, TOKEND_TEST_SANDBOX_SECRET="sandbox-secret")
        env.setdefault("RUST_LOG", "warn")
        self.starts += 1
        log = open(self.tmp / f"tokend-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.wait_ready()

    def log_tail(self) -> str:
        path = self.tmp / f"tokend-{self.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"tokend exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1
                ) as r:
                    if r.status == 200 and _port_open(self.grpc_port):
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"tokend not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_for: float = 0.3) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    # -- the sandbox provider ---------------------------------------------

    def sandbox(self, path: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path,
            data=data,
            headers={"content-type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else {}

    def mint(self, account: str) -> dict[str, Any]:
        """A grant minted at the sandbox, to install by token import."""
        issued: dict[str, Any] = self.sandbox(
            "/sandbox/tokens", {"account_id": account, "scopes": ["crm"]}
        )
        return issued

    def code(self, account: str) -> str:
        code: str = self.sandbox("/sandbox/codes", {"account_id": account, "scopes": ["crm"]})[
            "code"
        ]
        return code

    def revoke(self, account: str) -> None:
        self.sandbox("/sandbox/revoke", {"account_id": account})

    def fault(self, **fault: Any) -> None:
        self.sandbox("/sandbox/faults", fault)

    def clear_faults(self) -> None:
        self.sandbox("/sandbox/faults", method="DELETE")

    def provider_calls(self) -> int:
        """Token endpoint calls the sandbox provider has answered."""
        stats = self.sandbox("/sandbox/stats", method="GET")
        return int(stats["token_requests"])

    def api_me(self, access_token: str) -> int:
        request = urllib.request.Request(
            self.base + "/api/me", headers={"authorization": f"Bearer {access_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    # -- the broker's metrics ---------------------------------------------

    def rpc_count(self, method: str) -> int:
        """tokend_rpc_requests_total{method=...} summed over codes, as the
        broker counted them."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        pattern = re.compile(r"^tokend_rpc_requests_total\{([^}]*)\}\s+([0-9.eE+]+)")
        for line in text.splitlines():
            m = pattern.match(line)
            if m and f'method="{method}"' in m.group(1):
                total += float(m.group(2))
        return int(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Seen:
    method: str
    path: str
    token: str
    body: bytes


@dataclass
class Upstream:
    """A local HTTP API: 401 to every request carrying a token in
    `rejected` (or to every request with `reject_all`), 200 otherwise;
    records what it was sent."""

    rejected: set[str] = field(default_factory=set)
    reject_all: bool = False
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Upstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("authorization") or ""
                token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
                upstream.seen.append(Seen(self.command, self.path, token, body))
                status = 401 if upstream.reject_all or token in upstream.rejected else 200
                payload = b'{"ok": %s}' % (b"false" if status == 401 else b"true")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Certs:
    ca: bytes
    server_cert: Path
    server_key: Path
    ca_file: Path
    client_cert: bytes
    client_key: bytes
    other_client_cert: bytes
    other_client_key: bytes

    @property
    def client_cert_sha256(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.client_cert.decode())
        return hashlib.sha256(der).hexdigest()


def make_certs(d: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, and two client
    certificates signed by the CA (only the first is a known identity)."""

    def sh(*args: str) -> None:
        subprocess.run(args, cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
       "-subj", "/CN=tokend-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    leaves = {
        "server": "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        "client": "extendedKeyUsage=clientAuth\n",
        "other": "extendedKeyUsage=clientAuth\n",
    }
    for i, (name, ext) in enumerate(leaves.items()):
        (d / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext
        )
        sh("openssl", "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
           "-subj", f"/CN={name}")  # fmt: skip
        sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-set_serial", str(1000 + i), "-days", "2", "-out", f"{name}.pem",
           "-extfile", f"{name}.ext")  # fmt: skip
    return Certs(
        ca=(d / "ca.pem").read_bytes(),
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        ca_file=d / "ca.pem",
        client_cert=(d / "client.pem").read_bytes(),
        client_key=(d / "client.key").read_bytes(),
        other_client_cert=(d / "other.pem").read_bytes(),
        other_client_key=(d / "other.key").read_bytes(),
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# A client-credentials provider pointed at the sandbox, whose host is a
# per-connection param: exercises install with just provider +
# connection_id + params. A whole-host placeholder takes only listed values
# (a caller never chooses the domain a secret goes to).
REPORTS_PROVIDER = """
[providers.reports]
token_url = "http://{{host}}:{sandbox_port}/oauth/token"
param_values = {{ host = ["127.0.0.1"] }}
grant = "client_credentials"
scopes = ["reports.read"]
client_id = "sandbox-client"
client_secret_env = "TOKEND_TEST_SANDBOX_SECRET"
"""


def start_broker(tmp: Path, *, lifetime: int | None = None, config: str | None = None) -> Broker:
    broker = Broker(
        BINARY,
        tmp,
        grpc_port=free_port(),
        http_port=free_port(),
        admin_port=free_port(),
        lifetime=lifetime,
    )
    if config is not None:
        broker.write_config(config.format(sandbox_port=broker.http_port))
    broker.start()
    return broker
