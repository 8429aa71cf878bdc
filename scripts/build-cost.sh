#!/usr/bin/env bash
# What building the workspace costs, per revision: clean release build time
# of each binary alone and of the whole workspace, and the binaries' sizes
# (as built, and stripped). Each revision is built in a worktree of its own
# with its own target directory, so nothing is shared between runs but the
# downloaded crates. Run it on an otherwise idle machine; it prints a
# Markdown table.
#
#   scripts/build-cost.sh REV [REV...]   # e.g. b90c55e HEAD (~10 min each on 2 cores)
#   scripts/build-cost.sh --smoke REV    # CI: one tiny crate, to keep the script working
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
if [ "${1:-}" = --smoke ]; then
  smoke=true
  shift
fi
[ $# -gt 0 ] || { echo "usage: $0 [--smoke] REV [REV...]" >&2; exit 2; }
repo=$PWD
# The agent embeds the eBPF object; every revision gets this checkout's, so
# its build time is not part of what is compared.
export AGENT_EBPF_OBJECT="$repo/target/bpf/bpfel-unknown-none/release/agent-ebpf"
[ -f "$AGENT_EBPF_OBJECT" ] || AGENT_EBPF_OBJECT=/dev/null

scratch=$(mktemp -d)
cleanup() {
  for wt in "$scratch"/*/; do
    [ -d "$wt" ] && git -C "$repo" worktree remove --force "$wt" >/dev/null 2>&1 || true
  done
  rm -rf "$scratch"
  git -C "$repo" worktree prune
}
trap cleanup EXIT

seconds() { # seconds <label> <cargo build args...>: one clean build, timed
  local label=$1
  shift
  rm -rf target
  printf '  %s: building...' "$label" >&2
  local start end
  start=$(date +%s.%N)
  cargo build -q --release --locked "$@"
  end=$(date +%s.%N)
  local took
  took=$(echo "$end - $start" | bc)
  printf ' %.0f s\n' "$took" >&2
  printf '%.0f' "$took"
}

size() { # size <binary>: "<MB as built> / <MB stripped>"
  strip -o "$scratch/stripped" "$1"
  printf '%.1f / %.1f' "$(echo "$(stat -c %s "$1") / 1000000" | bc -l)" \
    "$(echo "$(stat -c %s "$scratch/stripped") / 1000000" | bc -l)"
}

rows=()
for rev in "$@"; do
  commit=$(git rev-parse --short "$rev")
  wt="$scratch/$commit"
  git worktree add -f --detach "$wt" "$commit" >/dev/null
  echo "$commit:" >&2
  (cd "$wt" && cargo fetch -q --locked)
  if $smoke; then
    t=$(cd "$wt" && seconds "agent-common" -p agent-common)
    rows+=("| $commit | agent-common: $t s |")
    continue
  fi
  agent=$(cd "$wt" && seconds "nodepulse-agent alone" -p agent --bin nodepulse-agent)
  aggregator=$(cd "$wt" && seconds "nodepulse-aggregator alone" -p aggregator-api --bin nodepulse-aggregator)
  workspace=$(cd "$wt" && seconds "the workspace" --workspace)
  rows+=("| $commit | $agent | $aggregator | $workspace | $(size "$wt/target/release/nodepulse-agent") | $(size "$wt/target/release/nodepulse-aggregator") |")
done

if $smoke; then
  echo "| revision | clean release build |"
  echo "|---|---|"
else
  echo "| revision | nodepulse-agent alone (s) | nodepulse-aggregator alone (s) | workspace (s) | agent MB (built / stripped) | aggregator MB (built / stripped) |"
  echo "|---|---|---|---|---|---|"
fi
printf '%s\n' "${rows[@]}"
