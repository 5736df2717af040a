// The package through `import` in a native ES module (this file, compiled to
// .mjs): "@tokend/client" resolves to the ES module build (dist/esm, not a
// wrapper of the CommonJS one) and works against a live broker.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { Client, NotFound } from "@tokend/client";

import { Broker } from "./harness.mjs";

let broker: Broker;

before(async () => {
  broker = await Broker.start();
});
after(() => broker.close());

test("import resolves to the ES module build", () => {
  const entry = fileURLToPath(import.meta.resolve("@tokend/client"));
  assert.match(entry, /\/dist\/esm\/index\.js$/);
  const pkg = JSON.parse(readFileSync(join(dirname(entry), "package.json"), "utf8"));
  assert.equal(pkg.type, "module");
  const code = readFileSync(entry, "utf8");
  assert.match(code, /^export \{/m, "ES module syntax");
  assert.doesNotMatch(code, /require\(|\.\.\/cjs\//, "not a wrapper of the CommonJS build");
});

test("import { Client } from '@tokend/client' works against a live broker", async () => {
  const client = new Client(broker.target);
  try {
    const { id, issued } = await broker.install(client, "esm-1");
    const token = await client.getToken(id);
    assert.equal(token.accessToken, issued.access_token);
    await assert.rejects(client.getToken("sandbox-esm-missing"), NotFound);
  } finally {
    client.close();
  }
});
