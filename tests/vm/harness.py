"""Boot a real Debian kernel under qemu and run one command in it, for the tests that need kernel
features the host's kernel lacks (ext4 project quotas: the development and CI kernels are built
without quota support).

Nothing is installed into the host system:

- `fetch()` (`make vmkernel`, which `make test` runs) downloads the Debian package of the kernel that
  `linux-image-amd64` depends on now with `apt-get download` and unpacks it with `dpkg -x` into
  `.cache/vmkernel/<package version>/` under the repository, then writes a modules.dep for it with
  busybox's depmod. Idempotent: an unpacked kernel is used as it is (also when the archive has moved
  on to a newer one and apt cannot answer).
- `run(script)` builds a busybox initramfs (a few KiB of init script, the static busybox, and the
  modules needed to reach the host: virtio, 9p, overlay), and boots the kernel with KVM when
  /dev/kvm opens, else with TCG. A KVM guest that prints nothing within 15 s (a nested KVM that
  hangs, as on the development machine) is killed and booted again with TCG, and a marker in the
  cache makes later boots on that host kernel go to TCG at once. `VAULTPOLICY_VM_ACCEL=tcg` (or `kvm`)
  chooses for every boot. The guest mounts the host's root filesystem read-only over virtio
  9p, puts a tmpfs over it with overlayfs (writes stay in the guest), loads the modules the tests need
  (ext4, loop, the quota format, the fscrypt ciphers) from the unpacked package, and runs `script`
  with /bin/sh in that root. The host's /work, the repository and its virtualenv are where they are on
  the host, so the same python and the same code run inside. The script's output and exit code come
  back through a second, writable 9p share; the console log is kept for when the boot itself fails.

`python tests/vm/harness.py fetch` fetches; `python tests/vm/harness.py run 'uname -r'` boots and runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "vmkernel"
META_PACKAGE = "linux-image-amd64"
BUSYBOX = "/bin/busybox"  # busybox-static: it runs in the initramfs, before any library is reachable
# loaded before the host's root is mounted (from the initramfs), in this order of their dependencies
BOOT_MODULES = ("virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "9pnet",
                "9pnet_virtio", "fscache", "netfs", "9p", "overlay")
# loaded from the host's copy once it is mounted: what the tests use (ext4 with its internal quota
# files, loop images, fscrypt's AES-XTS/CTS and Adiantum, and the HKDF hash)
TEST_MODULES = ("ext4", "loop", "quota_v2", "ecb", "xts", "cts", "sha512_generic", "crc32c_generic", "adiantum",
                "nhpoly1305", "chacha_generic", "poly1305_generic")


class VmUnavailable(Exception):
    """The guest cannot be booted here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Kernel:
    root: Path  # the unpacked package
    release: str  # `uname -r` of the guest

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    output: str
    console: str
    seconds: float
    accelerator: str


def _wanted_package() -> str | None:
    """The kernel package `linux-image-amd64` depends on, as apt knows it now."""
    try:
        out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return None
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", out)
    return match.group(1) if match else None


def _cached() -> list[Kernel]:
    kernels = []
    for ready in sorted(CACHE.glob("*/ready")):
        kernels.append(Kernel(ready.parent, ready.read_text().strip()))
    return kernels


def fetch() -> Kernel:
    """The unpacked guest kernel, downloaded and unpacked first when it is not in the cache."""
    package = _wanted_package()
    if package is None and not _cached() and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)  # a clean machine's apt has no lists yet
        package = _wanted_package()
    if package is None:
        if _cached():
            return _cached()[-1]
        raise VmUnavailable(f"apt knows no `{META_PACKAGE}` to take the guest kernel from, and none is cached in {CACHE}")
    target = CACHE / package
    if (target / "ready").exists():
        return Kernel(target, (target / "ready").read_text().strip())
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".download-") as scratch:
        download = subprocess.run(["apt-get", "download", package], cwd=scratch, capture_output=True, text=True)
        debs = list(Path(scratch).glob("*.deb"))
        if download.returncode != 0 or not debs:
            raise VmUnavailable(f"`apt-get download {package}` failed: {download.stderr.strip()[-500:]}")
        partial = Path(scratch) / "unpacked"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(partial)], check=True)
        (release,) = [p.name for p in (partial / "lib" / "modules").iterdir()]
        subprocess.run([BUSYBOX, "depmod", "-b", str(partial), release], check=True)
        (partial / "ready").write_text(release + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return Kernel(target, release)


def _dependencies(kernel: Kernel) -> dict[str, list[str]]:
    """module name -> its path and its dependencies' paths (relative to the modules dir), from modules.dep."""
    table = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        table[Path(path).name.removesuffix(".ko").replace("-", "_")] = [path, *deps.split()]
    return table


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries: the initramfs format."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
        out += header.encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /lower /rw /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "vm-init: $*" > /dev/ttyS0; }
fail() { say "FAILED: $*"; poweroff -f; }
for m in /modules/*.ko; do insmod "$m" 2>/dev/null || say "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || fail "mounting the host's root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay"
mkdir -p /lib/modules
ln -s /lower@MODULES@ /lib/modules/@RELEASE@
for m in @TEST_MODULES@; do modprobe "$m" || say "modprobe $m failed"; done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/run/lock /newroot/vmout
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmout /newroot/vmout || fail "mounting the output share"
ifconfig lo 127.0.0.1 up
say "running the command"
chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 TMPDIR=/tmp /bin/sh /vmout/command.sh > /newroot/vmout/output.log 2>&1
echo $? > /newroot/vmout/returncode
sync
umount /newroot/vmout
say "done"
poweroff -f
"""


def _initramfs(kernel: Kernel, target: Path) -> None:
    deps = _dependencies(kernel)
    ordered: list[str] = []
    for name in BOOT_MODULES:
        for path in reversed(deps[name]):  # its dependencies first
            if path not in ordered:
                ordered.append(path)
    modules_on_host = str(kernel.modules)
    init = (INIT.replace("@MODULES@", modules_on_host).replace("@RELEASE@", kernel.release)
            .replace("@TEST_MODULES@", " ".join(TEST_MODULES)))
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("modules", stat.S_IFDIR | 0o755, b""),
               ("init", stat.S_IFREG | 0o755, init.encode()),
               ("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes())]
    entries += [(f"modules/{index:02d}-{Path(path).name}", stat.S_IFREG | 0o644, (kernel.modules / path).read_bytes())
                for index, path in enumerate(ordered)]
    target.write_bytes(_cpio(entries))


def unavailable_reason() -> str | None:
    """Why no guest can boot here (None when one can)."""
    if os.geteuid() != 0:
        return "needs root: the guest shares the host's root filesystem through qemu's 9p passthrough"
    if shutil.which("qemu-system-x86_64") is None:
        return "needs qemu (Debian package `qemu-system-x86`; `make test` installs it)"
    if not os.access(BUSYBOX, os.X_OK):
        return "needs a static busybox for the initramfs (Debian package `busybox-static`)"
    return None


def accelerator() -> str:
    forced = os.environ.get("VAULTPOLICY_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return "kvm"
    except OSError:
        return "tcg"


def run(script: str, *, timeout: float = 600, memory_mib: int = 2048, tpm_socket: Path | None = None) -> Result:
    """Boot the guest kernel, run `script` (sh) in the host's root, return its exit code and output.
    `tpm_socket`: the control socket of a swtpm on the host (`--ctrl type=unixio`), which qemu gives the
    guest as a TPM TIS device: its kernel then has /dev/tpm0 and /dev/tpmrm0 of its own."""
    reason = unavailable_reason()
    if reason:
        raise VmUnavailable(reason)
    kernel = fetch()
    accel = accelerator()
    hangs = CACHE / f"kvm-hangs-{os.uname().release}"  # this host's KVM gave no sign of life before
    boot = dict(timeout=timeout, memory_mib=memory_mib, tpm_socket=tpm_socket)
    result = None if accel == "tcg" or hangs.exists() else _boot(kernel, script, "kvm", **boot)
    if result is None:
        if accel == "kvm":  # KVM opened but the guest showed no sign of life: a nested KVM that hangs
            hangs.write_text("qemu under KVM printed nothing; guests boot with TCG on this host kernel\n")
        result = _boot(kernel, script, "tcg", **boot)
    return result


# a guest under KVM prints its first console line within a second or two; one that has printed
# nothing by then never will (this machine's nested KVM hangs before the kernel's first line)
_KVM_SIGN_OF_LIFE_S = 15


def _boot(kernel: Kernel, script: str, accel: str, timeout: float, memory_mib: int,
          tpm_socket: Path | None) -> Result | None:
    """One boot; None when KVM gave no sign of life (the caller boots again with TCG)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vaultpolicy-vm-") as scratch:
        work = Path(scratch)
        share = work / "share"
        share.mkdir()
        (share / "command.sh").write_text(script)
        _initramfs(kernel, work / "initramfs.cpio")
        console = work / "console.log"
        console.touch()
        cpu = ["-enable-kvm", "-cpu", "host,-arch-capabilities"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
        argv = ["qemu-system-x86_64", *cpu, "-m", str(memory_mib), "-smp", str(min(os.cpu_count() or 1, 2)),
                "-kernel", str(kernel.image), "-initrd", str(work / "initramfs.cpio"),
                "-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init",
                "-display", "none", "-monitor", "none", "-serial", f"file:{console}", "-no-reboot",
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
                "-virtfs", f"local,path={share},mount_tag=vmout,security_model=passthrough,multidevs=remap"]
        if tpm_socket is not None:
            argv += ["-chardev", f"socket,id=chrtpm,path={tpm_socket}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                     "-device", "tpm-tis,tpmdev=tpm0"]
        with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as qemu:
            try:
                while qemu.poll() is None:
                    elapsed = time.monotonic() - started
                    if accel == "kvm" and elapsed > _KVM_SIGN_OF_LIFE_S and console.stat().st_size == 0:
                        return None
                    if elapsed > timeout:
                        raise VmUnavailable(f"the guest did not finish within {timeout:.0f} s; its console:\n"
                                            f"{console.read_text(errors='replace')[-4000:]}")
                    time.sleep(0.2)
            finally:
                if qemu.poll() is None:
                    qemu.kill()
                    qemu.wait()
            stderr = qemu.stderr.read()
        log = console.read_text(errors="replace")
        if qemu.returncode != 0 or not (share / "returncode").exists():
            if accel == "kvm" and not log:  # KVM refused this CPU model outright
                return None
            raise VmUnavailable(f"the guest did not run the command (qemu exit {qemu.returncode}: "
                                f"{stderr.strip()[-1000:]}); its console:\n{log[-4000:]}")
        return Result(int((share / "returncode").read_text()), (share / "output.log").read_text(errors="replace"),
                      log, time.monotonic() - started, accel)


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        kernel = fetch()
        print(f"guest kernel {kernel.release} in {kernel.root}")
        return 0
    if argv[:1] == ["run"] and len(argv) == 2:
        result = run(argv[1])
        sys.stdout.write(result.output)
        print(f"[exit {result.returncode} after {result.seconds:.1f} s with {result.accelerator}]", file=sys.stderr)
        return result.returncode
    print("usage: harness.py fetch | run SCRIPT", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
