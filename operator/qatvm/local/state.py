"""The local cluster's state file: what the supervisor runs, read by `local status` and `down`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from qatvm.processes import pid_alive

STATE_FILE = "cluster.json"


def default_state_dir() -> Path:
    override = os.environ.get("QATVM_STATE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "qatvm" / "local"


class ClusterState(BaseModel):
    supervisor_pid: int
    ready: bool = False
    error: str | None = None
    server: str | None = None
    kubeconfig: str | None = None
    kubectl_dir: str | None = None
    # The URL of Prometheus when started with --monitoring.
    prometheus: str | None = None
    nodes: list[str] = Field(default_factory=list)
    components: dict[str, int] = Field(default_factory=dict)
    startup_seconds: float | None = None

    @staticmethod
    def path(state_dir: Path) -> Path:
        return state_dir / STATE_FILE

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        try:
            return cls.model_validate_json(cls.path(state_dir).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def save(self, state_dir: Path) -> None:
        # Written whole then renamed, so a reader never sees half a file.
        target = self.path(state_dir)
        scratch = target.with_suffix(".tmp")
        scratch.write_text(self.model_dump_json(indent=2))
        scratch.replace(target)

    def running(self) -> bool:
        """Whether the supervisor still runs; after a reboot or a crash its pid may belong to
        another program by now, so the command line must be the supervisor's too."""
        if not pid_alive(self.supervisor_pid):
            return False
        try:
            cmdline = Path(f"/proc/{self.supervisor_pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False
        return b"qatvm.local.supervisor" in cmdline

    def exports(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig} PATH={self.kubectl_dir}:$PATH"
