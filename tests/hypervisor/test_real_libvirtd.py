"""The generated XML on a real libvirtd with the QEMU driver, started privately for these tests.

libvirtd runs as root (the QEMU driver's system mode) inside its own mount namespace, with an empty
/run of its own and its config, state, cache and log directories bind-mounted from the test's
directory: nothing on the host is read or written, and parallel runs do not meet. Its qemu.conf
runs QEMU as root and writes QEMU's console log to a file (no virtlogd): where /dev/kvm is
root-only, as on these machines, a QEMU user that cannot open it makes libvirt re-probe QEMU
(4 s) on every call.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from qatvm.domain import DomainSpec, build_domain
from qatvm.domain.cloudinit import write_nocloud_iso
from qatvm.domain.disks import Overlays
from qatvm.hypervisor import DomainState, PassthroughUnsupported, open_hypervisor
from qatvm.processes import ManagedProcess, wait_until
from qatvm.testing.installed import require_commands, require_paths

# Host path -> directory of the test's own it replaces, in libvirtd's mount namespace only.
_PRIVATE = {
    "/etc/libvirt/qemu.conf": "qemu.conf",
    "/etc/libvirt/qemu": "etc",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
}
_IN_NAMESPACE = """
set -e
workdir=$1; shift
mount -t tmpfs tmpfs /run
while [ $# -gt 0 ]; do mount --bind "$workdir/$2" "$1"; shift 2; done
exec libvirtd --config "$workdir/libvirtd.conf" --pid-file "$workdir/libvirtd.pid"
"""


@dataclass(frozen=True)
class Libvirtd:
    uri: str
    workdir: Path


def _skip_unless_runnable() -> None:
    require_commands(
        {"libvirtd": "libvirt-daemon", "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "unshare": "util-linux"}
    )
    require_paths(dict.fromkeys(_PRIVATE, "libvirt-daemon-system"))
    if os.geteuid() != 0:
        pytest.skip("the QEMU driver of a system libvirtd needs root")
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot make a private mount namespace for libvirtd here (needs CAP_SYS_ADMIN)")


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    _skip_unless_runnable()
    workdir = tmp_path_factory.mktemp("libvirtd")
    for host, private in _PRIVATE.items():
        if Path(host).is_dir():
            (workdir / private).mkdir()
    (workdir / "qemu.conf").write_text('user = "root"\ngroup = "root"\nstdio_handler = "file"\n')
    (workdir / "libvirtd.conf").write_text(f'unix_sock_dir = "{workdir}"\nlisten_tls = 0\nlisten_tcp = 0\n')
    mounts = [part for host, private in _PRIVATE.items() for part in (host, private)]
    daemon = ManagedProcess(
        "libvirtd",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _IN_NAMESPACE,
            "sh",
            str(workdir),
            *mounts,
        ],
        workdir / "libvirtd.log",
    )
    socket = workdir / "libvirt-sock"
    uri = f"qemu+unix:///system?socket={socket}"
    daemon.start()
    try:
        if not wait_until(lambda: socket.exists() or not daemon.alive(), timeout=30) or not daemon.alive():
            pytest.fail(f"libvirtd did not start:\n{daemon.log_tail()}")
        yield Libvirtd(uri=uri, workdir=workdir)
    finally:
        _destroy_all(uri)
        daemon.stop()


def _destroy_all(uri: str) -> None:
    # libvirtd leaves running guests running when it stops; these would outlive the test.
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        for dom in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            dom.destroy()
    finally:
        connection.close()


def _disk(libvirtd: Libvirtd, name: str) -> Path:
    base = libvirtd.workdir / "base.raw"
    if not base.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "16M"], check=True)
    overlay = libvirtd.workdir / f"{name}.qcow2"
    Overlays().ensure(base, "raw", overlay)
    return overlay


def test_define_succeeds_and_start_says_the_host_lacks_an_iommu(
    libvirtd: Libvirtd, make_spec: Callable[..., DomainSpec]
) -> None:
    if any(Path("/sys/kernel/iommu_groups").iterdir()):
        pytest.skip("this host has an IOMMU, so libvirt would look for the (made-up) VF instead")
    seed = libvirtd.workdir / "vfio-seed.iso"
    write_nocloud_iso(seed, instance_id="vfio", hostname="vfio", user_data="#cloud-config\n{}\n")
    spec = make_spec("vfio", disk=_disk(libvirtd, "vfio"), cloud_init_iso=seed, hostdevs=("0000:3d:01.2",))
    with open_hypervisor(libvirtd.uri) as hypervisor:
        hypervisor.define(build_domain(spec))
        try:
            assert hypervisor.state(spec.name) is DomainState.SHUTOFF
            assert [h.source.address.bdf for h in hypervisor.domain(spec.name).devices.hostdevs] == ["0000:3d:01.2"]
            with pytest.raises(PassthroughUnsupported, match="host doesn't support VFIO PCI passthrough") as failure:
                hypervisor.start(spec.name)
            assert "intel_iommu=on" in str(failure.value)
            assert hypervisor.state(spec.name) is DomainState.SHUTOFF
        finally:
            hypervisor.undefine(spec.name)
        assert hypervisor.state(spec.name) is None


def test_stop_destroys_a_guest_that_ignores_the_power_button(
    libvirtd: Libvirtd, make_spec: Callable[..., DomainSpec]
) -> None:
    # No VF and no OS: QEMU boots into firmware that never answers ACPI, in software emulation.
    spec = make_spec("deaf", disk=_disk(libvirtd, "deaf"), hostdevs=(), virt_type="qemu", cpu_mode="maximum")
    with open_hypervisor(libvirtd.uri) as hypervisor:
        hypervisor.define(build_domain(spec))
        try:
            hypervisor.start(spec.name)
            assert hypervisor.state(spec.name) is DomainState.RUNNING
            began = time.monotonic()
            hypervisor.stop(spec.name, timeout=1.5)
            assert time.monotonic() - began >= 1.5
            assert hypervisor.state(spec.name) is DomainState.SHUTOFF
        finally:
            hypervisor.destroy(spec.name)
            hypervisor.undefine(spec.name)
