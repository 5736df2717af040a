#!/usr/bin/env bash
# CI of the TypeScript SDK (@tokend/client), from the repo root:
#   TOKEND_BIN=$PWD/target/debug/tokend bash clients/typescript/ci.sh
# Installs what is missing (Node.js, openssl, buf), `npm ci`, regenerates the
# ts-proto stubs with `buf generate` from the root and fails on drift, checks
# formatting, then builds and packs the package, installs the tarball into a
# scratch project and runs the test suite there against a live
# `tokend serve --sandbox` (scripts/test-installed.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$SECONDS

if [ -z "${TOKEND_BIN:-}" ]; then
  echo "TOKEND_BIN must name the tokend binary (absolute path), e.g. TOKEND_BIN=\$PWD/target/debug/tokend" >&2
  exit 1
fi
if [ ! -x "$TOKEND_BIN" ]; then
  echo "TOKEND_BIN=$TOKEND_BIN is not an executable: cargo build --bin tokend" >&2
  exit 1
fi

echo "== TypeScript SDK: tools"
apt_install() {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
command -v openssl >/dev/null || apt_install openssl   # the TLS tests make their certificates with it
command -v buf >/dev/null || python3 -m pip install --quiet --disable-pip-version-check buf-bin==1.75.0
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "Node.js $(node --version) is too old: the SDK needs 18 or later (global fetch)" >&2
  exit 1
fi
echo "node $(node --version), npm $(npm --version), buf $(buf --version), $(openssl version)"

echo "== npm ci"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

echo "== buf generate (root buf.gen.yaml, local ts-proto): no drift in src/gen"
(cd "$root" && buf generate)
git -C "$root" diff --exit-code -- clients/typescript/src/gen
if git -C "$root" status --porcelain -- clients/typescript/src/gen | grep .; then
  echo "stub drift: untracked generated files" >&2
  exit 1
fi

echo "== prettier --check"
(cd "$here" && npm run --silent format:check)

echo "== build, npm pack, install the tarball into a scratch project, test it there"
(cd "$here" && TOKEND_BIN="$TOKEND_BIN" bash scripts/test-installed.sh)

echo "== TypeScript SDK CI passed in $((SECONDS - started)) s"
