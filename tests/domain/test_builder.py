from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from qatvm.api.base import ObjectRef
from qatvm.api.hugepages import PageSize
from qatvm.domain import QATVM_XMLNS, Domain, DomainSpec, NetworkKind, NetworkSpec, build_domain
from qatvm.domain.spec import HostPlacement

OWNER = ObjectRef(namespace="team-a", name="crypto-1", uid="5f0c2b1e-9a7d-4e3c-8b21-0d9e8f7a6c54")


def full_spec(**overrides: object) -> DomainSpec:
    fields: dict[str, object] = {
        "owner": OWNER,
        "vcpus": 4,
        "memory_bytes": 3 * 1024**3 + 1,
        "disk": Path("/var/lib/qatvm/vms/team-a/crypto-1/disk.qcow2"),
        "cloud_init_iso": Path("/var/lib/qatvm/vms/team-a/crypto-1/cidata.iso"),
        "hostdevs": ("0000:3d:01.2", "0000:3F:00.7"),
        "network": NetworkSpec(kind=NetworkKind.NETWORK, source="default"),
    }
    fields.update(overrides)
    return DomainSpec.model_validate(fields)


def test_each_vf_is_an_unmanaged_vfio_hostdev() -> None:
    root = ET.fromstring(build_domain(full_spec()).xml())
    hostdevs = root.findall("./devices/hostdev")
    assert [h.attrib for h in hostdevs] == [{"mode": "subsystem", "type": "pci", "managed": "no"}] * 2
    assert [h.find("driver").attrib for h in hostdevs] == [{"name": "vfio"}] * 2  # type: ignore[union-attr]
    assert [h.find("./source/address").attrib for h in hostdevs] == [  # type: ignore[union-attr]
        {"domain": "0x0000", "bus": "0x3d", "slot": "0x01", "function": "0x2"},
        {"domain": "0x0000", "bus": "0x3f", "slot": "0x00", "function": "0x7"},
    ]


def test_identity_metadata_and_resources() -> None:
    spec = full_spec()
    root = ET.fromstring(build_domain(spec).xml())
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "qatvm-team-a_crypto-1"
    assert root.findtext("uuid") == str(spec.uuid)
    owner = root.find(f"./metadata/{{{QATVM_XMLNS}}}vm")
    assert owner is not None
    assert [(child.tag.split("}")[1], child.text) for child in owner] == [
        ("namespace", "team-a"),
        ("name", "crypto-1"),
        ("uid", OWNER.uid),
    ]
    # 3 GiB + 1 byte is rounded up to whole KiB, never down below what the user asked for.
    assert root.find("memory").attrib == {"unit": "KiB"}  # type: ignore[union-attr]
    assert root.findtext("memory") == str(3 * 1024**2 + 1)
    assert root.findtext("vcpu") == "4"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    # Empty flag elements survive serialization (pydantic-xml's skip_empty would drop them).
    assert root.find("./features/acpi") is not None


def test_disks_network_and_console() -> None:
    root = ET.fromstring(build_domain(full_spec()).xml())
    disk, seed = root.findall("./devices/disk")
    assert disk.find("source").get("file") == "/var/lib/qatvm/vms/team-a/crypto-1/disk.qcow2"  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("readonly") is None
    assert seed.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert seed.find("readonly") is not None
    assert root.find("./devices/interface/source").attrib == {"network": "default"}  # type: ignore[union-attr]
    assert root.find("./devices/serial").get("type") == "pty"  # type: ignore[union-attr]
    assert root.find("./devices/console/target").attrib == {"type": "serial", "port": "0"}  # type: ignore[union-attr]


def test_without_cloud_init_there_is_one_disk_and_user_networking_by_default() -> None:
    spec = full_spec(cloud_init_iso=None, network=NetworkSpec())
    root = ET.fromstring(build_domain(spec).xml())
    assert len(root.findall("./devices/disk")) == 1
    interface = root.find("./devices/interface")
    assert interface is not None and interface.get("type") == "user" and interface.find("source") is None


def test_the_xml_parses_back_into_the_same_model() -> None:
    domain = build_domain(full_spec())
    assert Domain.from_xml(domain.xml()) == domain


def test_virt_xml_validate_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(
        build_domain(full_spec(hostdevs=tuple(f"0000:3d:{s:02x}.{f}" for s in range(2) for f in range(8)))).xml()
    )
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_schema_check_can_fail(schema_errors: Callable[[list[str]], dict[int, str]]) -> None:
    """A control: the validation used everywhere here does refuse a broken domain."""
    root = ET.fromstring(build_domain(full_spec()).xml())
    root.find("./devices/hostdev/source/address").set("slot", "0x20")  # type: ignore[union-attr]
    broken = ET.tostring(root, encoding="unicode")
    assert schema_errors([build_domain(full_spec()).xml(), broken]).keys() == {1}


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("hostdevs", ("0000:3d:01.8",), "not a PCI address"),
        ("hostdevs", ("3d:01.2",), "not a PCI address"),
        ("hostdevs", ("0000:3d:01.2", "0000:3D:01.2"), "listed twice"),
        ("vcpus", 0, "greater than or equal to 1"),
        ("memory_bytes", 1024, "greater than or equal to"),
        ("disk", Path("relative/disk.qcow2"), "not an absolute path"),
        ("cloud_init_iso", Path("/seed\n.iso"), "control characters"),
        ("network", {"kind": "bridge"}, "needs a source"),
        ("network", {"kind": "user", "source": "br0"}, "takes no source"),
        ("owner", {"namespace": "Team_A", "name": "vm", "uid": "u"}, "namespace"),
    ],
)
def test_specs_libvirt_could_not_take_are_refused(field: str, value: object, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        full_spec(**{field: value})


# --- the domain follows the controller's placement ------------------------------------------


def xml(**overrides: object) -> ET.Element:
    return ET.fromstring(build_domain(full_spec(**overrides)).xml())


def test_require_pins_shared_vcpus_and_binds_memory_strictly() -> None:
    root = xml(placement=HostPlacement(host_node=1, strict=True, shared_cpus=frozenset({17, 18, 19, 20, 28})))
    assert [p.attrib for p in root.findall("./cputune/vcpupin")] == [{"vcpu": str(i), "cpuset": "17-20,28"} for i in range(4)]
    assert root.find("./cputune/emulatorpin").attrib == {"cpuset": "17-20,28"}  # type: ignore[union-attr]
    assert root.find("./numatune/memory").attrib == {"mode": "strict", "nodeset": "1"}  # type: ignore[union-attr]
    # One guest NUMA node with every vCPU and all the memory (3 GiB + 1 byte, rounded up to KiB).
    assert root.find("./cpu/numa/cell").attrib == {  # type: ignore[union-attr]
        "id": "0", "cpus": "0-3", "memory": str(3 * 1024**2 + 1), "unit": "KiB",
    }


def test_prefer_binds_memory_preferably() -> None:
    root = xml(placement=HostPlacement(host_node=0, strict=False, shared_cpus=frozenset({1, 2})))
    assert root.find("./numatune/memory").attrib == {"mode": "preferred", "nodeset": "0"}  # type: ignore[union-attr]


def test_dedicated_cpus_one_per_vcpu_and_qemu_threads_elsewhere() -> None:
    placement = HostPlacement(host_node=0, strict=True, shared_cpus=frozenset(range(1, 12)), dedicated_cpus=(12, 13, 14, 15))
    root = xml(placement=placement)
    assert [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("./cputune/vcpupin")] == [
        ("0", "12"), ("1", "13"), ("2", "14"), ("3", "15"),
    ]
    assert root.find("./cputune/emulatorpin").attrib == {"cpuset": "1-11"}  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="4 vCPUs need as many dedicated CPUs, not 2"):
        full_spec(placement=HostPlacement(host_node=0, dedicated_cpus=(1, 2)))


def test_dedicated_without_a_numa_node_pins_but_binds_no_memory() -> None:
    root = xml(placement=HostPlacement(dedicated_cpus=(3, 4, 20, 21)))
    assert len(root.findall("./cputune/vcpupin")) == 4
    assert root.find("numatune") is None and root.find("./cpu/numa") is None


@pytest.mark.parametrize(("size", "kib"), [(PageSize.SIZE_2MI, 2048), (PageSize.SIZE_1GI, 1048576)])
def test_hugepages_of_both_sizes(size: PageSize, kib: int) -> None:
    root = xml(hugepage_size=size)
    assert root.find("./memoryBacking/hugepages/page").attrib == {"size": str(kib), "unit": "KiB"}  # type: ignore[union-attr]
    # Memory is rounded up to whole pages: 3 GiB + 1 byte needs one page more than 3 GiB.
    assert int(root.findtext("memory") or 0) == (3 * 1024**2 // kib + 1) * kib


def test_floating_vms_have_none_of_it() -> None:
    root = xml()
    for path in ("cputune", "numatune", "memoryBacking", "./cpu/numa"):
        assert root.find(path) is None


def test_virt_xml_validate_accepts_a_pinned_hugepage_domain_and_it_parses_back(tmp_path: Path) -> None:
    domain = build_domain(full_spec(
        hugepage_size=PageSize.SIZE_1GI,
        placement=HostPlacement(host_node=1, strict=True, shared_cpus=frozenset({16, 17}), dedicated_cpus=(28, 29, 30, 31)),
    ))
    path = tmp_path / "domain.xml"
    path.write_text(domain.xml())
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert Domain.from_xml(domain.xml()) == domain
