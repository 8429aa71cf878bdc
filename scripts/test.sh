#!/usr/bin/env bash
# Sets up what the tests need (idempotent) and runs every test.
# As root (CI), tests that need root, BTF and cgroups must run: a missing
# capability fails them instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ]; then
  export NODEPULSE_REQUIRE_PRIVILEGED=${NODEPULSE_REQUIRE_PRIVILEGED:-1}
fi
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
step "build the eBPF programs"
cargo xtask build-ebpf
step "rustfmt and clippy -D warnings (host and eBPF crates)"
cargo xtask lint
step "cargo test (unit, integration, real cgroups + eBPF)"
cargo test --workspace --exclude agent-ebpf --no-fail-fast
