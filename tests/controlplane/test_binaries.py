"""The build of the control plane: versions from go.mod, a cache keyed by them, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qatvm.controlplane.binaries import BuildError, binary, bundles, kubernetes_bundle, required_version


def test_versions_come_from_the_wrapper_modules() -> None:
    kube = kubernetes_bundle()
    assert kube.version == required_version(kube.module_dir / "go.mod", "k8s.io/kubernetes")
    assert kube.version in kube.directory.name and kube.directory.name.startswith("kubernetes-")
    go_mod = (kube.module_dir / "go.mod").read_text()
    # Every staging module is pinned to the release of the same minor version.
    staging_version = "v0." + kube.version.removeprefix("v1.")
    assert f"k8s.io/api => k8s.io/api {staging_version}" in go_mod


def test_required_version_names_a_missing_module(tmp_path: Path) -> None:
    go_mod = tmp_path / "go.mod"
    go_mod.write_text("module x\n\ngo 1.26\n")
    with pytest.raises(BuildError, match="does not require k8s.io/kubernetes"):
        required_version(go_mod, "k8s.io/kubernetes")


def test_a_cached_build_is_not_rebuilt() -> None:
    built = subprocess.run([sys.executable, "-m", "qatvm", "build"], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    for bundle in bundles():
        assert f"{bundle.name} {bundle.version}: cached in {bundle.directory}" in built.stderr
    assert binary("kubectl").is_file()


def test_an_unbuilt_cache_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QATVM_CACHE_DIR", str(tmp_path))
    with pytest.raises(BuildError, match=r"not built yet: run `qatvm build`"):
        binary("kube-apiserver")
    listed = subprocess.run(
        [sys.executable, "-m", "qatvm", "build", "--print-dir"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "QATVM_CACHE_DIR": str(tmp_path)},
    )
    assert [Path(line).parent.parent for line in listed.stdout.split()] == [tmp_path] * len(bundles())


def test_a_cached_build_runs_without_go(tmp_path: Path) -> None:
    """A machine that only runs the control plane (a server, the real-kernel guest sharing the
    cache) has no Go: with every binary cached, nothing asks for it."""
    for bundle in bundles():
        assert bundle.is_built(), f"run `qatvm build` first: {bundle.directory} is empty"
    without_go = {**os.environ, "PATH": str(tmp_path)}
    built = subprocess.run([sys.executable, "-m", "qatvm", "build"], capture_output=True, text=True, timeout=60, env=without_go)
    assert built.returncode == 0, built.stderr
    assert "cached in" in built.stderr


def test_an_unbuilt_cache_without_go_names_the_toolchain(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "QATVM_CACHE_DIR": str(tmp_path / "cache")}
    built = subprocess.run([sys.executable, "-m", "qatvm", "build"], capture_output=True, text=True, timeout=60, env=env)
    assert built.returncode == 1
    assert "the Go toolchain is not on PATH" in built.stderr
def test_node_binaries_are_built_only_when_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QATVM_CACHE_DIR", str(tmp_path))
    with pytest.raises(BuildError, match=r"kubelet v1\.37\.\d+ is not built yet: run `qatvm build --kubelet`"):
        binary("kubelet")
    env = {**os.environ, "QATVM_CACHE_DIR": str(tmp_path)}
    listed = subprocess.run(
        [sys.executable, "-m", "qatvm", "build", "--print-dir", "--kubelet"], capture_output=True, text=True, timeout=60, env=env
    )
    names = [Path(line).name for line in listed.stdout.split()]
    # The node bundle is the same Kubernetes version from the same wrapper module.
    assert len(names) == len(bundles()) + 1 and names[-1] == names[1].replace("kubernetes-", "kubernetes-node-")
