#!/usr/bin/env bash
# Sets up (idempotent), builds, and runs the local demo. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (real cgroups, a network namespace, eBPF); try: sudo $0" >&2; exit 1; }
bash scripts/setup.sh
bash scripts/upstream.sh >/dev/null
cargo xtask build-ebpf
exec cargo xtask demo "$@"
