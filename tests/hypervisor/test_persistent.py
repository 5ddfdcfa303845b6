"""A simulated node keeps its domains across agent restarts, crashes included (qatvm-test:///)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

import qatvm
from qatvm.domain import DomainSpec, build_domain
from qatvm.hypervisor import ConnectionFailed, DomainState
from qatvm.simulation.hypervisor import PersistentTestHypervisor, open_hypervisor

UNRELATED = ("legacy-web", "desktop", "qatvm-looks_ours")

_AGENT_KILLED_MIDWAY = """
import os, signal, sys
from qatvm.domain import DomainSpec, build_domain
from qatvm.simulation.hypervisor import open_hypervisor

started, defined = (DomainSpec.model_validate_json(arg) for arg in sys.argv[2:])
hypervisor = open_hypervisor(sys.argv[1])
hypervisor.define(build_domain(started))
hypervisor.start(started.name)
hypervisor.define(build_domain(defined))
os.kill(os.getpid(), signal.SIGKILL)
"""


def inactive_xml(path: Path) -> dict[str, str]:
    """Each domain's definition, as libvirt's test driver reads it from `path` on its own."""
    connection = libvirt.open(f"test://{path}")
    try:
        return {d.name(): d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for d in connection.listAllDomains(0)}
    finally:
        connection.close()


def test_domains_outlive_an_agent_killed_with_sigkill(tmp_path: Path, make_spec: Callable[..., DomainSpec]) -> None:
    state_file = tmp_path / "node-1" / "hypervisor.xml"
    started, defined = make_spec("web"), make_spec("batch", hostdevs=("0000:3f:00.1",))
    agent = subprocess.run(
        [
            sys.executable,
            "-c",
            _AGENT_KILLED_MIDWAY,
            f"qatvm-test://{state_file}",
            started.model_dump_json(),
            defined.model_dump_json(),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(qatvm.__file__).parents[1])},
        capture_output=True,
        text=True,
        check=False,
    )
    assert agent.returncode == -signal.SIGKILL, agent.stderr

    with open_hypervisor(f"qatvm-test://{state_file}") as restarted:
        owned = {d.name: d for d in restarted.owned_domains()}
        assert set(owned) == {started.name, defined.name}
        assert owned[started.name].state is DomainState.RUNNING
        assert owned[defined.name].state is DomainState.SHUTOFF
        assert owned[defined.name].owner == defined.owner
        bdfs = [h.source.address.bdf for h in restarted.domain(started.name).devices.hostdevs]
        assert bdfs == list(started.hostdevs)


def test_an_agent_restarted_on_a_crashed_node_cleans_up_only_its_own(crashed_node: Path) -> None:
    unrelated_before = {name: xml for name, xml in inactive_xml(crashed_node).items() if name in UNRELATED}
    uri = f"qatvm-test://{crashed_node}"

    with open_hypervisor(uri) as agent:
        owned = {d.owner.uid: d for d in agent.owned_domains()}
        assert {(d.name, d.state) for d in owned.values()} == {
            ("qatvm-team-a_db", DomainState.RUNNING),
            ("qatvm-team-b_cache", DomainState.SHUTOFF),
            ("qatvm-team-a_gone", DomainState.PAUSED),
        }
        # What the agent's reconciliation decides: these two VMs still exist, the third is gone.
        existing_vms = {"7c9e6679-7425-40de-944b-e07fc1f90ae7", "9b2d1c4e-3a5f-4e6d-8c7b-1a2b3c4d5e6f"}
        for uid, domain in owned.items():
            if uid not in existing_vms:
                agent.stop(domain.name, timeout=1)
                agent.undefine(domain.name)
        agent.start("qatvm-team-b_cache")

    with open_hypervisor(uri) as next_agent:
        assert {(d.name, d.state) for d in next_agent.owned_domains()} == {
            ("qatvm-team-a_db", DomainState.RUNNING),
            ("qatvm-team-b_cache", DomainState.RUNNING),
        }
        assert next_agent.state("legacy-web") is DomainState.RUNNING
        assert next_agent.state("desktop") is DomainState.SHUTOFF
        assert next_agent.state("qatvm-looks_ours") is DomainState.RUNNING
    after = inactive_xml(crashed_node)
    assert {name: after[name] for name in UNRELATED} == unrelated_before


def test_a_plain_test_uri_never_writes_its_file(crashed_node: Path, make_spec: Callable[..., DomainSpec]) -> None:
    """Persistence is chosen by the URI scheme alone: test:///FILE stays libvirt's read-only seed."""
    before = crashed_node.read_bytes()
    with open_hypervisor(f"test://{crashed_node}") as hypervisor:
        assert not isinstance(hypervisor, PersistentTestHypervisor)
        hypervisor.define(build_domain(make_spec("scratch")))
        hypervisor.destroy("qatvm-team-a_db")
    assert crashed_node.read_bytes() == before
    with open_hypervisor(f"test://{crashed_node}") as hypervisor:
        assert hypervisor.state("qatvm-team-a_scratch") is None
        assert hypervisor.state("qatvm-team-a_db") is DomainState.RUNNING


def test_a_new_node_starts_empty_and_its_file_is_libvirts_format(
    tmp_path: Path, make_spec: Callable[..., DomainSpec]
) -> None:
    state_file = tmp_path / "missing" / "dir" / "hypervisor.xml"
    spec = make_spec("first")
    with open_hypervisor(f"qatvm-test://{state_file}") as hypervisor:
        assert hypervisor.owned_domains() == []
        hypervisor.define(build_domain(spec))
        hypervisor.start(spec.name)
    # libvirt itself, not our code, reads the file back.
    assert list(inactive_xml(state_file)) == [spec.name]
    assert not list(state_file.parent.glob("*.partial"))


@pytest.mark.parametrize("uri", ["qatvm-test://host/node.xml", "qatvm-test:node.xml"])
def test_a_persistent_uri_names_an_absolute_file(uri: str) -> None:
    with pytest.raises(ConnectionFailed, match="write qatvm-test:///ABSOLUTE/PATH.xml"):
        open_hypervisor(uri)
