#!/usr/bin/env bash
# Installs what the arm64 build of the agent needs, idempotently, on a Debian 12 amd64
# machine: Debian's rustc 1.96 (rustc-web, the same compiler the eBPF build uses) with
# its standard library for aarch64 from the arm64 architecture, and the GNU cross
# linker, which is also the C compiler of the crates that build C (ring). rustup cannot
# add the target here. With --vm, also what `cargo xtask vm-test-arm64` boots: QEMU for
# arm64 and a static busybox for the guest's userland. Run as root (CI does). See
# deploy/README.md.
set -euo pipefail

PACKAGES=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if [ "${1:-}" = "--vm" ]; then
    PACKAGES+=(qemu-system-arm)
fi

# The arm64 packages come from the same archive as the host's, through multiarch.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get -o DPkg::Lock::Timeout=600 update
    # The arm64 standard library must be the host compiler's own version: pin it to
    # the installed (or about to be installed) rustc-web's.
    version=$(apt-cache policy rustc-web | awk '/Installed:/ && $2 != "(none)" {print $2}')
    [ -n "$version" ] || version=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
    pinned=()
    for pkg in "${missing[@]}"; do
        case "$pkg" in
            rustc-web | libstd-rust-web-dev:arm64) pinned+=("$pkg=$version") ;;
            *) pinned+=("$pkg") ;;
        esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${pinned[@]}"
fi

/usr/bin/rustc --version
ls -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib
aarch64-linux-gnu-gcc --version | head -1
