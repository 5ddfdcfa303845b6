"""Real-kernel fixtures: one guest with the IOMMU on for the whole session, one with it off.

Each guest boots once (software emulation makes a boot cost ~10 s), its VFs are enabled once,
and the modules the tests use are imported once into its agent, so a test's snippet runs in a
fork in well under a second. Tests leave the VFs as they found them: on nvme, no override.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from guest_node import Node

from qatvm.testbed import guest_libvirt
from qatvm.testbed.guest import Guest
from qatvm.testbed.guest_image import GuestImage, build
from qatvm.testing.installed import require_commands, require_paths

HERE = Path(__file__).resolve().parent
TIMINGS = pytest.StashKey[dict[str, float]]()
# What the snippets use; importing it in the agent once is what keeps each snippet fast.
PRELOAD = (
    "qatvm.node.binding",
    "qatvm.node.discovery",
    "qatvm.node.sysfs",
    "qatvm.testbed.nvme_sriov",
    "kernel_reactions",
)
PRELOAD_LIBVIRT = ("libvirt", "qatvm.domain", "qatvm.hypervisor", "qatvm.testbed.guest_libvirt")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    timings = config.stash.get(TIMINGS, {})
    if timings:
        terminalreporter.section("real-kernel guest timings")
        for what, seconds in timings.items():
            terminalreporter.write_line(f"{what:<40} {seconds:6.1f} s")


@pytest.fixture(scope="session")
def timings(pytestconfig: pytest.Config) -> dict[str, float]:
    return pytestconfig.stash.setdefault(TIMINGS, {})


@pytest.fixture(scope="session")
def guest_image(pytestconfig: pytest.Config, timings: dict[str, float]) -> GuestImage:
    require_commands({"qemu-system-x86_64": "qemu-system-x86", "apt-get": "apt", "dpkg-deb": "dpkg", "depmod": "kmod"})
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    started = time.monotonic()
    image = build(lambda line: reporter.write_line(f"[guest image] {line}") if reporter else None)
    timings["guest image (build or cache hit)"] = time.monotonic() - started
    return image


@contextmanager
def booted(image: GuestImage, workdir: Path, timings: dict[str, float], label: str, iommu: bool, *preload: str) -> Iterator[Node]:
    """A guest from boot to shutdown, its timings recorded under `label`."""
    started = time.monotonic()
    guest = Guest(image, workdir, iommu=iommu)
    try:
        guest.start()
        timings[f"{label}: boot to agent"] = guest.boot_seconds
        prepared = time.monotonic()
        guest.preload(*preload, path=HERE)
        pf, vfs = guest.enable_vfs()
        timings[f"{label}: imports + VFs"] = time.monotonic() - prepared
        yield Node(guest, pf, vfs)
    finally:
        guest.close()
        timings[f"{label}: guest's whole life"] = time.monotonic() - started


@pytest.fixture(scope="session")
def node(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> Iterator[Node]:
    """The guest booted with intel_iommu=on."""
    with booted(guest_image, tmp_path_factory.mktemp("guest"), timings, "IOMMU on", True, *PRELOAD, *PRELOAD_LIBVIRT) as node:
        yield node


@pytest.fixture(scope="session")
def node_without_iommu(
    guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]
) -> Iterator[Node]:
    """The same guest booted without intel_iommu=on: the IOMMU is there but the kernel leaves it off."""
    with booted(guest_image, tmp_path_factory.mktemp("guest-noiommu"), timings, "IOMMU off", False, *PRELOAD) as node:
        yield node


@pytest.fixture(scope="session")
def libvirtd(node: Node, timings: dict[str, float]) -> str:
    """libvirtd running in the IOMMU-on guest; returns its URI."""
    # The guest runs the host's libvirtd over the host's read-only root, folders included.
    require_commands({"libvirtd": "libvirt-daemon"})
    require_paths(dict.fromkeys(guest_libvirt.STATE_DIRS, "libvirt-daemon-system"))
    started = time.monotonic()
    node.py("from qatvm.testbed import guest_libvirt\nguest_libvirt.start()")
    timings["libvirtd start"] = time.monotonic() - started
    return "qemu:///system"
