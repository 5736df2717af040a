#!/usr/bin/env bash
# CI for the Python SDK, from the repo root:
#   TOKEND_BIN=/abs/path/to/tokend bash clients/python/ci.sh
# 1. tools (pinned) in a temporary venv;
# 2. the generated stubs regenerated into a temporary dir: any drift fails;
# 3. ruff (format + lint) and mypy --strict on the package;
# 4. the sdist and wheel built as a user would (python -m build);
# 5. the wheel installed into a fresh venv, and the tests run against the
#    INSTALLED package (not the source tree) and live `tokend serve --sandbox`
#    brokers that the tests start themselves.
# Nothing is written into the work tree.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
started=$SECONDS

: "${TOKEND_BIN:?set TOKEND_BIN to the absolute path of the tokend binary}"
case "$TOKEND_BIN" in /*) ;; *) echo "TOKEND_BIN must be an absolute path: $TOKEND_BIN" >&2; exit 1 ;; esac
[ -x "$TOKEND_BIN" ] || { echo "TOKEND_BIN=$TOKEND_BIN is not an executable" >&2; exit 1; }
export TOKEND_BIN

apt_install() {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v openssl >/dev/null || apt_install openssl   # the TLS tests make certificates
py=${PYTHON:-python3}
command -v "$py" >/dev/null || apt_install python3 python3-venv python3-pip
"$py" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
"$py" -c 'import sys; assert sys.version_info >= (3, 10), sys.version'
step() { echo "== [$((SECONDS - started)) s] $*"; }
step "python: $("$py" --version), tokend: $TOKEND_BIN"

work=$(mktemp -d "${TMPDIR:-/tmp}/tokend-py-ci.XXXXXX")
trap 'rc=$?; rm -rf "$work"; echo "== python SDK CI: $((SECONDS - started)) s in all, exit $rc"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1

# Fails when a venv holds a package that `file` does not pin exactly.
check_pinned() {
  "$1/bin/python" - "$2" <<'EOF'
import re, subprocess, sys
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
pins = {}
def read(path):
    for line in open(path):
        line = line.split("#")[0].split(";")[0].strip()
        if line.startswith("-r "):
            read(path.rsplit("/", 1)[0] + "/" + line[3:].strip())
        elif "==" in line:
            name, version = line.split("==")
            pins[norm(name)] = version.strip()
read(sys.argv[1])
frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
bad = []
for line in frozen.splitlines():
    if "==" not in line:
        continue
    name, version = line.split("==")
    if norm(name) == "tokend-client":
        continue
    if pins.get(norm(name)) != version:
        bad.append(f"{name}=={version} (pinned: {pins.get(norm(name), 'no')})")
if bad:
    sys.exit("not pinned in " + sys.argv[1] + ": " + ", ".join(bad))
EOF
}

step "tools venv (requirements-dev.txt)"
"$py" -m venv "$work/tools"
"$work/tools/bin/pip" install -q -r "$here/requirements-dev.txt"
check_pinned "$work/tools" "$here/requirements-dev.txt"

step "generated stubs: regenerate, compare"
PYTHON="$work/tools/bin/python" "$here/generate.sh" "$work/gen"
if ! diff -r -x __pycache__ "$work/gen" "$here/tokend_client/_gen"; then
  echo "stub drift: run clients/python/generate.sh (grpcio-tools from requirements-dev.txt) and commit" >&2
  exit 1
fi

step "ruff format --check, ruff check, mypy --strict"
(cd "$here" && "$work/tools/bin/ruff" format --no-cache --check tokend_client tests)
(cd "$here" && "$work/tools/bin/ruff" check --no-cache tokend_client tests)
(cd "$here" && "$work/tools/bin/mypy" --cache-dir "$work/mypy" tokend_client)

step "build the sdist and the wheel (python -m build)"
# --no-isolation: the pinned hatchling of the tools venv, nothing unpinned fetched.
"$work/tools/bin/python" -m build --no-isolation --outdir "$work/dist" "$here" >"$work/build.log" \
  || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/tokend_client-*.whl)
ls -l "$work/dist"

step "install the wheel into a fresh venv"
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install -q -r "$here/requirements-test.txt" "${wheel}[httpx,requests]"
check_pinned "$work/venv" "$here/requirements-test.txt"
"$work/venv/bin/python" -c 'import tokend_client, sys; print("installed:", tokend_client.__file__)'

step "tests against the installed wheel and live brokers"
# Run from the temporary dir, so the source tree is not importable; the
# conftest also fails the run if tokend_client came from the source tree.
(cd "$work" && TOKEND_CLIENT_EXPECT_INSTALLED=1 "$work/venv/bin/python" -m pytest \
  -c "$here/pyproject.toml" --rootdir "$here" -p no:cacheprovider -q "$here/tests")

