#!/usr/bin/env bash
# Runs the README's grpcurl walkthrough against a real `tokend serve --sandbox`
# and checks each answer. Needs grpcurl and curl; uses reflection only.
# Usage: scripts/walkthrough.sh [path/to/tokend]
set -euo pipefail
bin=${1:-target/debug/tokend}
grpc=127.0.0.1:${WALKTHROUGH_GRPC_PORT:-27051}
http=127.0.0.1:${WALKTHROUGH_HTTP_PORT:-27052}
work=$(mktemp -d)
"$bin" serve --sandbox --listen "$grpc" --sandbox-listen "$http" --data-dir "$work/data" >"$work/serve.log" 2>&1 &
pid=$!
watcher=
example_pid=
cleanup() {
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
  [ -n "$example_pid" ] && kill "$example_pid" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "walkthrough FAILED: $*" >&2; echo "--- server log" >&2; cat "$work/serve.log" >&2; exit 1; }
expect() { grep -q -- "$2" <<<"$1" || fail "expected '$2' in: $1"; }

for _ in $(seq 1 100); do
  grpcurl -plaintext "$grpc" list >/dev/null 2>&1 && break
  sleep 0.1
done
out=$(grpcurl -plaintext "$grpc" list);                                   expect "$out" tokend.v1.TokenService
expect "$out" grpc.health.v1.Health
out=$(grpcurl -plaintext "$grpc" describe tokend.v1.TokenService);        expect "$out" "rpc GetToken"
out=$(grpcurl -plaintext -d '{"service":""}' "$grpc" grpc.health.v1.Health/Check); expect "$out" SERVING

code=$(curl -sf -XPOST "$http/sandbox/codes" -H 'content-type: application/json' \
  -d '{"account_id":"portal-123","scopes":["crm.objects.contacts.read"]}' | sed 's/.*"code":"\([^"]*\)".*/\1/')
out=$(grpcurl -plaintext -d "{\"provider\":\"sandbox\",\"authorization_code\":{\"code\":\"$code\"}}" "$grpc" tokend.v1.TokenService/Install)
expect "$out" '"connectionId": "sandbox-portal-123"'
out=$(grpcurl -plaintext -d '{"connection_id":"sandbox-portal-123"}' "$grpc" tokend.v1.TokenService/GetToken)
expect "$out" '"accessToken": "sbx_at_'
expect "$out" '"version": "1"'

grpcurl -plaintext -d '{"connection_id":"sandbox-portal-123"}' "$grpc" tokend.v1.TokenService/WatchConnection >"$work/watch.out" 2>&1 &
watcher=$!
# The Rust watcher example reacts to the same revocation.
example="$(dirname "$bin")/examples/watcher"
TOKEND_ENDPOINT="http://$grpc" "$example" sandbox-portal-123 >"$work/example.out" 2>&1 &
example_pid=$!
for _ in $(seq 1 50); do grep -q SNAPSHOT "$work/watch.out" && break; sleep 0.1; done
grep -q SNAPSHOT "$work/watch.out" || fail "watcher saw no snapshot: $(cat "$work/watch.out")"

out=$(grpcurl -plaintext -d '{"connection_id":"sandbox-portal-123","rejected_version":"1"}' "$grpc" tokend.v1.TokenService/ForceRefresh)
expect "$out" '"refreshed": true'
expect "$out" '"version": "2"'

curl -sf -XPOST "$http/sandbox/revoke" -H 'content-type: application/json' -d '{"account_id":"portal-123"}'
out=$(grpcurl -plaintext -d '{"connection_id":"sandbox-portal-123","rejected_version":"2"}' "$grpc" tokend.v1.TokenService/ForceRefresh 2>&1 || true)
expect "$out" FailedPrecondition
expect "$out" RECONNECT_REQUIRED
expect "$out" REVOKED
expect "$out" invalid_grant
for _ in $(seq 1 50); do grep -q RECONNECT_REQUIRED "$work/watch.out" && break; sleep 0.1; done
grep -q WATCH_EVENT_TYPE_TOKEN_ROTATED "$work/watch.out" || fail "watcher missed TOKEN_ROTATED: $(cat "$work/watch.out")"
grep -q CONNECTION_STATUS_RECONNECT_REQUIRED "$work/watch.out" || fail "watcher missed RECONNECT_REQUIRED: $(cat "$work/watch.out")"
for _ in $(seq 1 50); do kill -0 "$example_pid" 2>/dev/null || break; sleep 0.1; done
wait "$example_pid" || fail "the watcher example failed: $(cat "$work/example.out")"
grep -q "RECONNECT_REQUIRED sandbox-portal-123: invalid_grant" "$work/example.out" || fail "the watcher example missed it: $(cat "$work/example.out")"

# The CLI, against the same server.
out=$("$bin" connections list --endpoint "http://$grpc" --status reconnect-required --json)
expect "$out" '"connectionId":"sandbox-portal-123"'
expect "$out" '"reconnectCause":"RECONNECT_CAUSE_REVOKED"'
out=$("$bin" token get sandbox-portal-123 --endpoint "http://$grpc" 2>&1 || true)
expect "$out" "requires reconnecting"

out=$(grpcurl -plaintext -d '{"status":"CONNECTION_STATUS_RECONNECT_REQUIRED"}' "$grpc" tokend.v1.TokenService/ListConnections)
expect "$out" sandbox-portal-123
out=$(grpcurl -plaintext -d '{"connection_id":"nope"}' "$grpc" tokend.v1.TokenService/GetToken 2>&1 || true)
expect "$out" NotFound
expect "$out" CONNECTION_NOT_FOUND

# Encryption keys: created on first start (0600); rotation is applied online.
[ "$(stat -c %a "$work/data/tokend.keys")" = 600 ] || fail "key file is not 0600"
out=$("$bin" keys rotate --data-dir "$work/data");                         expect "$out" "key 2 is now active"
for _ in $(seq 1 100); do grep -q "old keys can be retired" "$work/serve.log" && break; sleep 0.1; done
grep -q "old keys can be retired" "$work/serve.log" || fail "the running server did not re-encrypt after rotation"
for _ in $(seq 1 50); do grep -q '"active": 2' "$work/data/tokend.keys.usage" 2>/dev/null && break; sleep 0.1; done
out=$("$bin" keys retire 2 --data-dir "$work/data" 2>&1 || true);          expect "$out" "active key"
out=$("$bin" keys retire 1 --data-dir "$work/data");                       expect "$out" "key 1 retired"
out=$(grpcurl -plaintext -d '{"connection_id":"sandbox-portal-123"}' "$grpc" tokend.v1.TokenService/GetConnection)
expect "$out" '"connectionId": "sandbox-portal-123"'

# Graceful shutdown on SIGTERM: exits 0 and says so.
kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "tokend did not stop within 10 s of SIGTERM"
rc=0; wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || fail "tokend exited with $rc after SIGTERM"
grep -q "tokend stopped" "$work/serve.log" || fail "no clean-stop line in the log"
wait "$watcher" 2>/dev/null || true
watcher=
example_pid=

# No secret in the server's log.
if grep -q 'sbx_at_\|sbx_rt_\|sbx_code_\|sandbox-secret' "$work/serve.log"; then fail "a secret reached the log"; fi
echo "walkthrough OK: every README step answered as documented"
