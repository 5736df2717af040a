#!/usr/bin/env bash
# Tests the package as a user gets it: build and `npm pack` the tarball,
# install it into a scratch project outside this folder (npm init + npm
# install ./tokend-client-X.Y.Z.tgz), check it loads by `require` and by
# `import`, then run the test suite there, importing "@tokend/client" from
# the scratch project's node_modules, against a live `tokend serve --sandbox`.
#
#   TOKEND_BIN=/abs/path/to/tokend bash scripts/test-installed.sh [test files...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

TOKEND_BIN="${TOKEND_BIN:-$here/../../target/debug/tokend}"
if [ ! -x "$TOKEND_BIN" ]; then
  echo "TOKEND_BIN=$TOKEND_BIN is not an executable: build it (cargo build --bin tokend) or set TOKEND_BIN" >&2
  exit 1
fi
export TOKEND_BIN="$(realpath "$TOKEND_BIN")"

echo "== npm pack (prepack builds dist/)"
rm -rf build
mkdir -p build
npm pack --silent --pack-destination build >/dev/null
tarball="$(ls "$here"/build/tokend-client-*.tgz)"
tar -tzf "$tarball" | sort | sed 's/^/  /'

echo "== compile the tests (types checked against the package's own exports)"
node node_modules/typescript/bin/tsc -p tsconfig.test.json

echo "== install $(basename "$tarball") into a scratch project"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/tokend-ts-scratch.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
npm init -y >/dev/null
# axios only for the tests of the axios interceptors (an optional peer dependency).
axios="axios@$(node -p 'require(process.argv[1]).devDependencies.axios' "$here/package.json")"
npm install --no-audit --no-fund --loglevel=error "$tarball" "$axios"
node -e 'const t = require("@tokend/client"); if (typeof t.Client !== "function") throw new Error("require gave no Client"); console.log("require(\"@tokend/client\"): ok")'
node --input-type=module -e 'import { Client } from "@tokend/client"; if (typeof Client !== "function") throw new Error("import gave no Client"); console.log("import \"@tokend/client\": ok")'
# What a user's install pulls in at run time: the two runtime dependencies, never axios.
node -e '
  const deps = Object.keys(require("@tokend/client/package.json").dependencies).sort().join(" ");
  if (deps !== "@bufbuild/protobuf @grpc/grpc-js") throw new Error("runtime dependencies: " + deps);'
if grep -rqE 'require\("axios"\)|from "axios"' node_modules/@tokend/client/dist; then
  echo "the package imports axios, an optional peer dependency" >&2
  exit 1
fi
cp -r "$here/build/test" "$scratch/test"

echo "== node --test against the installed package"
if [ "$#" -gt 0 ]; then
  files=()
  for f in "$@"; do files+=("test/$f"); done
else
  files=(test/)
fi
node --test --test-concurrency="${TEST_CONCURRENCY:-2}" "${files[@]}"
