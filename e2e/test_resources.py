"""CPUs, memory, huge pages and NUMA in placement and in the domain, on the local cluster.

Each simulated node is the default profile: NUMA node 0 has CPUs 0-15 and the sym;asym PF, NUMA
node 1 CPUs 16-31 and the dc PF; 32 GiB, eight 1 GiB and 512 2 MiB pages on each. The agent keeps
CPUs 0 and 16 and 1 GiB per NUMA node for the host, so VMs may have 15 CPUs and 22 GiB of ordinary
memory on each NUMA node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qatvm.api.cpulist import format_cpulist
from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl

from vms import condition, status, vm, wait_ready


@pytest.fixture(autouse=True)
def _gone_after(kubectl: Kubectl, namespace: str) -> Iterator[None]:
    # These VMs hold many CPUs and pages: give them back before the next test file counts on them.
    yield
    kubectl.run("delete", "qvm", "--all", "-n", namespace, "--timeout=120s", timeout=150)


def sized(name: str, namespace: str, *, vcpus: int = 1, memory: str = "256Mi", **spec: Any) -> dict[str, Any]:
    body = vm(name, namespace, **spec.pop("qat", {}))
    body["spec"].update(vcpus=vcpus, memory=memory, **spec)
    return body


def pending_reason(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any]:
    def scheduled_false() -> dict[str, Any]:
        cond = condition(kubectl, name, namespace, "Scheduled")
        assert cond is not None and cond["status"] == "False", cond
        return cond
    return eventually(scheduled_false)  # type: ignore[no-any-return]


def test_a_vm_that_fits_by_vfs_but_not_by_memory_is_pending_saying_why(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(sized("too-big", namespace, memory="100Gi"))
    cond = pending_reason(kubectl, "too-big", namespace)
    assert cond["reason"] == "InsufficientMemory"
    assert cond["message"].startswith("needs 100Gi memory; no node could hold it even when idle (the largest has "), cond["message"]
    # Tenants learn no node's name from it.
    assert "node-" not in cond["message"]
    assert status(kubectl, "too-big", namespace)["phase"] == "Pending"
    stalled = condition(kubectl, "too-big", namespace, "Stalled")
    assert stalled is not None and stalled["status"] == "True"


def test_require_that_fits_the_node_but_not_the_numa_node_of_its_vfs(kubectl: Kubectl, namespace: str) -> None:
    # dc VFs sit on NUMA node 1 alone: 15 CPUs there, 30 on the node.
    kubectl.apply(sized("wide", namespace, vcpus=16, qat={"services": ["dc"], "numa": "require"}))
    cond = pending_reason(kubectl, "wide", namespace)
    assert cond["reason"] == "InsufficientCPU"
    assert cond["message"].startswith("needs 16 vCPUs on the NUMA node of its VFs;"), cond["message"]
    # The same VM with prefer runs, bound to no NUMA node.
    kubectl.apply(sized("wide-prefer", namespace, vcpus=16, qat={"services": ["dc"], "numa": "prefer"}))
    wait_ready(kubectl, "wide-prefer", namespace)
    resources = status(kubectl, "wide-prefer", namespace)["resources"]
    assert resources["vcpus"] == 16 and resources.get("numaNode") is None


def test_a_pinned_vm_runs_on_dedicated_cpus_of_its_vfs_numa_node_with_1gi_pages(
    kubectl: Kubectl, namespace: str, nodes: LocalNodes
) -> None:
    kubectl.apply(sized("pinned", namespace, vcpus=2, memory="2Gi", dedicatedCpus=True,
                        hugepages={"pageSize": "1Gi"}, qat={"services": ["dc"], "numa": "require"}))
    wait_ready(kubectl, "pinned", namespace)
    st = status(kubectl, "pinned", namespace)
    resources = st["resources"]
    assert (resources["numaNode"], resources["strict"], resources["dedicated"], resources["hugepageSize"]) == (1, True, True, "1Gi")
    assert [d["numaNode"] for d in st["devices"]] == [1]
    cpus = resources["cpus"]
    domain = nodes.domains(st["nodeName"])[st["domain"]["name"]][1]
    assert domain.cputune is not None and domain.numatune is not None and domain.memory_backing is not None
    pinned = [p.cpuset for p in domain.cputune.vcpupins]
    assert format_cpulist(int(cpu) for cpu in pinned) == cpus and len(pinned) == 2
    assert all(16 < int(cpu) <= 31 for cpu in pinned)
    assert (domain.numatune.memory.mode, domain.numatune.memory.nodeset) == ("strict", "1")
    assert [p.size for p in domain.memory_backing.hugepages.pages] == [1048576]  # type: ignore[union-attr]
    # The node's QatNode shows what it holds: two 1 GiB pages and the two dedicated CPUs.
    def published() -> None:
        qatnode = kubectl.json("get", "qatnode", st["nodeName"])["status"]
        numa1 = next(n for n in qatnode["numa"] if n["id"] == 1)
        assert numa1["allocated"]["hugepages"].get("1Gi") == 2 and numa1["allocated"]["dedicatedCpus"] == cpus, numa1
    eventually(published)


def test_2mi_pages_are_accounted_per_numa_node(kubectl: Kubectl, namespace: str, nodes: LocalNodes) -> None:
    # 512 pages of 2 MiB on each NUMA node: a 1Gi VM takes them all on its NUMA node.
    kubectl.apply(sized("small-pages", namespace, memory="512Mi", hugepages={"pageSize": "2Mi"},
                        qat={"services": ["sym"], "numa": "require"}))
    wait_ready(kubectl, "small-pages", namespace)
    st = status(kubectl, "small-pages", namespace)
    domain = nodes.domains(st["nodeName"])[st["domain"]["name"]][1]
    assert [p.size for p in domain.memory_backing.hugepages.pages] == [2048]  # type: ignore[union-attr]
    kubectl.apply(sized("too-many-pages", namespace, memory="2Gi", hugepages={"pageSize": "2Mi"},
                        qat={"services": ["sym"], "numa": "require"}))
    cond = pending_reason(kubectl, "too-many-pages", namespace)
    assert cond["reason"] == "InsufficientHugepages"
    assert cond["message"].startswith("needs 1024 huge pages of 2Mi on the NUMA node of its VFs;"), cond["message"]


def test_kubectl_get_qatnode_shows_free_cpus_and_memory(kubectl: Kubectl) -> None:
    lines = kubectl.run("get", "qatnode").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TOTAL", "FREE", "UNHEALTHY", "FREE", "CPUS", "FREE", "MEMORY", "AGE"]
    for line in lines[1:]:
        free_cpus, free_memory = line.split()[4:6]
        assert 0 <= int(free_cpus) <= 30
        assert free_memory.endswith(("Gi", "Mi"))
