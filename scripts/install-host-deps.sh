#!/usr/bin/env bash
# Installs the Debian packages vaultpolicy needs (swtpm, TSS2 headers for tpm2-pytss, tpm2-tools for
# interop tests, e2fsprogs for ext4 images, systemd for systemd-analyze, which checks the example
# units, qemu and a static busybox to boot the kernel with quota support that the project-quota tests
# run under: tests/vm/harness.py). Only missing packages are installed, so a prepared machine does no
# network access.
set -euo pipefail
packages=(swtpm swtpm-tools libtss2-dev tpm2-tools e2fsprogs util-linux systemd pkg-config gcc python3-venv python3-dev
          qemu-system-x86 busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them first)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
