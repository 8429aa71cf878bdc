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
step "deploy/: helm lint, the chart rendered against components.yaml, the manifests' invariants"
bash deploy/check.sh
step "cargo test (unit, integration, real cgroups + eBPF, end to end on a real control plane)"
cargo test --workspace --exclude agent-ebpf --no-fail-fast

# Every benchmark in a seconds-long smoke mode, so that none rots unnoticed
# (BENCHMARKS.md has the full-size commands and figures).
step "benchmarks, smoke mode (fleet with the soak, serve, build cost, binding, versus metrics-server, a real kubelet's read cost, xtask bench switch and agent)"
cargo bench -p aggregator-api --bench fleet -- --nodes 20 --interval 1 --rounds 2 \
  --warmup-rounds 1 --idle 1 --probes 4 --soak --abandoned 200 --slow 40 --recovery 2
cargo bench -p aggregator-api --bench serve -- --pods 1000 --rounds 1 --clients 2 --seconds 1
bash scripts/build-cost.sh --smoke HEAD
cargo build --release -p xtask
if [ "$(id -u)" = 0 ]; then
  cargo bench -p e2e --bench binding -- --nodes 20 --pods-per-node 5 --rounds 1
  cargo bench -p e2e --bench versus -- --nodes 20 --pods-per-node 5 --interval 1 \
    --seconds 2 --requests 3
  cargo bench -p e2e --bench kubelet_read -- --pods 2 --rounds 1 --seconds 1 --rate 5
  target/release/xtask bench switch --rounds 1 --ops 2000
  target/release/xtask bench agent --pods 3 --seconds 2
  target/release/xtask bench agent --pods 3 --seconds 2 --sources iterator \
    --baseline target/release/nodepulse-agent
fi

# Every fuzz target, a short run each (FUZZ_SECONDS, default 15) from its kept
# corpus: the decoders and parsers that take outside input. Safe Rust: the
# fuzzer hunts panics, overflows (-a: debug assertions) and hangs, so no
# sanitizer runtime is needed; RUSTC_BOOTSTRAP lets the pinned stable toolchain
# take cargo-fuzz's instrumentation flags. New inputs go to a scratch copy, so
# the kept corpora only change by hand.
FUZZ_TARGETS=(decode_apply selectors watch_request kubelet_metrics x509_subject)
step "fuzz: ${FUZZ_TARGETS[*]} (${FUZZ_SECONDS:=15} s each, kept corpora)"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none -a)
for target in "${FUZZ_TARGETS[@]}"; do
  mkdir -p "$scratch/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/"
  printf '%s: ' "$target" >&2
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --sanitizer none -a "$scratch/$target" \
    -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | grep -E 'stat::number_of_executed_units|ERROR|panicked' | tail -n 3) >&2
done
