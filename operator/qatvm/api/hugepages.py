"""Huge page sizes a VM may ask for, and how the kernel names their pools in sysfs."""

from __future__ import annotations

from enum import StrEnum


class PageSize(StrEnum):
    """The x86-64 huge page sizes, spelled as Kubernetes quantities."""

    SIZE_2MI = "2Mi"
    SIZE_1GI = "1Gi"

    @property
    def bytes(self) -> int:
        return 2 << 20 if self is PageSize.SIZE_2MI else 1 << 30

    @property
    def kib(self) -> int:
        return self.bytes >> 10

    @property
    def sysfs_dir(self) -> str:
        """The pool's directory under `node<N>/hugepages/` (`hugepages-1048576kB`)."""
        return f"hugepages-{self.kib}kB"


def pages_for(memory: int, size: PageSize) -> int:
    """Pages of `size` that hold `memory` bytes (libvirt rounds guest memory up the same way)."""
    return -(-memory // size.bytes)
