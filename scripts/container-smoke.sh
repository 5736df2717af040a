#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman, rootless and
# offline, and smoke-tests it: `tokend serve --sandbox` in the container,
# /readyz, one Install and one GetToken from the host's CLI, then a restart
# on the same volume that still serves the connection. Then the two-replica
# trial of deploy/compose with podman-compose: the fleet's key file, the
# migration, two replicas on one PostgreSQL; a connection installed through
# one replica is served by the other, and a refresh on either is seen by both.
#
# Offline means no registry for base images: the runtime base is a minimal
# Debian made here with mmdebstrap from the machine's own apt sources (cached
# in ~/.cache/tokend), and the image takes the release binary built outside
# (the Dockerfile's `prebuilt` target). Rootless means an unprivileged user
# runs podman; as root, the script makes one (`tokend-build`, with subuids).
#
#   scripts/container-smoke.sh            # the release binary (built first)
#   scripts/container-smoke.sh BINARY     # that binary (scripts/test: the debug one)
#   TOKEND_TEST_NO_INSTALL=1 ...          # installs nothing; a missing tool fails
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '== container: %s\n' "$*"; }
die() { printf 'container smoke FAILED: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
need=()
for tool in podman:podman podman-compose:podman-compose runc:runc newuidmap:uidmap mmdebstrap:mmdebstrap curl:curl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
  [[ -n ${TOKEND_TEST_NO_INSTALL:-} ]] && die "missing ${need[*]} (apt-get install ${need[*]})"
  sudo=(); ((EUID == 0)) || sudo=(sudo -n)
  say "installing ${need[*]}"
  "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null ||
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null; } ||
    die "could not install ${need[*]} (apt-get install ${need[*]})"
fi

# --- the binary --------------------------------------------------------------
if [[ -n ${1:-} ]]; then
  BIN=$(realpath "$1")
  [[ -x $BIN ]] || die "no tokend binary at $1"
else
  say "release binary"
  cargo build --release --locked --bin tokend --quiet
  BIN=$ROOT/target/release/tokend
fi

# --- who runs podman: never root ----------------------------------------------
if ((EUID == 0)); then
  BUILDER=tokend-build
  id "$BUILDER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$BUILDER"
  grep -q "^$BUILDER:" /etc/subuid || usermod --add-subuids 200000-265535 "$BUILDER"
  grep -q "^$BUILDER:" /etc/subgid || usermod --add-subgids 200000-265535 "$BUILDER"
  HOME_DIR=$(getent passwd "$BUILDER" | cut -d: -f6)
  as_builder() { runuser -u "$BUILDER" -- env HOME="$HOME_DIR" XDG_RUNTIME_DIR= "$@"; }
else
  HOME_DIR=$HOME
  as_builder() { "$@"; }
fi
WORK=$(mktemp -d)
chmod 0755 "$WORK"
# runc: Debian 12's crun refuses the hybrid cgroup layout some machines have.
# Through CONTAINERS_CONF, so that podman-compose's podman calls use it too.
printf '[engine]\nruntime = "runc"\n' >"$WORK/containers.conf"
chmod 0644 "$WORK/containers.conf"
export CONTAINERS_CONF=$WORK/containers.conf
podman_() { as_builder env CONTAINERS_CONF="$CONTAINERS_CONF" podman "$@"; }
compose_() {
  (cd "$WORK/compose" && as_builder env CONTAINERS_CONF="$CONTAINERS_CONF" \
    TOKEND_IMAGE=localhost/tokend:smoke POSTGRES_IMAGE=localhost/tokend-test-postgres:15 \
    podman-compose "$@")
}
cleanup() {
  podman_ rm -f tokend-smoke >/dev/null 2>&1 || true
  podman_ volume rm -f tokend-smoke-data >/dev/null 2>&1 || true
  [[ -d $WORK/compose ]] && compose_ down --volumes >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- the base image: minimal Debian from this machine's apt sources -----------
BASE=localhost/tokend-base:bookworm
if ! podman_ image exists "$BASE"; then
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tokend
  TARBALL=$CACHE/debian-bookworm-minbase.tar
  if [[ ! -f $TARBALL || ! -s $TARBALL ]]; then
    say "making the base image's root file system (mmdebstrap, about a minute)"
    rm -rf "$TARBALL" "$CACHE/partial.tar"
    mkdir -p "$CACHE"
    sources=/etc/apt/sources.list.d/debian.sources
    [[ -s $sources ]] || sources=/etc/apt/sources.list
    mmdebstrap --quiet --format=tar --variant=minbase --include=ca-certificates bookworm \
      "$CACHE/partial.tar" "$sources" || die "mmdebstrap could not make a Debian root file system"
    [[ -f $CACHE/partial.tar ]] || die "mmdebstrap made no tarball"
    mv "$CACHE/partial.tar" "$TARBALL"
  fi
  cp "$TARBALL" "$WORK/base.tar"
  chmod 0644 "$WORK/base.tar"
  podman_ import --quiet "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
fi

# --- the image, from the Dockerfile --------------------------------------------
say "podman build --target prebuilt (rootless as $(as_builder id -un))"
mkdir "$WORK/context"
cp "$ROOT/Dockerfile" "$WORK/context/"
cp "$BIN" "$WORK/context/tokend"
chmod -R a+rX "$WORK/context"
podman_ build --quiet --pull=never --target prebuilt --build-arg "RUNTIME_IMAGE=$BASE" \
  -t localhost/tokend:smoke -f "$WORK/context/Dockerfile" "$WORK/context" >/dev/null ||
  die "podman build failed"
user=$(podman_ image inspect --format '{{.Config.User}}' localhost/tokend:smoke)
[[ $user == tokend ]] || die "the image runs as '$user', not the unprivileged tokend user"

# --- serve, then one GetToken -------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port) SANDBOX=$(free_port) ADMIN=$(free_port)
# The config the image expects at /etc/tokend/tokend.toml, read-only; the
# sandbox provider needs nothing in it.
mkdir "$WORK/etc"
printf '# tokend.toml: providers and settings (docs/configuration.md)\n' >"$WORK/etc/tokend.toml"
chmod -R a+rX "$WORK/etc"
start() {
  podman_ run -d --name tokend-smoke --network host -v tokend-smoke-data:/var/lib/tokend \
    -v "$WORK/etc:/etc/tokend:ro" \
    -e TOKEND_LISTEN="127.0.0.1:$GRPC" -e TOKEND_ADMIN_LISTEN="127.0.0.1:$ADMIN" \
    localhost/tokend:smoke serve --sandbox --sandbox-listen "127.0.0.1:$SANDBOX" >/dev/null ||
    die "podman run failed"
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  podman_ logs tokend-smoke >&2 || true
  die "the container did not become ready on /readyz"
}
say "serve --sandbox in the container"
start
export TOKEND_ENDPOINT=http://127.0.0.1:$GRPC
CODE=$(curl -fsS -XPOST "http://127.0.0.1:$SANDBOX/sandbox/codes" -H 'content-type: application/json' \
  -d '{"account_id":"portal-123","scopes":["crm"]}' | sed 's/.*"code":"\([^"]*\)".*/\1/')
"$BIN" install --provider sandbox --code "$CODE" >/dev/null || die "Install against the container failed"
token=$("$BIN" token get sandbox-portal-123) || die "GetToken against the container failed"
[[ -n $token ]] || die "GetToken returned an empty token"

say "restart on the same volume"
podman_ stop --time 10 tokend-smoke >/dev/null
status=$(podman_ inspect --format '{{.State.ExitCode}}' tokend-smoke)
[[ $status == 0 ]] || die "tokend exited $status on SIGTERM"
podman_ rm tokend-smoke >/dev/null
start
again=$("$BIN" token get sandbox-portal-123) || die "GetToken after the restart failed"
[[ $again == "$token" ]] || die "after the restart the connection served a different token"
if podman_ logs tokend-smoke 2>&1 | grep -qF "$token"; then
  die "the access token appears in the container's log"
fi
podman_ rm -f tokend-smoke >/dev/null

# --- the two-replica trial (deploy/compose) ------------------------------------
say "compose trial: a stand-in postgres image (Debian's PostgreSQL on the base)"
podman_ build --quiet --pull=never --network host --build-arg "BASE=$BASE" \
  -t localhost/tokend-test-postgres:15 -f "$ROOT/tests/container/postgres.Containerfile" \
  "$ROOT/tests/container" >/dev/null || die "the stand-in postgres image did not build"
cp -r "$ROOT/deploy/compose" "$WORK/compose"
chmod -R a+rX "$WORK/compose"
# docs/replicas.md's steps (docker compose run --rm keys; up -d), one service at a
# time: podman-compose 1.0 does not wait on depends_on conditions.
say "compose trial: keys, postgres, migrate, sandbox, two replicas"
compose_ down --volumes >/dev/null 2>&1 || true
compose_ run --no-deps -T --rm keys >"$WORK/keys.log" 2>&1 || { cat "$WORK/keys.log" >&2; die "keys init failed"; }
grep -q "created /etc/tokend/keys/tokend.keys" "$WORK/keys.log" || { cat "$WORK/keys.log" >&2; die "keys init said nothing"; }
compose_ up -d --no-deps postgres >/dev/null 2>&1 || die "postgres did not start"
# migrate until PostgreSQL accepts it (a minute at most; the first start initdbs)
migrated=false
for _ in $(seq 60); do
  compose_ run --no-deps -T --rm migrate >"$WORK/migrate.log" 2>&1 && { migrated=true; break; }
  sleep 1
done
$migrated || { cat "$WORK/migrate.log" >&2; die "migrate failed"; }
compose_ up -d --no-deps sandbox tokend-a tokend-b >/dev/null 2>&1 || die "the replicas did not start"
A=http://127.0.0.1:50061 B=http://127.0.0.1:50062
export TOKEND_API_KEY=trial-key
up() { for _ in $(seq 150); do TOKEND_ENDPOINT=$1 "$BIN" connections list >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
up "$A" && up "$B" || { compose_ logs >&2 || true; die "the replicas did not answer"; }
CODE=$(curl -fsS -XPOST http://127.0.0.1:50052/sandbox/codes -H 'content-type: application/json' \
  -d '{"account_id":"portal-9","scopes":["crm"]}' | sed 's/.*"code":"\([^"]*\)".*/\1/')
TOKEND_ENDPOINT=$A "$BIN" install --provider sandbox --code "$CODE" >/dev/null || die "Install through replica a failed"
on_b=$(TOKEND_ENDPOINT=$B "$BIN" token get sandbox-portal-9) || die "replica b does not serve what a installed"
on_a=$(TOKEND_ENDPOINT=$A "$BIN" token get sandbox-portal-9) || die "GetToken on replica a failed"
[[ -n $on_b && $on_a == "$on_b" ]] || die "the replicas serve different tokens"
TOKEND_ENDPOINT=$B "$BIN" token refresh sandbox-portal-9 --rejected-version 1 >/dev/null || die "ForceRefresh on replica b failed"
fresh=""
for _ in $(seq 50); do
  fresh=$(TOKEND_ENDPOINT=$A "$BIN" token get sandbox-portal-9) || die "GetToken on replica a failed"
  [[ $fresh != "$on_a" ]] && break
  sleep 0.1
done
[[ $fresh != "$on_a" ]] || die "replica a still serves the token replica b replaced"
compose_ logs 2>/dev/null | grep -qF -e "$on_a" -e "$fresh" && die "a token appears in the trial's logs"
compose_ down --volumes >/dev/null 2>&1 || true

size=$(podman_ image inspect --format '{{.Size}}' localhost/tokend:smoke)
say "ok: image $((size / 1000000)) MB ($BIN), non-root, served GetToken, kept it across a restart; the compose trial's two replicas served one connection"
