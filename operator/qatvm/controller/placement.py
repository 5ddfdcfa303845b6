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
- within a node, VFs are taken in PCI address order, from as few PFs as possible;
- the VM's vCPUs, memory and huge pages (see `resources.py`) must fit what the node has left:
  with `numa: require` on the NUMA node of its VFs (strictly bound there), with `prefer` on the
  NUMA node of its VFs when any such NUMA node can take both, else anywhere on the node (bound to
  no NUMA node), with `none` anywhere on the node. A node that has not published its NUMA layout
  takes nothing. The ranking between nodes stays by VFs, so the index walks nodes in the same order.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from qatvm.api.qatnode import NumaNodeCapacity, QatVf
from qatvm.api.vm import NumaPolicy, QatRequest, ResourceAllocation
from qatvm.controller.resources import NodeResources, ResourceRequest, Shortfall, allocate, fits, left_on

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
    # The agent's published NUMA nodes; empty until it has published them.
    capacity: tuple[NumaNodeCapacity, ...] = ()
    # What the VMs placed on the node hold of it, as the controller recorded them.
    allocations: tuple[ResourceAllocation, ...] = ()
    # Why the node takes nothing new (cordoned, unreachable); None when it may.
    unavailable: str | None = None


@dataclass(frozen=True)
class Placement:
    node: str
    vfs: tuple[QatVf, ...]
    resources: ResourceAllocation | None = None


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


def _with_resources(
    usable: list[QatVf], request: QatRequest, need: ResourceRequest, left: NodeResources
) -> tuple[tuple[QatVf, ...], ResourceAllocation] | Shortfall | None:
    """VFs and resources that fit together; a Shortfall when only the VFs do; None when they do not."""
    short: Shortfall | None = None

    def keep(found: Shortfall) -> Shortfall:
        # Of one resource, the shortfall of whatever has the most left: what a message quotes.
        return found if short is None or (found.resource == short.resource and found.left > short.left) else short

    if request.numa is not NumaPolicy.NONE:
        # Smallest NUMA node first, as `choose_vfs` does, keeping bigger ones whole.
        for group in sorted((g for g in _numa_groups(usable) if len(g) >= request.count), key=len):
            numa = group[0].numa_node
            found = fits(need, left, numa)
            if found is None:
                strict = request.numa is NumaPolicy.REQUIRE
                return tuple(_ordered(group)[: request.count]), allocate(need, left, numa, strict)
            short = keep(found)
        if request.numa is NumaPolicy.REQUIRE:
            return short
    chosen = choose_vfs(usable, request.count, request.numa)
    if chosen is None:
        return short
    found = fits(need, left, None)
    if found is not None:
        return short or found
    return chosen, allocate(need, left, None, strict=False)


def fit_node(
    node: str, usable: list[QatVf], request: QatRequest, need: ResourceRequest | None, left: NodeResources | None
) -> Placement | Shortfall | None:
    """One node's answer: a Placement; a Shortfall when it has the VFs but not the CPUs, memory or
    huge pages (`left` None: it has not published them); None when it lacks the VFs."""
    if need is None:
        chosen = choose_vfs(usable, request.count, request.numa)
        return Placement(node=node, vfs=chosen) if chosen is not None else None
    if left is None:
        return None if choose_vfs(usable, request.count, request.numa) is None else UNPUBLISHED
    outcome = _with_resources(usable, request, need, left)
    if isinstance(outcome, tuple):
        return Placement(node=node, vfs=outcome[0], resources=outcome[1])
    return outcome


# A node whose agent has not published its NUMA layout (an agent older than that, or one that
# could not read it) is short of everything: nothing is known to be left.
UNPUBLISHED = Shortfall("CPU", 1, 0, "vCPUs")


def left_of(node: NodeInventory) -> NodeResources | None:
    return left_on(list(node.capacity), node.allocations) if node.capacity else None


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
    resources: ResourceRequest | None = None,
) -> Placement | NoFit:
    """Pick a node and VFs for one VM; `allocated` holds (node, pciAddress) already taken; with
    `resources`, the VM's CPUs and memory must fit too.

    The rule in one function. The scheduler gets the same answer from its index of free VFs
    (qatvm.controller.index) without looking at every node; tests hold the two to each other."""
    ordered = sorted(nodes, key=lambda n: n.name)
    found: list[tuple[int, str, Placement]] = []
    short: list[Shortfall] = []
    for node in ordered:
        if not selects(node_selector, node.labels):
            continue
        if node.unavailable:
            continue  # it may take the VM once it is back or uncordoned: `explain` counts it so
        usable = [vf for vf in candidates(request, node.vfs) if (node.name, vf.pci_address) not in allocated]
        outcome = fit_node(node.name, usable, request, resources, left_of(node) if resources else None)
        if isinstance(outcome, Placement):
            found.append((len(usable) if strategy is Strategy.PACK else -len(usable), node.name, outcome))
        elif outcome is not None:
            short.append(outcome)
    if found:
        return min(found, key=lambda f: (f[0], f[1]))[2]
    return explain(request, node_selector, ordered, resources, short)


def describe(request: QatRequest) -> str:
    parts = [str(request.count)]
    if request.generation:
        parts.append(request.generation)
    if request.services:
        parts.append("/".join(request.services))
    return " ".join(parts + ["VFs"]) + (" on one NUMA node" if request.numa is NumaPolicy.REQUIRE else "")


def explain(
    request: QatRequest,
    node_selector: Mapping[str, str],
    nodes: Iterable[NodeInventory],
    need: ResourceRequest | None = None,
    short_now: Sequence[Shortfall] = (),
) -> NoFit:
    """Why no node fits now. Told to the VM's owner, so it names no node and gives only
    aggregates, and only ones that other tenants' VMs coming and going do not change: the
    VM's status (and its events) then change only when its own verdict does. `short_now` holds
    what the nodes with the VFs free lacked of the VM's CPUs, memory or huge pages."""
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
    shut = sum(1 for n in matching if n.unavailable)
    # Cordons and lost nodes change the layout, not what other tenants hold: safe to count.
    closed = (
        f"; {shut} of the {len(matching)} nodes matching its nodeSelector take nothing new (cordoned or unreachable)"
        if shut else ""
    )
    if need is not None:
        large = [n for n in matching if capacity(request, n.vfs) >= request.count]
        idle = [_idle(request, need, n) for n in large]
        could = sum(isinstance(i, Placement) for i in idle)
        if not could:
            short = [i for i in idle if isinstance(i, Shortfall)]
            if all(s is UNPUBLISHED for s in short):
                return NoFit("InsufficientCPU", "the QAT nodes that have its VFs have not published their CPUs and memory yet")
            first, most = _most_common([s for s in short if s is not UNPUBLISHED])
            return NoFit(
                f"Insufficient{first.resource}",
                f"{_needs(first, request)}; no node could hold it even when idle (the largest has {first.describe(most)})",
                never=True,
            )
        if short_now:
            first, _ = _most_common(short_now)
            return NoFit(
                f"Insufficient{first.resource}",
                f"{_needs(first, request)}; no node with its VFs free has that free now "
                f"({could} of {len(inventories)} QAT nodes could hold it when idle){closed}",
            )
    return NoFit("InsufficientVFs", f"{needed}; no node has that many free now (the largest has {largest} when idle){closed}")


def _idle(request: QatRequest, need: ResourceRequest, node: NodeInventory) -> Placement | Shortfall | None:
    left = left_on(list(node.capacity), ()) if node.capacity else None
    return fit_node(node.name, candidates(request, node.vfs), request, need, left)


_RESOURCES = ("CPU", "Memory", "Hugepages")


def _most_common(shortfalls: Sequence[Shortfall]) -> tuple[Shortfall, int]:
    """The resource most nodes lack (ties: CPU, memory, huge pages), and the most any has of it."""
    resource = max(_RESOURCES, key=lambda r: (sum(s.resource == r for s in shortfalls), -_RESOURCES.index(r)))
    same = [s for s in shortfalls if s.resource == resource]
    return same[0], max(s.left for s in same)


def _needs(short: Shortfall, request: QatRequest) -> str:
    where = " on the NUMA node of its VFs" if request.numa is NumaPolicy.REQUIRE else ""
    return f"needs {short.describe(short.needed)} {short.what}{where}"
