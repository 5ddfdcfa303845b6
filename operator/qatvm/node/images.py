"""Which files a VM may boot from: regular files inside the image directories an admin chose.

A tenant writes `spec.image.path`, and the agent (root) hands that file to QEMU as the backing
file of the VM's overlay: whatever it names becomes readable inside the guest. So a path is
admitted only once it is fully resolved as the node sees it (every symlink and `..`), lies inside
an image directory, is a regular file in an allowed format, and every file of its backing chain
obeys the same rules. The agent's state directory (other VMs' overlays and cloud-init seeds) is
never an image directory; only its `images/` subdirectory may be one, because the agent writes
nothing there.

Paths are node paths (`/var/lib/qatvm/images/x.qcow2`). On a simulated node the node's root is a
directory (`host_root`), so the image path is resolved as if chrooted there: `..` stops at the
root and an absolute symlink target means `host_root/target`. QEMU is then given the resolved
file, so it opens exactly what was checked. Backing files are named inside the images and
opened by QEMU itself, so they are checked where QEMU will find them: the real path, which must
stay inside `host_root`.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from qatvm.domain.disks import ImageInfo, file_identity, image_info

ALLOWED_FORMATS = ("qcow2", "raw")
DEFAULT_IMAGE_DIR = PurePosixPath("/var/lib/qatvm/images")
# The kernel's own limit on symlinks followed in one lookup.
MAX_SYMLINKS = 40
MAX_CHAIN = 16
HEADERS_KEPT = 256
# Kernel file systems whose "files" are views of the host: never a disk.
_KERNEL_DIRS = (PurePosixPath("/proc"), PurePosixPath("/sys"), PurePosixPath("/dev"))
_ROOT = PurePosixPath("/")


class ImageRefused(Exception):
    """The image (or a file of its chain) may not be used; the message says what to do."""


class ImageMissing(ImageRefused):
    pass


@dataclass(frozen=True)
class AdmittedImage:
    node_path: PurePosixPath
    # The resolved file as this process opens it: give QEMU this, never the tenant's path.
    host_path: Path
    format: str


def image_dir_problem(directory: PurePosixPath, state_dir: PurePosixPath) -> str | None:
    """Why `directory` may not hold images (None when it may): checked at start and on every use."""
    if not directory.is_absolute() or ".." in directory.parts:
        return f"image directory {directory} is not an absolute path without `..`"
    if any(directory.is_relative_to(k) for k in _KERNEL_DIRS):
        return f"image directory {directory} is inside a kernel file system ({', '.join(map(str, _KERNEL_DIRS))})"
    if state_dir.is_relative_to(directory):
        return f"image directory {directory} holds the agent's state directory {state_dir} (other VMs' disks)"
    if directory.is_relative_to(state_dir) and not directory.is_relative_to(state_dir / "images"):
        return f"image directory {directory} is inside the agent's state directory {state_dir}; only {state_dir / 'images'} may be"
    return None


class ImagePolicy:
    def __init__(self, host_root: Path, image_dirs: Sequence[PurePosixPath], state_dir: PurePosixPath) -> None:
        # Absolute: QEMU reports backing files relative to the path it was given.
        self.host_root = host_root.absolute()
        self.image_dirs = tuple(image_dirs)
        self.state_dir = state_dir
        # What qemu-img read in each file's header, by the file's identity and times: every VM
        # of a burst names the same base image, and a file that changed has a new ctime.
        self._headers: dict[tuple[object, ...], ImageInfo] = {}

    def host(self, node_path: PurePosixPath) -> Path:
        return self.host_root.joinpath(*node_path.parts[1:])

    def resolve(self, path: str) -> tuple[PurePosixPath, bool]:
        """`path` with every symlink and `..` resolved, never leaving the node's root, and whether
        it exists. A missing component ends the walk (the kernel would fail there too); the rest
        is joined as written, for the messages."""
        done: list[str] = []
        pending = deque(path.split("/"))
        links = 0
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            here = self.host_root.joinpath(*done, part)
            try:
                info = os.lstat(here)
            except (FileNotFoundError, NotADirectoryError):
                return PurePosixPath(posixpath.normpath(posixpath.join("/", *done, part, *pending))), False
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise ImageRefused(f"image.path {path} has more than {MAX_SYMLINKS} symlinks (a loop?)")
                target = os.readlink(here)
                if target.startswith("/"):
                    done = []
                pending.extendleft(reversed(target.split("/")))
                continue
            done.append(part)
        return PurePosixPath("/", *done), True

    def admit(self, path: str) -> AdmittedImage:
        """Check `path` and its whole backing chain; raise ImageRefused saying what to fix."""
        resolved, exists = self.resolve(path)
        shown = f"image.path {path}" if str(resolved) == path else f"image.path {path} resolves to {resolved}, which"
        self._check_place(resolved, f"{shown} is outside the image directories {self._dir_list()}; put the image there")
        if not exists:
            raise ImageMissing(f"{shown} does not exist on the node; put the image there or fix the path")
        host_path = self.host(resolved)
        self._check_regular(host_path, shown)
        info = self._header(host_path)
        if info.format not in ALLOWED_FORMATS:
            raise ImageRefused(f"{shown} is a {info.format} image; only {' and '.join(ALLOWED_FORMATS)} images are accepted")
        self._check_chain(resolved, host_path, info.format)
        return AdmittedImage(node_path=resolved, host_path=host_path, format=info.format)

    def _header(self, host_path: Path, fmt: str | None = None) -> ImageInfo:
        key = (*file_identity(host_path), fmt)
        info = self._headers.get(key)
        if info is None:
            if len(self._headers) >= HEADERS_KEPT:
                self._headers.clear()
            info = self._headers[key] = image_info(host_path, fmt)
        return info

    def check_config(self) -> None:
        """Refuse to start with image directories that would expose the agent's own files."""
        problems = [p for d in self.image_dirs if (p := image_dir_problem(d, self.state_dir))]
        if problems:
            raise ValueError("; ".join(problems))

    def _dir_list(self) -> str:
        return ", ".join(str(d) for d in self.image_dirs)

    def _allowed_dirs(self) -> list[PurePosixPath]:
        """The image directories as they resolve now (a symlinked directory counts where it points)."""
        state, _ = self.resolve(str(self.state_dir))
        allowed = []
        for directory in self.image_dirs:
            resolved, exists = self.resolve(str(directory))
            if exists and image_dir_problem(resolved, state) is None:
                allowed.append(resolved)
        return allowed

    def _check_place(self, resolved: PurePosixPath, message: str) -> None:
        if resolved == _ROOT or not any(resolved.is_relative_to(d) and resolved != d for d in self._allowed_dirs()):
            raise ImageRefused(message)

    @staticmethod
    def _check_regular(host_path: Path, shown: str) -> None:
        # lstat on a resolved path: nothing is opened, so a FIFO cannot block the agent.
        mode = os.lstat(host_path).st_mode
        if not stat.S_ISREG(mode):
            kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                    stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}.get(stat.S_IFMT(mode), "not a file")
            raise ImageRefused(f"{shown} is {kind}, not a regular file; an image must be a regular file")

    def _check_chain(self, node_path: PurePosixPath, host_path: Path, fmt: str) -> None:
        seen = {host_path}
        for _ in range(MAX_CHAIN):
            info = self._header(host_path, fmt)
            if info.data_file is not None:
                raise ImageRefused(
                    f"image {node_path} keeps its data in an external file ({info.data_file}); "
                    "only self-contained images are accepted (convert it with `qemu-img convert`)"
                )
            backing = info.full_backing_filename
            if backing is None:
                return
            if not backing.startswith("/"):
                raise ImageRefused(f"image {node_path} is backed by {backing!r}, which is not a file; only files are accepted")
            if info.backing_format not in ALLOWED_FORMATS:
                raise ImageRefused(
                    f"image {node_path} names its backing file {info.backing_filename} with format "
                    f"{info.backing_format or 'unset (QEMU would guess it)'}; record qcow2 or raw with "
                    "`qemu-img rebase -u -F FORMAT -b BACKING IMAGE`"
                )
            node_path, host_path = self._backing_place(node_path, backing)
            if host_path in seen:
                raise ImageRefused(f"image {node_path} is its own backing file (a loop in the chain)")
            seen.add(host_path)
            self._check_regular(host_path, f"backing file {node_path}")
            fmt = info.backing_format
        raise ImageRefused(f"image {node_path}'s backing chain is longer than {MAX_CHAIN} files")

    def _backing_place(self, image: PurePosixPath, backing: str) -> tuple[PurePosixPath, Path]:
        real = Path(os.path.realpath(backing))
        root = self.host_root.resolve()
        refusal = (f"image {image} is backed by {backing}, which resolves to a file outside the image directories "
                   f"{self._dir_list()}; every file of an image's backing chain must be in them")
        if not real.is_relative_to(root):
            raise ImageRefused(refusal)
        if not real.exists():
            raise ImageMissing(f"image {image} is backed by {backing}, which does not exist")
        node_path = PurePosixPath("/", *real.relative_to(root).parts)
        self._check_place(node_path, refusal)
        return node_path, real
