"""The agent's flags for what the host keeps back."""

from __future__ import annotations

import pytest

from qatvm.agent.main import parse
from qatvm.node.capacity import HostReservation


def test_defaults_keep_the_first_cpu_and_1gi_per_numa_node_and_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    _, config = parse(["--node", "n1"])
    assert config.reservation == HostReservation(cpus=None, memory_per_numa_node=1 << 30)
    with pytest.raises(SystemExit):
        parse(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: the first CPU of each NUMA node)" in help_text
    assert "kept for the host on each NUMA node (default: 1Gi)" in help_text


def test_admin_reservation() -> None:
    _, config = parse(["--node", "n1", "--reserved-cpus", "0-1,16", "--reserved-memory", "4Gi"])
    assert config.reservation == HostReservation(cpus=frozenset({0, 1, 16}), memory_per_numa_node=4 << 30)


def test_bad_reservation_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--node", "n1", "--reserved-cpus", "3-1"])
    assert "--reserved-cpus" in capsys.readouterr().err
