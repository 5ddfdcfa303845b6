"""The one door production code uses to reach sysfs, rooted anywhere.

Paths are relative to the root (`bus/pci/devices/0000:6b:00.1/driver`). Two implementations
exist: `HostSysfs`, plain file I/O for a real kernel, and the simulated kernel's (in
`qatvm.simulation`), which also applies the kernel's reaction to each write. `open_sysfs`
picks between them from what is on disk, so callers never know which one they hold.
"""

from __future__ import annotations

import os
import posixpath
from abc import ABC, abstractmethod
from pathlib import Path

DEFAULT_ROOT = Path("/sys")
# Written by the hardware generator at the root of every simulated tree; a real sysfs
# cannot contain it (sysfs refuses to create files).
SIMULATION_MARKER = ".qatvm-simulated"


def dev_root(sysfs_root: Path) -> Path:
    """The `/dev` that goes with a sysfs root (`/sys` -> `/dev`, `X/sys` -> `X/dev`)."""
    return sysfs_root.parent / "dev"


class Sysfs(ABC):
    def __init__(self, root: Path) -> None:
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


def open_sysfs(root: Path = DEFAULT_ROOT) -> Sysfs:
    """The sysfs under `root`: simulated when the tree carries the simulation marker."""
    if (root / SIMULATION_MARKER).exists():
        # Imported here so a real node never loads the simulation.
        from qatvm.simulation.kernel import SimulatedSysfs

        return SimulatedSysfs(root)
    return HostSysfs(root)
