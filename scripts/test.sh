#!/usr/bin/env bash
# Sets up what the tests need (idempotent) and runs every test.
# As root (CI), tests that need root, BTF and cgroups must run: a missing
# capability fails them instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/upstream.sh >/dev/null
if [ "$(id -u)" = 0 ]; then
  export NODEPULSE_REQUIRE_PRIVILEGED=${NODEPULSE_REQUIRE_PRIVILEGED:-1}
fi
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
step "build the eBPF programs"
cargo xtask build-ebpf
step "rustfmt and clippy -D warnings (host and eBPF crates)"
cargo xtask lint
step "cargo test (unit, integration, real cgroups + eBPF, end to end on a real control plane)"
cargo test --workspace --exclude agent-ebpf --no-fail-fast

step "fuzz: decode + apply of agent reports (${FUZZ_SECONDS:=60} s, kept corpus)"
# Safe Rust: the fuzzer hunts panics, overflows (-a: debug assertions) and
# hangs, so no sanitizer runtime is needed; RUSTC_BOOTSTRAP lets the pinned
# stable toolchain take cargo-fuzz's instrumentation flags. New inputs go to
# a scratch copy, so the kept corpus only changes by hand.
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cp fuzz/corpus/decode_apply/* "$corpus/"
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_apply --sanitizer none -a "$corpus" \
  -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | tail -n 20)
