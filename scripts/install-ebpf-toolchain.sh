#!/usr/bin/env bash
# Installs what `cargo xtask build-ebpf` needs, idempotently: Debian's rustc with a
# precompiled `core` for the BPF targets, LLVM 22, and bpf-linker built against it.
# Run as root (CI does). See docs/EBPF.md.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
PACKAGES=(rustc-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! "$cargo_bin/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    # The default feature wants LLVM 23; select 22 and point at Debian's LLVM.
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
        --no-default-features --features llvm-22
fi

/usr/bin/rustc --version
"$cargo_bin/bpf-linker" --version
