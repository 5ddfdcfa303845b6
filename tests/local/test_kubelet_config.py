"""What a real node is told: containerd's TOML, and the overlay of the shipped manifests."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from qatvm.controlplane.binaries import binary
from qatvm.local.kubelet_cluster import overlay
from qatvm.local.kubelet_nodes import RealNode, to_toml
from qatvm.local.nodes import SimulatedNode
from qatvm.paths import project_root


def test_containerd_configuration_reads_back_as_written(tmp_path: Path) -> None:
    node = RealNode(SimulatedNode("node-1", tmp_path / "nodes" / "node-1"), 1, tmp_path)
    config = node._containerd()
    assert tomllib.loads(to_toml(config)) == config
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    # Nothing of containerd's lands in the host's default places.
    assert config["root"].startswith(str(tmp_path)) and cri["cni"]["conf_dir"].startswith(str(tmp_path))


def _render(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    import subprocess

    out = subprocess.run([str(binary("kubectl")), "kustomize", str(directory)], capture_output=True, text=True, check=True)
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out.stdout)}


def test_the_overlay_changes_only_where_the_agent_finds_its_node(tmp_path: Path) -> None:
    shipped = _render(project_root() / "manifests")
    local = _render(overlay(tmp_path))
    assert shipped.keys() == local.keys()
    changed = [key for key in shipped if shipped[key] != local[key]]
    assert changed == [("DaemonSet", "qatvm-agent")]

    pod = local[("DaemonSet", "qatvm-agent")]["spec"]["template"]["spec"]
    shipped_pod = shipped[("DaemonSet", "qatvm-agent")]["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    root = f"{tmp_path}/nodes/$(NODE_NAME)"
    # The simulated node's agent: the production agent, handed the simulation by its command.
    assert shipped_pod["containers"][0]["command"] == ["qatvm", "agent"]
    assert agent["command"] == ["qatvm", "simulation", "agent"]
    assert f"--host-root={root}" in agent["args"]
    assert f"--libvirt-uri=qatvm-test://{root}/hypervisor.xml" in agent["args"]
    # The node files are mounted at the same path as on the host, and nothing else of the host is.
    assert {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v} == {f"{tmp_path}/nodes"}
    assert {"name": "node", "mountPath": f"{tmp_path}/nodes"} in agent["volumeMounts"]
    # Same identity, token, image and security context as on a real cluster.
    for key in ("serviceAccountName", "nodeSelector"):
        assert pod[key] == shipped_pod[key]
    for key in ("image", "securityContext", "env", "livenessProbe"):
        assert agent[key] == shipped_pod["containers"][0][key]
