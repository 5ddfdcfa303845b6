"""`qatvm agent --state-dir`: where the agent keeps binding records and VM files on its node."""

from __future__ import annotations

from pathlib import Path

import pytest

from qatvm.agent.main import parse


def test_the_default_is_var_lib_qatvm_under_the_host_root(tmp_path: Path) -> None:
    _, config = parse(["--node", "n", "--host-root", str(tmp_path)])
    assert config.state_dir == tmp_path / "var/lib/qatvm"


def test_a_moved_state_dir_is_a_node_path_under_the_host_root(tmp_path: Path) -> None:
    _, config = parse(["--node", "n", "--host-root", str(tmp_path), "--state-dir", "/srv/qatvm"])
    assert config.state_dir == tmp_path / "srv/qatvm"
    _, real = parse(["--node", "n", "--state-dir", "/run/qatvm"])
    assert real.state_dir == Path("/run/qatvm")


def test_a_relative_state_dir_is_refused_saying_why(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parse(["--node", "n", "--state-dir", "qatvm"])
    assert exit.value.code == 2
    assert "--state-dir qatvm: give an absolute path, as the node sees it" in capsys.readouterr().err
