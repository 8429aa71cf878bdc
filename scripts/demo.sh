#!/usr/bin/env bash
# Sets up (idempotent), builds, and runs the local demo. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/upstream.sh >/dev/null
cargo xtask build-ebpf
exec cargo xtask demo "$@"
