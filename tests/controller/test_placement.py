"""Scheduling rules, one behaviour each, on hand-made inventories."""

from __future__ import annotations

from qatvm.api.qatnode import QatVf
from qatvm.api.vm import QatRequest
from qatvm.controller.placement import NodeInventory, NoFit, Placement, Strategy, place


def vf(bus: int, fn: int, *, numa: int | None = 0, pf_bus: int | None = None, services: list[str] | None = ["sym", "asym"],  # noqa: B006 - never mutated
       generation: str = "4xxx", healthy: bool = True, assignable: bool = True) -> QatVf:
    pf = f"0000:{pf_bus if pf_bus is not None else bus:02x}:00.0"
    return QatVf(
        pci_address=f"0000:{bus:02x}:00.{fn}" if fn < 8 else f"0000:{bus:02x}:{fn // 8:02x}.{fn % 8}",
        pf_address=pf, device_id="4941", generation=generation, services=services,
        numa_node=numa, iommu_group=bus * 100 + fn, driver=None, healthy=healthy, assignable=assignable,
    )


def node(name: str, *vfs: QatVf, **labels: str) -> NodeInventory:
    return NodeInventory(name=name, labels=labels, vfs=tuple(vfs))


def request(count: int, **kw: object) -> QatRequest:
    return QatRequest(count=count, **kw)  # type: ignore[arg-type]


def addresses(result: Placement | NoFit) -> list[str]:
    assert isinstance(result, Placement), result
    return [v.pci_address for v in result.vfs]


def test_takes_healthy_assignable_free_vfs_in_address_order() -> None:
    inv = node("n1", vf(1, 3), vf(1, 1, healthy=False), vf(1, 2, assignable=False), vf(1, 4), vf(1, 5))
    result = place(request(2), {}, [inv], allocated={("n1", "0000:01:00.3")})
    assert addresses(result) == ["0000:01:00.4", "0000:01:00.5"]


def test_numa_require_takes_one_numa_node_or_nothing() -> None:
    inv = node("n1", vf(1, 1, numa=0), vf(1, 2, numa=0), vf(2, 1, numa=1, pf_bus=2), vf(2, 2, numa=1, pf_bus=2), vf(2, 3, numa=1, pf_bus=2))
    assert {v.numa_node for v in place(request(3, numa="require"), {}, [inv], set()).vfs} == {1}  # type: ignore[union-attr]
    refused = place(request(4, numa="require"), {}, [inv], set())
    assert isinstance(refused, NoFit) and refused.never
    assert refused.message == "needs 4 VFs on one NUMA node; no node has that many even when idle (the largest has 3)"


def test_numa_prefer_falls_back_to_fewest_numa_nodes() -> None:
    inv = node("n1", vf(1, 1, numa=0), vf(2, 1, numa=1, pf_bus=2), vf(2, 2, numa=1, pf_bus=2), vf(2, 3, numa=1, pf_bus=2))
    result = place(request(4, numa="prefer"), {}, [inv], set())
    assert sorted(v.numa_node for v in result.vfs) == [0, 1, 1, 1]  # type: ignore[union-attr]
    small = place(request(1, numa="prefer"), {}, [inv], set())
    assert [v.numa_node for v in small.vfs] == [0]  # type: ignore[union-attr]  # the smallest NUMA node that fits


def test_services_and_generation_filter() -> None:
    inv = node("n1", vf(1, 1, services=["dc"]), vf(2, 1, services=["sym", "asym"], pf_bus=2), vf(3, 1, generation="c62x", services=None, pf_bus=3))
    assert addresses(place(request(1, services=["dc"], generation="4xxx"), {}, [inv], set())) == ["0000:01:00.1"]
    assert addresses(place(request(1, services=["asym"], generation="4xxx"), {}, [inv], set())) == ["0000:02:00.1"]
    # Older generations run every classic service at once.
    assert addresses(place(request(1, services=["sym", "dc"], generation="c62x"), {}, [inv], set())) == ["0000:03:00.1"]
    assert isinstance(place(request(1, services=["decomp"]), {}, [inv], set()), NoFit)


def test_node_selector() -> None:
    a, b = node("a", vf(1, 1), zone="x"), node("b", vf(1, 1), zone="y")
    assert place(request(1), {"zone": "y"}, [a, b], set()).node == "b"  # type: ignore[union-attr]
    refused = place(request(1), {"zone": "z"}, [a, b], set())
    assert isinstance(refused, NoFit) and refused.never
    assert refused.message == "needs 1 VFs; none of the 2 QAT nodes matches its nodeSelector"


def test_pack_fills_the_fullest_node_and_spread_the_emptiest() -> None:
    busy = node("busy", vf(1, 1), vf(1, 2), vf(1, 3))
    idle = node("idle", vf(1, 1), vf(1, 2), vf(1, 3), vf(1, 4))
    allocated = {("busy", "0000:01:00.1")}
    assert place(request(1), {}, [idle, busy], allocated, Strategy.PACK).node == "busy"  # type: ignore[union-attr]
    assert place(request(1), {}, [idle, busy], allocated, Strategy.SPREAD).node == "idle"  # type: ignore[union-attr]


def test_ties_go_to_the_name() -> None:
    nodes = [node(n, vf(1, 1)) for n in ("c", "a", "b")]
    assert place(request(1), {}, nodes, set()).node == "a"  # type: ignore[union-attr]


def test_fewest_pfs() -> None:
    inv = node("n1", vf(1, 1), vf(2, 1, pf_bus=2), vf(2, 2, pf_bus=2))
    assert addresses(place(request(2, numa="none"), {}, [inv], set())) == ["0000:02:00.1", "0000:02:00.2"]


def test_insufficient_now_is_not_never() -> None:
    inv = node("n1", vf(1, 1), vf(1, 2))
    refused = place(request(2), {}, [inv], {("n1", "0000:01:00.1")})
    assert isinstance(refused, NoFit) and not refused.never and refused.reason == "InsufficientVFs"
    # Aggregates only, and none that changes as other VMs come and go: no node name, no free count.
    assert refused.message == "needs 2 VFs; no node has that many free now (the largest has 2 when idle)"
    assert refused == place(request(2), {}, [inv], {("n1", "0000:01:00.2")})


def test_no_inventory_yet() -> None:
    refused = place(request(1), {}, [], set())
    assert isinstance(refused, NoFit) and refused.reason == "NoNodes"


def test_placement_never_reuses_an_allocated_vf() -> None:
    inv = node("n1", *[vf(1, f) for f in range(8)])
    allocated: set[tuple[str, str]] = set()
    for _ in range(4):
        result = place(request(2, numa="none"), {}, [inv], allocated)
        assert isinstance(result, Placement)
        taken = {("n1", v.pci_address) for v in result.vfs}
        assert not taken & allocated
        allocated |= taken
    assert isinstance(place(request(1), {}, [inv], allocated), NoFit)
