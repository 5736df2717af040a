#!/usr/bin/env bash
# Crash and fault test: strikes a real `tokend serve` under load, with the
# sandbox provider (its own process), and checks that no grant is lost.
# Usage:
#   scripts/chaos.sh --minutes N [--connections 200]        SIGKILL, strict and grace rotation
#   scripts/chaos.sh --minutes N --replicas 3 --store postgres
#                    (replicas sharing a throwaway PostgreSQL cluster; needs
#                    Debian's postgresql server binaries)
#   scripts/chaos.sh --fault matrix --duration 60s           every fault below, 60 s each
#   scripts/chaos.sh --fault lost-hang|lost-504|lost-reset|slow-provider|pg-stop|
#                    pg-partition|sled-stall|clock-step|restart --duration 60s
#                    [--rotation strict|grace|both]
#   [--callers 32] [--force-share 0.2]   the load: concurrent callers, share of ForceRefresh
# clock-step builds a small LD_PRELOAD library with `cc`. See RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin tokend
cargo build --quiet -p tokend-chaos
export TOKEND_BIN="${TOKEND_BIN:-$PWD/target/debug/tokend}"
exec target/debug/tokend-chaos "$@"
