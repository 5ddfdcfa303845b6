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
from dataclasses import dataclass, field

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


@dataclass
class _NodeVerdict:
    name: str
    usable: list[QatVf] = field(default_factory=list)
    capacity: int = 0
    why: str = ""


def offers(vf: QatVf, services: Iterable[str] | None) -> bool:
    wanted = set(services or ())
    have = set(vf.services) if vf.services is not None else FIXED_SERVICES
    return wanted <= have


def _matches(vf: QatVf, request: QatRequest) -> bool:
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


def place(
    request: QatRequest,
    node_selector: Mapping[str, str],
    nodes: Iterable[NodeInventory],
    allocated: set[tuple[str, str]],
    strategy: Strategy = Strategy.PACK,
) -> Placement | NoFit:
    """Pick a node and VFs for one VM; `allocated` holds (node, pciAddress) already taken."""
    verdicts: list[_NodeVerdict] = []
    fits: list[tuple[_NodeVerdict, tuple[QatVf, ...]]] = []
    for node in sorted(nodes, key=lambda n: n.name):
        verdict = _NodeVerdict(node.name)
        verdicts.append(verdict)
        if any(node.labels.get(k) != v for k, v in node_selector.items()):
            verdict.why = "does not match nodeSelector"
            continue
        candidates = [vf for vf in node.vfs if vf.healthy and vf.assignable and _matches(vf, request)]
        verdict.capacity = max((len(g) for g in _numa_groups(candidates)), default=0) if request.numa is NumaPolicy.REQUIRE else len(candidates)
        verdict.usable = [vf for vf in candidates if (node.name, vf.pci_address) not in allocated]
        chosen = choose_vfs(verdict.usable, request.count, request.numa)
        if chosen is None:
            verdict.why = _shortfall(verdict, request)
            continue
        fits.append((verdict, chosen))
    if fits:
        pick = min(fits, key=lambda f: (len(f[0].usable) if strategy is Strategy.PACK else -len(f[0].usable), f[0].name))
        return Placement(node=pick[0].name, vfs=pick[1])
    return _no_fit(request, verdicts)


def _describe(request: QatRequest) -> str:
    parts = []
    if request.generation:
        parts.append(request.generation)
    if request.services:
        parts.append("/".join(request.services))
    return " ".join(parts + ["VFs"]) if parts else "VFs"


def _shortfall(verdict: _NodeVerdict, request: QatRequest) -> str:
    kind = _describe(request)
    if request.numa is NumaPolicy.REQUIRE:
        best = max((len(g) for g in _numa_groups(verdict.usable)), default=0)
        return f"{best} free {kind} on one NUMA node ({len(verdict.usable)} free in all)"
    return f"{len(verdict.usable)} free {kind}"


def _no_fit(request: QatRequest, verdicts: list[_NodeVerdict]) -> NoFit:
    if not verdicts:
        return NoFit("NoNodes", "no node has a QAT inventory yet", never=False)
    details = "; ".join(f"{v.name}: {v.why}" for v in verdicts)
    needed = f"needs {request.count} {_describe(request)}" + (" on one NUMA node" if request.numa is NumaPolicy.REQUIRE else "")
    never = all(v.capacity < request.count for v in verdicts)
    if never:
        return NoFit(
            "NoNodeLargeEnough",
            f"{needed}, and no node has that many even when idle: {details}",
            never=True,
        )
    return NoFit("InsufficientVFs", f"{needed}; 0 of {len(verdicts)} nodes fit now: {details}")
