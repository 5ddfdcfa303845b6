"""The free VFs of the cluster, indexed so that a decision looks at few nodes, not all of them.

Kept up to date one VF at a time, as watch events and reservations add and take VFs. For each
kind of request seen (generation, services) it keeps how many matching VFs each node has free,
with the nodes grouped by that count; `pack` walks the groups from the smallest count that fits
up, `spread` from the largest down, and both try nodes in name order within a group. That is
exactly the order `placement.place` ranks nodes in, so the answers are the same (the tests
check this), at the cost of the few nodes looked at instead of every node. A node with the VFs
but not the VM's CPUs, memory or huge pages is passed over (`pick`'s `fit` says so, from what the
picture keeps per node), and the walk goes on in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

from qatvm.api.qatnode import QatVf
from qatvm.api.vm import QatRequest
from qatvm.controller.placement import Placement, Strategy, matches, offers, selects

Kind = tuple[str | None, frozenset[str] | None]


def kind_of(request: QatRequest) -> Kind:
    return request.generation, frozenset(request.services) if request.services else None


class _Counts:
    """Free VFs of one kind, per node, and the nodes grouped by that number."""

    def __init__(self) -> None:
        self.per_node: dict[str, int] = {}
        self.by_count: dict[int, set[str]] = defaultdict(set)

    def add(self, node: str, delta: int) -> None:
        before = self.per_node.get(node, 0)
        after = before + delta
        if before:
            self.by_count[before].discard(node)
            if not self.by_count[before]:
                del self.by_count[before]
        if after:
            self.per_node[node] = after
            self.by_count[after].add(node)
        else:
            self.per_node.pop(node, None)


class FreeVfIndex:
    def __init__(self) -> None:
        self.free: dict[str, dict[str, QatVf]] = {}
        self._counts: dict[Kind, _Counts] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        node, address = key
        return address in self.free.get(node, {})

    def add(self, node: str, vf: QatVf) -> None:
        vfs = self.free.setdefault(node, {})
        if vf.pci_address in vfs:
            self.discard(node, vf.pci_address)
            vfs = self.free.setdefault(node, {})
        vfs[vf.pci_address] = vf
        self._count(node, vf, +1)

    def discard(self, node: str, address: str) -> None:
        vfs = self.free.get(node)
        vf = vfs.pop(address, None) if vfs else None
        if vf is None:
            return
        if not vfs:
            del self.free[node]
        self._count(node, vf, -1)

    def _count(self, node: str, vf: QatVf, delta: int) -> None:
        for kind, counts in self._counts.items():
            if _of_kind(vf, kind):
                counts.add(node, delta)

    def _counts_for(self, kind: Kind) -> _Counts:
        counts = self._counts.get(kind)
        if counts is None:
            # A kind never asked for before: counted once, then kept up to date.
            counts = self._counts[kind] = _Counts()
            for node, vfs in self.free.items():
                n = sum(1 for vf in vfs.values() if _of_kind(vf, kind))
                if n:
                    counts.add(node, n)
        return counts

    def pick(
        self,
        request: QatRequest,
        node_selector: Mapping[str, str],
        labels: Callable[[str], Mapping[str, str]],
        strategy: Strategy,
        fit: Callable[[str, list[QatVf]], Placement | None],
    ) -> Placement | None:
        """The first node in rank order where `fit` places the VM on the node's usable free VFs."""
        counts = self._counts_for(kind_of(request))
        sizes = sorted((n for n in counts.by_count if n >= request.count), reverse=strategy is Strategy.SPREAD)
        for size in sizes:
            for node in sorted(counts.by_count[size]):
                if not selects(node_selector, labels(node)):
                    continue
                usable = [vf for vf in self.free[node].values() if matches(vf, request)]
                placement = fit(node, usable)
                if placement is not None:
                    return placement
        return None


def _of_kind(vf: QatVf, kind: Kind) -> bool:
    generation, services = kind
    return (generation is None or vf.generation == generation) and offers(vf, services)
