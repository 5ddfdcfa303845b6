"""A missing install is a failure under CI and a skip elsewhere, and both name the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from qatvm.testing.installed import require_commands, require_paths


def test_under_ci_a_missing_command_fails_and_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no-such-qatvm-tool not found \(Debian: some-package;"):
        require_commands({"no-such-qatvm-tool": "some-package", "sh": "dash"})


def test_elsewhere_a_missing_path_skips_and_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CI", raising=False)
    absent = tmp_path / "etc/libvirt"
    with pytest.raises(pytest.skip.Exception, match=rf"{absent} missing \(Debian: libvirt-daemon-system;"):
        require_paths({str(absent): "libvirt-daemon-system", str(tmp_path): "anything"})


def test_what_is_installed_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    require_commands({"sh": "dash"})
    require_paths({str(tmp_path): "anything"})
