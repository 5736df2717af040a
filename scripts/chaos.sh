#!/usr/bin/env bash
# Crash test: SIGKILLs a real `tokend serve` under load, with the sandbox
# provider (its own process) in strict and in grace rotation, and checks
# that no grant is lost. Usage: scripts/chaos.sh --minutes N [--connections 200]
# [--callers 32] [--force-share 0.2] [--replicas 3 --store postgres] (replicas sharing a throwaway PostgreSQL cluster;
# needs Debian's postgresql server binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin tokend
cargo build --quiet -p tokend-chaos
export TOKEND_BIN="${TOKEND_BIN:-$PWD/target/debug/tokend}"
exec target/debug/tokend-chaos "$@"
