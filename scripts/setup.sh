#!/usr/bin/env bash
# One idempotent setup for a fresh Debian 12 machine of this kind (run as root):
#   - Debian packages the build and tests need (the real node's among them:
#     libseccomp-dev to build runc, Debian's CNI plugins, nft for kube-proxy)
#   - the pinned Rust toolchain (rust-toolchain.toml) with rust-src, rustfmt, clippy
#   - bpf-linker built against that toolchain's own LLVM (no LLVM download)
# A second run checks each step and does nothing.
# NODEPULSE_SETUP_MINIMAL=1 (deploy/Dockerfile.agent's builder): only what
# building the binaries needs (protoc, the toolchain, bpf-linker).
set -euo pipefail
# Under pipefail a reader that stops early (head, grep -q) can kill the
# writer with SIGPIPE and fail the line: readers here read to the end.
cd "$(dirname "$0")/.."

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
[ -n "$TOOLCHAIN" ] || { echo "setup: no channel in rust-toolchain.toml" >&2; exit 1; }
TOOLS_ROOT=${NODEPULSE_TOOLS:-$HOME/.local/share/nodepulse}
LINKER_ROOT="$TOOLS_ROOT/bpf-linker-$TOOLCHAIN"
BPF_LINKER_VERSION=0.13.0

# --- Debian packages -----------------------------------------------------------
APT_PKGS=(protobuf-compiler)
if [ "${NODEPULSE_SETUP_MINIMAL:-0}" != 1 ]; then
  APT_PKGS+=(iproute2 util-linux procps libseccomp-dev containernetworking-plugins nftables conntrack)
fi
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust toolchain ----------------------------------------------------------
command -v rustup >/dev/null || { echo "setup: rustup not found; this machine kind ships it" >&2; exit 1; }
rustup set auto-self-update disable >/dev/null 2>&1 || true
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep '^rust-src' >/dev/null \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep '^clippy' >/dev/null \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep '^rustfmt' >/dev/null; then
  log "installing Rust $TOOLCHAIN"
  rustup toolchain install "$TOOLCHAIN" --profile minimal -c rust-src -c rustfmt -c clippy --no-self-update
fi

# --- bpf-linker against the toolchain's LLVM -------------------------------------
SYSROOT=$(rustup run "$TOOLCHAIN" rustc --print sysroot)
LIBLLVM=$(find "$SYSROOT/lib" -maxdepth 1 -name 'libLLVM.so.*' | sed -n 1p)
[ -n "$LIBLLVM" ] || { echo "setup: no libLLVM.so.* in $SYSROOT/lib" >&2; exit 1; }
LLVM_MAJOR=$(basename "$LIBLLVM" | sed -n 's/^libLLVM\.so\.\([0-9]*\).*/\1/p')
STAMP="$LINKER_ROOT/stamp"
WANT="bpf-linker=$BPF_LINKER_VERSION llvm=$(basename "$LIBLLVM")"
if [ ! -x "$LINKER_ROOT/bin/bpf-linker" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against $(basename "$LIBLLVM") (LLVM $LLVM_MAJOR)"
  mkdir -p "$LINKER_ROOT/llvm/lib"
  ln -sf "$LIBLLVM" "$LINKER_ROOT/llvm/lib/libLLVM.so"
  ln -sf "$LIBLLVM" "$LINKER_ROOT/llvm/lib/$(basename "$LIBLLVM")"
  features=(--no-default-features --features "llvm-$LLVM_MAJOR")
  LLVM_PREFIX="$LINKER_ROOT/llvm" rustup run "$TOOLCHAIN" cargo install bpf-linker \
    --version "$BPF_LINKER_VERSION" --locked --force --root "$LINKER_ROOT" "${features[@]}"
  echo "$WANT" > "$STAMP"
fi
# --- cargo-fuzz (the ingest fuzz target runs in scripts/test.sh) -------------------
CARGO_FUZZ_VERSION=0.13.2
if [ "${NODEPULSE_SETUP_MINIMAL:-0}" != 1 ] && ! cargo fuzz --version 2>/dev/null | grep "$CARGO_FUZZ_VERSION" >/dev/null; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  rustup run "$TOOLCHAIN" cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --force
fi

# xtask finds the linker here; printing it lets scripts put it on PATH too.
log "ready: Rust $TOOLCHAIN, bpf-linker at $LINKER_ROOT/bin"
