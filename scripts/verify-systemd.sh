#!/usr/bin/env bash
# Checks deploy/systemd/tokend.service with `systemd-analyze verify`,
# against the freshly built binary (the unit names /usr/local/bin/tokend).
# Usage: scripts/verify-systemd.sh path/to/tokend
set -euo pipefail
bin=$(realpath "${1:?usage: $0 path/to/tokend}")
root=$(cd "$(dirname "$0")/.." && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#/usr/local/bin/tokend#$bin#g" "$root/deploy/systemd/tokend.service" >"$work/tokend.service"
systemd-analyze verify "$work/tokend.service"
echo "systemd unit OK"
