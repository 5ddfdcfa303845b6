"""Every command in docs/ runs: blocks marked `sh run` are executed, in order, against a
local cluster started with --monitoring, so the documents cannot drift from the code.

Blocks marked `sh host` change a real node (boot options, kernel modules, VFs); they are
checked for syntax only, and the read-only checks beside them run against a simulated node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qatvm.paths import project_root
from qatvm.testing.cluster import E2eCluster
from qatvm.testing.installed import require_commands

ROOT = project_root()
DOCS = ROOT / "docs"
# The order a reader follows: install before operating, the examples deleted before gitops uses one.
ORDER = ("install.md", "operate.md", "gitops.md", "metrics.md")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in FENCE.findall(path.read_text())]


def test_every_shell_block_is_marked_and_every_doc_is_run() -> None:
    for path in sorted(DOCS.glob("*.md")):
        for info, body in blocks(path):
            if info.split()[:1] in (["sh"], ["bash"], ["shell"], ["console"], []):
                assert info in ("sh run", "sh host"), f"{path.name}: a shell block must be `sh run` or `sh host`:\n{body}"
            if info == "yaml":
                assert yaml.safe_load(body), f"{path.name}: a YAML block that does not parse"
        if any(info == "sh run" for info, _ in blocks(path)):
            assert path.name in ORDER, f"{path.name} has commands but is not in ORDER"


def test_host_blocks_are_valid_shell() -> None:
    for path in sorted(DOCS.glob("*.md")):
        for info, body in blocks(path):
            if info == "sh host":
                checked = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True, timeout=10)
                assert checked.returncode == 0, f"{path.name}: {checked.stderr}"


def _environment(cluster: E2eCluster) -> dict[str, str]:
    assert cluster.local is not None
    state_dir = cluster.local.state_dir
    return {
        **os.environ,
        "KUBECONFIG": str(state_dir / "kubeconfig"),
        "QATVM_STATE_DIR": str(state_dir),
        "PATH": os.pathsep.join([str(state_dir / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SYSFS": str(cluster.local.root("node-1") / "sys"),
    }


@pytest.mark.parametrize("doc", ORDER)
def test_doc_commands_run(doc: str, monitored: E2eCluster) -> None:
    require_commands({"curl": "curl", "jq": "jq"})
    if doc == "gitops.md":
        # What an Argo CD install has: its namespace and its argocd-cm.
        monitored.kubectl.run("create", "namespace", "argocd")
        monitored.kubectl.run("create", "configmap", "argocd-cm", "-n", "argocd", "--from-literal=url=https://argocd.example.com")
    env = _environment(monitored)
    runnable = [body for info, body in blocks(DOCS / doc) if info == "sh run"]
    assert runnable, f"{doc} has no commands to run"
    for body in runnable:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{doc}: exited {done.returncode}\n--- block:\n{body}\n--- stdout:\n{done.stdout}\n--- stderr:\n{done.stderr}"
        print(done.stdout)
