// Builds dist/: tsc compiles src/ to CommonJS with declarations (dist/cjs),
// then dist/esm gets an ES module wrapper re-exporting the CommonJS build by
// name. One copy of the code serves `import` and `require`, so a class
// (TokendError, Client...) is the same object either way and `instanceof`
// holds across them. (The ts-proto stubs import each other without file
// extensions, which Node's ES module loader cannot resolve: a separate ES
// build would need importSuffix=.js in the root buf.gen.yaml.)

import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], {
  stdio: "inherit",
});
writeFileSync(join(dist, "cjs/package.json"), JSON.stringify({ type: "commonjs" }) + "\n");

const cjs = createRequire(import.meta.url)(join(dist, "cjs/index.js"));
const names = Object.keys(cjs)
  .filter((n) => n !== "__esModule" && n !== "default")
  .sort();
if (names.length === 0) throw new Error("dist/cjs/index.js exports nothing");
mkdirSync(join(dist, "esm"), { recursive: true });
writeFileSync(
  join(dist, "esm/index.mjs"),
  `// The ES module face of the CommonJS build (see scripts/build.mjs).\n` +
    `import cjs from "../cjs/index.js";\n\n` +
    `export const {\n${names.map((n) => `  ${n},\n`).join("")}} = cjs;\n`,
);
writeFileSync(join(dist, "esm/index.d.mts"), `export * from "../cjs/index.js";\n`);
console.log(`dist/cjs and dist/esm built: ${names.length} exports`);
