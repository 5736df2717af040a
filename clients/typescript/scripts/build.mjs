// Builds dist/ from src/ with tsc, twice: native ES modules with declarations
// in dist/esm (tsconfig.esm.json; a package.json there says "type":
// "module") and CommonJS with declarations in dist/cjs (tsconfig.json;
// "type": "commonjs"). package.json's `exports` sends `import` to the first
// and `require` to the second. Relative imports in src/ and in the ts-proto
// stubs end in `.js` (importSuffix=.js in the root buf.gen.yaml), which both
// loaders resolve. An error thrown by one build is `instanceof` the other's
// classes (TokendError's Symbol.hasInstance, src/errors.ts).

import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
const tsc = join(root, "node_modules/typescript/bin/tsc");
for (const [config, dir, type] of [
  ["tsconfig.esm.json", "esm", "module"],
  ["tsconfig.json", "cjs", "commonjs"],
]) {
  execFileSync(process.execPath, [tsc, "-p", join(root, config)], { stdio: "inherit" });
  writeFileSync(join(dist, dir, "package.json"), JSON.stringify({ type }) + "\n");
}

// Both builds load, and export the same names.
const names = (m) =>
  Object.keys(m)
    .filter((n) => n !== "__esModule" && n !== "default")
    .sort()
    .join(" ");
const cjs = names(createRequire(import.meta.url)(join(dist, "cjs/index.js")));
const esm = names(await import(pathToFileURL(join(dist, "esm/index.js")).href));
if (!cjs) throw new Error("dist/cjs/index.js exports nothing");
if (cjs !== esm) throw new Error(`dist/esm and dist/cjs export different names:\n  esm: ${esm}\n  cjs: ${cjs}`);
console.log(`dist/esm (ES modules) and dist/cjs (CommonJS) built: ${cjs.split(" ").length} exports each`);
