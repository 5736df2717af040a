// A broker with [tls], client certificates and [[identities]]: an API key
// (authorization: Bearer) over TLS, mutual TLS with a client certificate,
// UNAUTHENTICATED / PERMISSION_DENIED as typed errors, and a client-credentials
// install (just a provider and a connection id). Certificates come from
// openssl, which must be installed (ci.sh installs it).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Client, PermissionDenied, TransportError, Unauthenticated } from "@tokend/client";

import { Broker } from "./harness.mjs";

const API_KEY = "tk_test_billing_0123456789";
let dir: string;
let broker: Broker;
let pki: { ca: Buffer; cert: Buffer; key: Buffer };
// The server certificate also names localhost: SNI takes no IP address.
let TLS: { ca: Buffer; serverName: string };

function openssl(...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "tokend-ts-pki-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tokend test CA");
  for (const [name, subject, ext] of [
    ["server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"],
    ["client", "/CN=onboarding", "extendedKeyUsage=clientAuth"],
  ]) {
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    openssl("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject);
    openssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    );
  }
  const read = (f: string) => readFileSync(join(dir, f));
  pki = { ca: read("ca.pem"), cert: read("client.pem"), key: read("client.key") };
  TLS = { ca: pki.ca, serverName: "localhost" };
  const certSha = createHash("sha256").update(new X509Certificate(pki.cert).raw).digest("hex");
  const keySha = createHash("sha256").update(API_KEY).digest("hex");
  broker = await Broker.start({
    env: { CC_CLIENT_SECRET: "sandbox-secret" },
    config: (sandbox) => `
[tls]
cert_file = "${join(dir, "server.pem")}"
key_file = "${join(dir, "server.key")}"
client_ca_file = "${join(dir, "ca.pem")}"

[[identities]]
name = "billing"
api_key_sha256 = "${keySha}"
grants = [{ permissions = ["tokens", "install"], connections = ["sandbox-key-*"] }]

[[identities]]
name = "onboarding"
cert_sha256 = "${certSha}"
grants = [{ permissions = ["install", "tokens", "admin"], connections = ["*"] }]

[providers.reports]
token_url = "${sandbox}/oauth/token"
grant = "client_credentials"
scopes = ["reports.read"]
client_id = "sandbox-client"
client_secret_env = "CC_CLIENT_SECRET"
`,
  });
});
after(async () => {
  await broker?.close();
  rmSync(dir, { recursive: true, force: true });
});

test("an API key over TLS: authorization: Bearer, within its grants", async () => {
  const client = broker.client({ apiKey: API_KEY, tls: TLS }, `https://${broker.target}`);
  const { id, issued } = await broker.install(client, "key-1");
  assert.equal(id, "sandbox-key-1");
  assert.equal((await client.token(id)).accessToken, issued.access_token);
  await assert.rejects(
    client.getToken("sandbox-other"),
    (e: unknown) => e instanceof PermissionDenied && e.codeName === "PERMISSION_DENIED",
  );
  for await (const c of client.listConnections()) {
    assert.ok(c.connectionId.startsWith("sandbox-key-"), `${c.connectionId} is not within the key's grants`);
  }
});

test("a wrong or missing credential is Unauthenticated", async () => {
  const wrong = broker.client({ apiKey: "tk_wrong", tls: TLS }, `https://${broker.target}`);
  await assert.rejects(wrong.getToken("sandbox-key-1"), Unauthenticated);
  const none = broker.client({ tls: TLS });
  await assert.rejects(none.getToken("sandbox-key-1"), Unauthenticated);
});

test("mutual TLS: the client certificate is the identity", async () => {
  const client = broker.client({ tls: { ...TLS, cert: pki.cert, key: pki.key } });
  const all = [];
  for await (const c of client.listConnections()) all.push(c.connectionId);
  assert.ok(all.includes("sandbox-key-1"));
  assert.throws(() => new Client(broker.target, { tls: { cert: pki.cert } }), TypeError);
});

test("a client-credentials connection installs with just a provider and a connection id", async () => {
  const client = broker.client({ tls: { ...TLS, cert: pki.cert, key: pki.key } });
  const { connection, created } = await client.install({ provider: "reports", connectionId: "reports-svc" });
  assert.equal(created, true);
  assert.equal(connection.connectionId, "reports-svc");
  assert.equal(connection.provider, "reports");
  assert.equal(connection.status, "ACTIVE");
  const t = await client.token("reports-svc");
  assert.ok(t.accessToken.length > 0);
  assert.equal(t.connectionId, "reports-svc");
});

test("a plaintext client cannot talk to the TLS listener", async () => {
  const plain = broker.client({ timeoutMs: 2_000, transportRetries: 1 });
  await assert.rejects(plain.getToken("sandbox-key-1"), TransportError);
});
