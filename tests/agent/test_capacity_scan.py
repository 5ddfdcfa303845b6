"""The agent's scan: the node's NUMA capacity as QatNode status shows it, and what its VMs hold."""

from __future__ import annotations

from collections.abc import Callable

from qatvm.agent.config import AgentConfig
from qatvm.agent.inventory import scan
from qatvm.api.hugepages import PageSize
from qatvm.api.vm import ResourceAllocation
from qatvm.simulation import DEFAULT_PROFILE
from simnode import Node

GIB = 1 << 30


def test_scan_publishes_capacity_less_the_reservation_and_what_vms_hold(make_node: Callable[..., Node]) -> None:
    sysfs = make_node(DEFAULT_PROFILE).sysfs
    held = [
        ResourceAllocation(vcpus=2, memory="2Gi", hugepage_size=PageSize.SIZE_1GI, numa_node=1, cpus="30-31", dedicated=True, strict=True),
        ResourceAllocation(vcpus=1, memory="512Mi", numa_node=0),
        ResourceAllocation(vcpus=3, memory="1Gi"),
    ]
    status = scan(AgentConfig(node="n1"), sysfs, {}, held)
    wire = status.model_dump(by_alias=True, mode="json")
    numa0, numa1 = wire["numa"]
    assert (numa0["cpus"], numa0["reservedCpus"], numa1["cpus"], numa1["reservedCpus"]) == ("1-15", "0", "17-31", "16")
    # 32 GiB less 8 GiB of 1 GiB pages, 1 GiB of 2 MiB pages and 1 GiB for the host.
    assert numa0["memory"] == numa1["memory"] == 22 * GIB
    assert numa1["hugepages"] == {"2Mi": 512, "1Gi": 8}
    assert numa1["allocated"] == {"vcpus": 2, "memory": 0, "hugepages": {"1Gi": 2}, "dedicatedCpus": "30-31"}
    assert numa0["allocated"]["vcpus"] == 1 and numa0["allocated"]["memory"] == GIB // 2
    assert wire["unbound"]["vcpus"] == 3
    # 30 CPUs less 6 vCPUs; 44 GiB less 1.5 GiB of ordinary memory (huge pages are not counted here).
    assert (wire["freeCpus"], wire["freeMemory"]) == (24, "43520Mi")
