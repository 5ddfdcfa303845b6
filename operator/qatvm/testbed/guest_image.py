"""Build the real-kernel test guest: a Debian kernel and a small busybox initramfs.

Everything comes from pinned Debian packages fetched with `apt-get download`, so the guest is
built here, never downloaded ready-made. The result lands in the machine-wide cache under a
name made of the package versions and a digest of what the initramfs holds: a second build
with the same inputs is a no-op, and a changed pin or init script gets its own directory.

Run `python -m qatvm.testbed.guest_image` to build (or just print) the image.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from qatvm.paths import cache_dir, project_root

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DebPin:
    package: str
    version: str


# The kernel package name carries its ABI, so a pinned name stays in the archive's index after
# newer point releases; only the version inside it is fixed by the pin.
KERNEL = DebPin("linux-image-6.1.0-50-amd64", "6.1.176-1")
BUSYBOX = DebPin("busybox-static", "1:1.35.0-4+deb12u1+b1")

# Loaded by the init script, with their dependencies, in this order. The PF and its VFs are
# QEMU's NVMe controller (nvme); vfio-pci and the type1 IOMMU backend are what the project binds
# to; 9p over virtio carries the host's root; virtio_console carries the command channel.
MODULES = (
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_console",
    "nvme",
    "vfio_iommu_type1",
    "vfio-pci",
)

# Bumped when the layout written below changes in a way the inputs' digest cannot see.
LAYOUT = "1"


class GuestBuildError(RuntimeError):
    """A package could not be fetched or unpacked; the message says which and why."""


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    kernel_release: str

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initramfs.cpio"

    def is_built(self) -> bool:
        return self.kernel.is_file() and self.initrd.is_file()


def init_script() -> Path:
    return project_root() / "tools" / "guest" / "init"


def kernel_release(pin: DebPin = KERNEL) -> str:
    return pin.package.removeprefix("linux-image-")


def image() -> GuestImage:
    """Where the image for the pins (and this checkout's init script) lives, built or not."""
    digest = hashlib.sha256()
    for part in (LAYOUT, "\n".join(MODULES), init_script().read_text()):
        digest.update(part.encode())
        digest.update(b"\0")
    name = f"{KERNEL.package}_{KERNEL.version}+busybox_{BUSYBOX.version.replace(':', '_')}"
    return GuestImage(cache_dir() / "guest" / f"{name}+{digest.hexdigest()[:12]}", kernel_release(KERNEL))


def build(progress: Progress = print) -> GuestImage:
    target = image()
    if target.is_built():
        progress(f"guest image up to date: {target.directory}")
        return target
    target.directory.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test sessions share the cache: the first builds, the others wait and reuse it.
    with open(target.directory.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_built():
            return target
        with tempfile.TemporaryDirectory(dir=target.directory.parent, prefix=".build-") as tmp:
            work = Path(tmp)
            kernel_deb = fetch_deb(KERNEL, progress)
            busybox_deb = fetch_deb(BUSYBOX, progress)
            progress(f"unpacking {kernel_deb.name}")
            kernel_root = unpack(kernel_deb, work / "kernel")
            busybox_root = unpack(busybox_deb, work / "busybox")
            release = target.kernel_release
            progress(f"resolving module dependencies for {release}")
            modules = module_load_order(kernel_root, release, MODULES)
            out = work / "image"
            out.mkdir()
            shutil.copyfile(kernel_root / "boot" / f"vmlinuz-{release}", out / "vmlinuz")
            progress(f"writing initramfs ({len(modules)} modules)")
            (out / "initramfs.cpio").write_bytes(
                initramfs(busybox_root / "bin" / "busybox", kernel_root / "lib" / "modules" / release, modules)
            )
            out.rename(target.directory)
    progress(f"guest image built: {target.directory}")
    return target


def fetch_deb(pin: DebPin, progress: Progress) -> Path:
    """The .deb for a pin, from the cache or fetched with `apt-get download`."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    quoted = pin.version.replace(":", "%3a")
    cached = debs / f"{pin.package}_{quoted}_amd64.deb"
    if cached.is_file():
        return cached
    progress(f"downloading {pin.package}={pin.version}")
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        result = subprocess.run(
            ["apt-get", "download", f"{pin.package}={pin.version}"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        found = list(Path(tmp).glob(f"{pin.package}_*.deb"))
        if result.returncode != 0 or len(found) != 1:
            madison = subprocess.run(["apt-cache", "madison", pin.package], capture_output=True, text=True, check=False)
            raise GuestBuildError(
                f"`apt-get download {pin.package}={pin.version}` failed: {result.stderr.strip()}\n"
                f"versions in the index now:\n{madison.stdout.strip() or '(none: run apt-get update)'}\n"
                f"bump the pin in {__name__} if the archive dropped this version"
            )
        found[0].rename(cached)
    return cached


def unpack(deb: Path, into: Path) -> Path:
    into.mkdir()
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    return into


def module_load_order(root: Path, release: str, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to the release's module dir) of `wanted` and their dependencies, each
    after everything it needs. Names built into the kernel are skipped."""
    # The package's maintainer scripts never ran, so modules.dep has to be made here.
    subprocess.run(["depmod", "-b", str(root), release], check=True)
    moddir = root / "lib" / "modules" / release
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[path] = needs.split()
    by_name = {canonical(Path(p).name.removesuffix(".ko")): p for p in deps}
    builtin = {canonical(Path(p).name.removesuffix(".ko")) for p in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for need in deps[path]:
            visit(need)
        order.append(path)

    for name in wanted:
        key = canonical(name)
        if key in builtin:
            continue
        if key not in by_name:
            raise GuestBuildError(f"kernel {release} has no module {name}")
        visit(by_name[key])
    return order


def canonical(module: str) -> str:
    return module.replace("-", "_")


def initramfs(busybox: Path, moddir: Path, modules: list[str]) -> bytes:
    """An uncompressed newc archive: decompressing costs seconds under software emulation."""
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "host", "modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    for applet in ("mount", "insmod", "mkdir", "chroot", "poweroff", "cat", "echo"):
        archive.symlink(f"bin/{applet}", "busybox")
    archive.file("init", init_script().read_bytes(), 0o755)
    for path in modules:
        archive.file(f"modules/{Path(path).name}", (moddir / path).read_bytes(), 0o644)
    archive.file("modules/order", "".join(f"{Path(p).name}\n" for p in modules).encode(), 0o644)
    return archive.finish()


class Cpio:
    """Writes the kernel's initramfs format (cpio "newc") without needing root for device nodes."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._inode = 0

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", inode=0)
        return self._out.getvalue()

    def _entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0), inode: int | None = None) -> None:
        if inode is None:
            self._inode += 1
            inode = self._inode
        encoded = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._out.write(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the image directory, build nothing")
    args = parser.parse_args(argv)
    if args.print:
        print(image().directory)
        return 0
    try:
        build(lambda line: print(f"[guest] {line}", file=sys.stderr, flush=True))
    except GuestBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
