"""The one door production code uses to reach sysfs, rooted anywhere.

Paths are relative to the root (`bus/pci/devices/0000:6b:00.1/driver`). Production reaches the
kernel's own through `HostSysfs`, plain file I/O. Code handed a `Sysfs` never knows which one it
holds: the simulation (`qatvm.simulation`) has its own, whose writes get the kernel's reaction,
and whoever runs code on a simulated node hands that one in.
"""

from __future__ import annotations

import os
import posixpath
from abc import ABC, abstractmethod
from pathlib import Path

DEFAULT_ROOT = Path("/sys")


def dev_root(sysfs_root: Path) -> Path:
    """The `/dev` that goes with a sysfs root (`/sys` -> `/dev`, `X/sys` -> `X/dev`)."""
    return sysfs_root.parent / "dev"


class Sysfs(ABC):
    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = root
        # A string for the file operations: joining Paths was half the cost of an agent's scan.
        self._root = str(root)

    @property
    def dev_root(self) -> Path:
        return dev_root(self.root)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def file(self, rel: str) -> str:
        return posixpath.join(self._root, rel)

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.file(rel))

    def read(self, rel: str) -> str:
        """An attribute's value without its trailing newline."""
        with open(self.file(rel), encoding="ascii") as f:
            return f.read().rstrip("\n")

    def readlink(self, rel: str) -> str | None:
        """The last component of a symlink's target (a driver, a group, a BDF); None if absent."""
        try:
            return posixpath.basename(os.readlink(self.file(rel)))
        except FileNotFoundError:
            return None

    def listdir(self, rel: str) -> list[str]:
        return sorted(os.listdir(self.file(rel)))

    @abstractmethod
    def write(self, rel: str, value: str) -> None:
        """Store `value` into an existing attribute, raising OSError with the kernel's errno."""


class HostSysfs(Sysfs):
    def write(self, rel: str, value: str) -> None:
        # One write(2) on a descriptor opened without O_CREAT: sysfs hands each write to
        # the attribute's store method whole, and a missing attribute must fail with ENOENT.
        fd = os.open(self.file(rel), os.O_WRONLY)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)
