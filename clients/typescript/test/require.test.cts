// The package through `require` (CommonJS): it loads, it works against a live
// broker, and `import` gives the very same classes, so errors thrown by one
// are `instanceof` the other's (one copy of the code behind both).

import assert = require("node:assert/strict");
import { after, before, test } from "node:test";

import tokend = require("@tokend/client");

import type { Broker } from "./harness.mjs" with { "resolution-mode": "import" };

let broker: Broker;

before(async () => {
  const harness = await import("./harness.mjs");
  broker = await harness.Broker.start();
});
after(() => broker.close());

test("require('@tokend/client') works against a live broker", async () => {
  const client = broker.client();
  const { id, issued } = await broker.install(client, "cjs-1");
  const token = await broker.client().token(id);
  assert.equal(token.accessToken, issued.access_token);
  await assert.rejects(client.getToken("sandbox-cjs-missing"), tokend.NotFound);
});

test("import and require give the same classes", async () => {
  const esm = await import("@tokend/client");
  for (const name of Object.keys(tokend) as (keyof typeof tokend)[]) {
    assert.equal(esm[name], tokend[name], name);
  }
  assert.deepEqual(Object.keys(esm).sort(), Object.keys(tokend).sort());
  const viaRequire = new tokend.Client(broker.target);
  await assert.rejects(viaRequire.getToken("sandbox-cjs-missing"), esm.NotFound);
  viaRequire.close();
});
