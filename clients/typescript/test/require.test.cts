// The package through `require` (CommonJS): it resolves to dist/cjs, works
// against a live broker, and `import` (dist/esm, a separate native ES module
// build) exports the same names; errors thrown by either build are
// `instanceof` the other's classes.

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

test("require resolves to the CommonJS build", () => {
  assert.match(require.resolve("@tokend/client"), /\/dist\/cjs\/index\.js$/);
});

test("import and require: the same names, and errors of one are instanceof the other's classes", async () => {
  const esm = await import("@tokend/client");
  assert.deepEqual(Object.keys(esm).sort(), Object.keys(tokend).sort());
  assert.notEqual(esm.Client, tokend.Client, "two builds, not one re-exported");
  const viaRequire = new tokend.Client(broker.target);
  await assert.rejects(viaRequire.getToken("sandbox-cjs-missing"), esm.NotFound);
  await assert.rejects(viaRequire.getToken("sandbox-cjs-missing"), esm.TokendError);
  viaRequire.close();
  const viaImport = new esm.Client(broker.target);
  await assert.rejects(viaImport.getToken("sandbox-cjs-missing"), tokend.NotFound);
  await assert.rejects(viaImport.getToken("not valid"), (e: unknown) => {
    assert.ok(e instanceof tokend.InvalidArgument && !(e instanceof tokend.NotFound));
    return true;
  });
  viaImport.close();
  // Not every object passes: the check is by class lineage, not by shape.
  assert.ok(!(new Error("x") instanceof tokend.TokendError));
  assert.ok(!({ name: "NotFound" } instanceof esm.NotFound));
});
