"""Never a VF twice, never a CPU, byte or huge page more than a node has: a state machine over
watch events, reservations, writes and deletions.

Hypothesis drives a model API server (VMs with resourceVersions and conditional status writes),
a model of the nodes (which domain holds which VF, published in QatNodes), and the real
ClusterPicture, with events delivered late and in order as a watch delivers them, writes that
conflict, writes whose answer is lost, VMs edited while a decision is in flight, deletions
gracefully through the agent and by force. After every step: no VF is in two domains, no two
VMs' statuses hold the same VF, no node gives its VMs (written or reserved) more vCPUs, memory or
huge pages than a NUMA node or the node has, no CPU is dedicated to two VMs, and the index of free
VFs with the picture's ledger of CPUs and memory gives the same answer as the plain rule.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from collections import Counter

from qatvm.api.cpulist import parse_cpulist
from qatvm.api.hugepages import PageSize, pages_for
from qatvm.api.qatnode import NumaNodeCapacity
from qatvm.api.vm import QatRequest, QatVirtualMachine, ResourceAllocation
from qatvm.controller.picture import ClusterPicture
from qatvm.controller.placement import Placement, Strategy, fit_node, place
from qatvm.controller.resources import ResourceRequest

NODES = {"n1": 5, "n2": 4}
GIB = 1 << 30
# Two small NUMA nodes per node, so two or three VMs fill them: 3 CPUs, 3 GiB, two 1 GiB and 512 2 MiB pages each.
NUMA = [
    {"id": n, "cpus": f"{3 * n}-{3 * n + 2}", "memory": 3 * GIB, "hugepages": {"1Gi": 2, "2Mi": 512}} for n in (0, 1)
]
CAPACITY = [NumaNodeCapacity.model_validate(n) for n in NUMA]


def _address(index: int) -> str:
    return f"0000:3d:00.{index}"


@dataclass
class ServerVm:
    uid: str
    namespace: str
    count: int
    numa: str
    vcpus: int = 1
    memory: str = "1Gi"
    page: str | None = None
    dedicated: bool = False
    version: int = 1
    node: str | None = None
    addresses: tuple[str, ...] = ()
    resources: ResourceAllocation | None = None
    deleting: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine",
            "metadata": {"namespace": self.namespace, "name": self.uid, "uid": self.uid, "resourceVersion": str(self.version),
                         "generation": 1, "creationTimestamp": f"2024-05-01T10:00:{int(self.uid[2:]):02d}Z"},
            "spec": {"qat": {"count": self.count, "numa": self.numa}, "image": {"path": "/var/lib/qatvm/images/a.qcow2"},
                     "vcpus": self.vcpus, "memory": self.memory, "dedicatedCpus": self.dedicated},
        }
        if self.page:
            body["spec"]["hugepages"] = {"pageSize": self.page}
        if self.deleting:
            body["metadata"]["deletionTimestamp"] = "2024-05-01T11:00:00Z"
        if self.node:
            body["status"] = {"nodeName": self.node, "devices": [{"pciAddress": a} for a in self.addresses]}
            if self.resources is not None:
                body["status"]["resources"] = self.resources.wire()
        return body


@dataclass
class Write:
    version: int
    placement: Placement


@dataclass
class Model:
    vms: dict[str, ServerVm] = field(default_factory=dict)
    # (node, address) -> uid of the domain that holds it, as the node's agent keeps it.
    domains: dict[tuple[str, str], str] = field(default_factory=dict)


class NoVfTwice(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.picture = ClusterPicture()
        self.model = Model()
        self.queue: list[tuple[str, dict[str, Any], bool]] = []
        self.writes: dict[str, Write] = {}
        self.made = 0
        for node in NODES:
            self.picture.observe_node({"metadata": {"name": node, "labels": {}}})
            self.picture.observe_inventory(self._inventory(node))

    # -- the model's own writes, each a watch event for later ------------------------------------

    def _inventory(self, node: str) -> dict[str, Any]:
        vfs = []
        for i in range(NODES[node]):
            holder = self.model.domains.get((node, _address(i)))
            vfs.append({
                "pciAddress": _address(i), "pfAddress": "0000:3d:00.0", "deviceId": "4941", "generation": "4xxx",
                "services": ["sym", "asym"], "numaNode": i % 2, "iommuGroup": i, "healthy": True, "assignable": True,
                "allocatedTo": {"namespace": "x", "name": holder, "uid": holder} if holder else None,
            })
        return {"metadata": {"name": node}, "status": {"vfs": vfs, "numa": NUMA}}

    def _vm_event(self, vm: ServerVm, deleted: bool = False) -> None:
        self.queue.append(("vm", copy.deepcopy(vm.body()), deleted))

    def _node_event(self, node: str) -> None:
        self.queue.append(("node", self._inventory(node), False))

    # -- tenants ---------------------------------------------------------------------------------

    @rule(
        count=st.integers(1, 3), numa=st.sampled_from(["none", "prefer", "require"]), namespace=st.sampled_from(["a", "b"]),
        vcpus=st.integers(1, 3), memory=st.sampled_from(["512Mi", "1Gi", "2Gi"]),
        page=st.sampled_from([None, None, "2Mi", "1Gi"]), dedicated=st.booleans(),
    )
    def create(self, count: int, numa: str, namespace: str, vcpus: int, memory: str, page: str | None, dedicated: bool) -> None:
        self.made += 1
        vm = ServerVm(uid=f"vm{self.made}", namespace=namespace, count=count, numa=numa,
                      vcpus=vcpus, memory=memory, page=page, dedicated=dedicated)
        self.model.vms[vm.uid] = vm
        self._vm_event(vm)

    @precondition(lambda self: any(not v.node and not v.deleting for v in self.model.vms.values()))
    @rule(data=st.data())
    def edit_pending(self, data: st.DataObject) -> None:
        vm = data.draw(st.sampled_from([v for v in self.model.vms.values() if not v.node and not v.deleting]))
        vm.version += 1
        self._vm_event(vm)

    @precondition(lambda self: any(not v.deleting for v in self.model.vms.values()))
    @rule(data=st.data(), force=st.booleans())
    def delete(self, data: st.DataObject, force: bool) -> None:
        vm = data.draw(st.sampled_from([v for v in self.model.vms.values() if not v.deleting]))
        if force or vm.node is None:
            # Gone from the API at once; a domain that holds VFs keeps them until the agent cleans up.
            del self.model.vms[vm.uid]
            self._vm_event(vm, deleted=True)
        else:
            vm.deleting = True
            vm.version += 1
            self._vm_event(vm)

    # -- the controller --------------------------------------------------------------------------

    @rule(data=st.data(), how_many=st.integers(1, 4))
    def decide(self, data: st.DataObject, how_many: int) -> None:
        """Several decisions in a row, none of whose writes has returned: as the scheduler makes them."""
        for _ in range(how_many):
            # The scheduler goes oldest first, but any waiting VM may be the next one that fits.
            waiting = sorted(
                (b for uid, b in self.picture.pending.items() if uid not in self.writes and uid not in self.picture.reservations),
                key=lambda b: b["metadata"]["creationTimestamp"],
            )
            if not waiting:
                return
            body = data.draw(st.sampled_from(waiting))
            decision = self.picture.decide(QatVirtualMachine.model_validate(body), Strategy.PACK)
            if isinstance(decision, Placement):
                self.writes[body["metadata"]["uid"]] = Write(int(body["metadata"]["resourceVersion"]), decision)

    @precondition(lambda self: bool(self.writes))
    @rule(data=st.data(), answer_lost=st.booleans())
    def finish_write(self, data: st.DataObject, answer_lost: bool) -> None:
        uid = data.draw(st.sampled_from(sorted(self.writes)))
        write = self.writes.pop(uid)
        vm = self.model.vms.get(uid)
        if vm is not None and vm.version == write.version and vm.node is None:
            vm.node = write.placement.node
            vm.addresses = tuple(v.pci_address for v in write.placement.vfs)
            vm.resources = write.placement.resources
            vm.version += 1
            self._vm_event(vm)
            if answer_lost:
                self.picture.doubt(uid)
            else:
                self.picture.observe_vm(copy.deepcopy(vm.body()))
        elif answer_lost:
            self.picture.doubt(uid)
        else:
            self.picture.release(uid)  # 409 or 404: the API server said no

    # -- the nodes' agents -----------------------------------------------------------------------

    @precondition(lambda self: any(v.node and not v.deleting for v in self.model.vms.values()))
    @rule(data=st.data())
    def agent_binds(self, data: st.DataObject) -> None:
        vm = data.draw(st.sampled_from([v for v in self.model.vms.values() if v.node and not v.deleting]))
        assert vm.node is not None
        for address in vm.addresses:
            holder = self.model.domains.get((vm.node, address))
            assert holder in (None, vm.uid), f"{vm.node} {address} is in the domain of {holder}, and now given to {vm.uid}"
            self.model.domains[(vm.node, address)] = vm.uid
        self._node_event(vm.node)

    @precondition(lambda self: bool(self.model.domains))
    @rule()
    def agent_cleans_up(self) -> None:
        """Each node gives back the VFs of domains whose VM is gone or terminating, then lets it go."""
        for (node, address), uid in list(self.model.domains.items()):
            vm = self.model.vms.get(uid)
            if vm is None or vm.deleting:
                del self.model.domains[(node, address)]
        for node in NODES:
            self._node_event(node)
        for vm in [v for v in self.model.vms.values() if v.deleting]:
            del self.model.vms[vm.uid]
            self._vm_event(vm, deleted=True)

    @precondition(lambda self: bool(self.queue))
    @rule(how_many=st.integers(1, 5))
    def deliver(self, how_many: int) -> None:
        for kind, body, deleted in self.queue[:how_many]:
            if kind == "vm":
                self.picture.observe_vm(body, deleted)
            else:
                self.picture.observe_inventory(body, deleted)
        del self.queue[:how_many]

    # -- what must always hold -------------------------------------------------------------------

    @invariant()
    def no_two_statuses_share_a_vf(self) -> None:
        held = [(v.node, a) for v in self.model.vms.values() if v.node for a in v.addresses]
        assert len(held) == len(set(held)), held

    @invariant()
    def the_picture_promises_each_vf_once(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        for uid, holding in self.picture.holdings():
            for address in holding.addresses:
                assert seen.setdefault((holding.node, address), uid) == uid
                assert (holding.node, address) not in self.picture.index

    @invariant()
    def no_status_holds_more_than_a_node_has(self) -> None:
        for node in NODES:
            _within_capacity([v.resources for v in self.model.vms.values() if v.node == node and v.resources])

    @invariant()
    def the_picture_promises_no_more_than_a_node_has(self) -> None:
        for node in NODES:
            _within_capacity([h.resources for _, h in self.picture.holdings() if h.node == node and h.resources])

    @invariant()
    def the_index_agrees_with_the_rule(self) -> None:
        nodes = self.picture.nodes()
        not_free = {(n.name, v.pci_address) for n in nodes for v in n.vfs if (n.name, v.pci_address) not in self.picture.index}
        plain = ResourceRequest(vcpus=1, memory=GIB)
        dedicated = ResourceRequest(vcpus=2, memory=2 * GIB, dedicated=True)
        pages = ResourceRequest(vcpus=2, memory=GIB, page_size=PageSize.SIZE_1GI)
        # A few requests, each rule met once: the rule is slow on purpose (it looks at everything).
        asked = ((1, "none", plain), (3, "none", plain), (1, "require", dedicated), (2, "require", pages),
                 (2, "prefer", dedicated), (1, "prefer", pages))
        for count, numa, need in asked:
            for strategy in Strategy:
                request = QatRequest(count=count, numa=numa)  # type: ignore[arg-type]

                def fit(node: str, usable: list[Any], request: QatRequest = request,
                        need: ResourceRequest = need) -> Placement | None:
                    outcome = fit_node(node, usable, request, need, self.picture.left(node))
                    return outcome if isinstance(outcome, Placement) else None

                fast = self.picture.index.pick(request, {}, lambda n: {}, strategy, fit)
                slow = place(request, {}, nodes, not_free, strategy, resources=need)
                assert fast == (slow if isinstance(slow, Placement) else None), (request, need, strategy)


def _within_capacity(held: list[ResourceAllocation]) -> None:
    for numa in CAPACITY:
        bound = [a for a in held if a.numa_node == numa.id]
        assert sum(a.vcpus for a in bound) <= len(numa.cpu_set)
        assert sum(a.memory_bytes for a in bound if a.hugepage_size is None) <= numa.memory
        for size in PageSize:
            pages = sum(pages_for(a.memory_bytes, size) for a in bound if a.hugepage_size is size)
            assert pages <= numa.hugepages.get(size, 0)
    assert sum(a.vcpus for a in held) <= sum(len(n.cpu_set) for n in CAPACITY)
    assert sum(a.memory_bytes for a in held if a.hugepage_size is None) <= sum(n.memory for n in CAPACITY)
    for size in PageSize:
        pages = sum(pages_for(a.memory_bytes, size) for a in held if a.hugepage_size is size)
        assert pages <= sum(n.hugepages.get(size, 0) for n in CAPACITY)
    dedicated = Counter(cpu for a in held if a.dedicated for cpu in parse_cpulist(a.cpus or ""))
    assert all(n == 1 for n in dedicated.values()), f"a CPU dedicated to two VMs: {dedicated}"


NoVfTwice.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestNoVfTwice = NoVfTwice.TestCase
