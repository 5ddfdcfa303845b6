"""Where a VM goes: the node and the exact VFs, chosen from inventories and allocations.

Pure functions of their inputs, so every rule is tested without a cluster:

- a node fits when it matches the VM's nodeSelector and has `count` VFs that are healthy,
  assignable (alone in their IOMMU group), not allocated, of the requested generation, and
  whose PF offers every requested service;
- `numa: require` takes all VFs from one NUMA node; `prefer` does so when any NUMA node can,
  else uses as few NUMA nodes as possible; `none` ignores NUMA (VFs with an unknown NUMA node
  count as one NUMA node of their own);
- among fitting nodes, `pack` takes the one with the fewest usable VFs left (fill nodes up,
  keep others empty for large VMs), `spread` the one with the most; ties go to the name, so
  the same inputs always give the same answer;
- within a node, VFs are taken in PCI address order, from as few PFs as possible.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qatvm.api.qatnode import QatVf
from qatvm.api.vm import NumaPolicy, QatRequest

# Generations before 4xxx run every service on every PF at once; they have no cfg_services.
FIXED_SERVICES = frozenset({"sym", "asym", "dc"})


class Strategy(enum.StrEnum):
    PACK = "pack"
    SPREAD = "spread"


@dataclass(frozen=True)
class NodeInventory:
    name: str
    labels: Mapping[str, str]
    vfs: tuple[QatVf, ...]


@dataclass(frozen=True)
class Placement:
    node: str
    vfs: tuple[QatVf, ...]


@dataclass(frozen=True)
class NoFit:
    """Why no node fits, with the numbers an admin needs."""

    reason: str
    message: str
    # True when no node could take the VM even with every VM gone: waiting will not help.
    never: bool = False


def offers(vf: QatVf, services: Iterable[str] | None) -> bool:
    wanted = set(services or ())
    have = set(vf.services) if vf.services is not None else FIXED_SERVICES
    return wanted <= have


def matches(vf: QatVf, request: QatRequest) -> bool:
    return (request.generation is None or vf.generation == request.generation) and offers(vf, request.services)


def _numa_groups(vfs: list[QatVf]) -> list[list[QatVf]]:
    groups: dict[int | None, list[QatVf]] = defaultdict(list)
    for vf in vfs:
        groups[vf.numa_node].append(vf)
    # Largest first, then by NUMA id, so the choice is deterministic.
    return sorted(groups.values(), key=lambda g: (-len(g), g[0].numa_node if g[0].numa_node is not None else -1))


def _ordered(vfs: list[QatVf]) -> list[QatVf]:
    # Fewest PFs: take from the PF with the most usable VFs first, then by address.
    per_pf: dict[str | None, int] = defaultdict(int)
    for vf in vfs:
        per_pf[vf.pf_address] += 1
    return sorted(vfs, key=lambda vf: (-per_pf[vf.pf_address], vf.pf_address or "", vf.pci_address))


def choose_vfs(usable: list[QatVf], count: int, numa: NumaPolicy) -> tuple[QatVf, ...] | None:
    if len(usable) < count:
        return None
    if numa is NumaPolicy.NONE:
        return tuple(_ordered(usable)[:count])
    groups = _numa_groups(usable)
    # The smallest single NUMA node that fits keeps bigger ones whole for bigger VMs.
    single = [g for g in groups if len(g) >= count]
    if single:
        best = min(single, key=len)
        return tuple(_ordered(best)[:count])
    if numa is NumaPolicy.REQUIRE:
        return None
    chosen: list[QatVf] = []
    for group in groups:
        chosen += _ordered(group)[: count - len(chosen)]
        if len(chosen) == count:
            break
    return tuple(chosen)


def selects(node_selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in node_selector.items())


def candidates(request: QatRequest, vfs: Iterable[QatVf]) -> list[QatVf]:
    """The VFs of a node that could ever serve this request (allocated or not)."""
    return [vf for vf in vfs if vf.healthy and vf.assignable and matches(vf, request)]


def capacity(request: QatRequest, vfs: Iterable[QatVf]) -> int:
    """How many of the request's VFs the node could give one VM when idle."""
    usable = candidates(request, vfs)
    if request.numa is NumaPolicy.REQUIRE:
        return max((len(g) for g in _numa_groups(usable)), default=0)
    return len(usable)


def place(
    request: QatRequest,
    node_selector: Mapping[str, str],
    nodes: Iterable[NodeInventory],
    allocated: set[tuple[str, str]],
    strategy: Strategy = Strategy.PACK,
) -> Placement | NoFit:
    """Pick a node and VFs for one VM; `allocated` holds (node, pciAddress) already taken.

    The rule in one function. The scheduler gets the same answer from its index of free VFs
    (qatvm.controller.index) without looking at every node; tests hold the two to each other."""
    ordered = sorted(nodes, key=lambda n: n.name)
    fits: list[tuple[int, str, tuple[QatVf, ...]]] = []
    for node in ordered:
        if not selects(node_selector, node.labels):
            continue
        usable = [vf for vf in candidates(request, node.vfs) if (node.name, vf.pci_address) not in allocated]
        chosen = choose_vfs(usable, request.count, request.numa)
        if chosen is not None:
            fits.append((len(usable) if strategy is Strategy.PACK else -len(usable), node.name, chosen))
    if fits:
        _, name, chosen = min(fits, key=lambda f: (f[0], f[1]))
        return Placement(node=name, vfs=chosen)
    return explain(request, node_selector, ordered)


def describe(request: QatRequest) -> str:
    parts = [str(request.count)]
    if request.generation:
        parts.append(request.generation)
    if request.services:
        parts.append("/".join(request.services))
    return " ".join(parts + ["VFs"]) + (" on one NUMA node" if request.numa is NumaPolicy.REQUIRE else "")


def explain(request: QatRequest, node_selector: Mapping[str, str], nodes: Iterable[NodeInventory]) -> NoFit:
    """Why no node fits now. Told to the VM's owner, so it names no node and gives only
    aggregates, and only ones that other tenants' VMs coming and going do not change: the
    VM's status (and its events) then change only when its own verdict does."""
    inventories = list(nodes)
    if not inventories:
        return NoFit("NoNodes", "no node has a QAT inventory yet")
    needed = f"needs {describe(request)}"
    matching = [n for n in inventories if selects(node_selector, n.labels)]
    if not matching:
        return NoFit("NoNodeLargeEnough", f"{needed}; none of the {len(inventories)} QAT nodes matches its nodeSelector", never=True)
    largest = max(capacity(request, n.vfs) for n in matching)
    if largest < request.count:
        return NoFit(
            "NoNodeLargeEnough",
            f"{needed}; no node has that many even when idle (the largest has {largest})",
            never=True,
        )
    return NoFit("InsufficientVFs", f"{needed}; no node has that many free now (the largest has {largest} when idle)")
