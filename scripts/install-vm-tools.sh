#!/usr/bin/env bash
# Installs what `cargo xtask vm-test` needs, idempotently, into a venv beside the
# workspace's build output (its path is the first argument; the runner passes
# target/vm/venv): bookworm's QEMU for x86-64, for its libraries and firmware (the
# emulator run is bookworm-backports' newer one, which xtask/src/vm/kernels.rs
# fetches and unpacks beside the kernels), virtme-ng from PyPI,
# depmod (kmod), which vng runs on the kernel's modules, and a static busybox
# (busybox-static), the userland of the initramfs vng builds to load those modules
# (Debian's kernels have 9p and virtio as modules). udev is deliberately
# not needed: with udevd in the host's root filesystem the guest waits for udev to
# settle (over a minute under TCG on a loaded host); without it vng runs the
# command on the console, and the runner reads results from a shared folder.
# Run as root (CI does). See docs/EBPF.md, "Kernels in VMs".
set -euo pipefail

VIRTME_NG_VERSION=1.42
VENV=${1:?usage: install-vm-tools.sh VENV_DIR}
PACKAGES=(qemu-system-x86 kmod busybox-static python3-venv)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi

if ! "$VENV/bin/vng" --version 2>/dev/null | grep -qx "virtme-ng $VIRTME_NG_VERSION"; then
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "virtme-ng==$VIRTME_NG_VERSION"
fi

qemu-system-x86_64 --version | head -n 1
"$VENV/bin/vng" --version
