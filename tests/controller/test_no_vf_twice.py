"""Never a VF twice: a state machine over watch events, reservations, writes and deletions.

Hypothesis drives a model API server (VMs with resourceVersions and conditional status writes),
a model of the nodes (which domain holds which VF, published in QatNodes), and the real
ClusterPicture, with events delivered late and in order as a watch delivers them, writes that
conflict, writes whose answer is lost, VMs edited while a decision is in flight, deletions
gracefully through the agent and by force. After every step: no VF is in two domains, no two
VMs' statuses hold the same VF, and the index of free VFs gives the same answer as the plain rule.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qatvm.api.vm import QatRequest, QatVirtualMachine
from qatvm.controller.picture import ClusterPicture
from qatvm.controller.placement import Placement, Strategy, place

NODES = {"n1": 4, "n2": 3}


def _address(index: int) -> str:
    return f"0000:3d:00.{index}"


@dataclass
class ServerVm:
    uid: str
    namespace: str
    count: int
    numa: str
    version: int = 1
    node: str | None = None
    addresses: tuple[str, ...] = ()
    deleting: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine",
            "metadata": {"namespace": self.namespace, "name": self.uid, "uid": self.uid, "resourceVersion": str(self.version),
                         "generation": 1, "creationTimestamp": f"2024-05-01T10:00:{int(self.uid[2:]):02d}Z"},
            "spec": {"qat": {"count": self.count, "numa": self.numa}, "image": {"path": "/var/lib/qatvm/images/a.qcow2"}},
        }
        if self.deleting:
            body["metadata"]["deletionTimestamp"] = "2024-05-01T11:00:00Z"
        if self.node:
            body["status"] = {"nodeName": self.node, "devices": [{"pciAddress": a} for a in self.addresses]}
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
        return {"metadata": {"name": node}, "status": {"vfs": vfs}}

    def _vm_event(self, vm: ServerVm, deleted: bool = False) -> None:
        self.queue.append(("vm", copy.deepcopy(vm.body()), deleted))

    def _node_event(self, node: str) -> None:
        self.queue.append(("node", self._inventory(node), False))

    # -- tenants ---------------------------------------------------------------------------------

    @rule(count=st.integers(1, 3), numa=st.sampled_from(["none", "prefer", "require"]), namespace=st.sampled_from(["a", "b"]))
    def create(self, count: int, numa: str, namespace: str) -> None:
        self.made += 1
        vm = ServerVm(uid=f"vm{self.made}", namespace=namespace, count=count, numa=numa)
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

    @rule(data=st.data())
    def decide(self, data: st.DataObject) -> None:
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
    def the_index_agrees_with_the_rule(self) -> None:
        nodes = self.picture.nodes()
        not_free = {(n.name, v.pci_address) for n in nodes for v in n.vfs if (n.name, v.pci_address) not in self.picture.index}
        for count in (1, 2, 3):
            for numa in ("none", "require"):
                for strategy in Strategy:
                    request = QatRequest(count=count, numa=numa)  # type: ignore[arg-type]
                    fast = self.picture.index.pick(request, {}, lambda n: {}, strategy)
                    slow = place(request, {}, nodes, not_free, strategy)
                    assert fast == (slow if isinstance(slow, Placement) else None), (request, strategy)


NoVfTwice.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestNoVfTwice = NoVfTwice.TestCase
