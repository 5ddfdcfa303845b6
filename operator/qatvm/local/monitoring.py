"""`qatvm local up --monitoring`: a real Prometheus (Debian's) scraping the controller and agents.

It listens on loopback only and keeps its configuration and data under `DIR/monitoring/`; it
is one of the supervisor's children, so it stops with the cluster like every other component.
"""

from __future__ import annotations

import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qatvm.processes import ManagedProcess, free_port

# Short enough that a test sees a change within seconds; the local cluster is small.
SCRAPE_SECONDS = 2


@dataclass(frozen=True)
class Target:
    component: str
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def scrape_config(controller: Target, agents: list[Target]) -> dict[str, Any]:
    def job(name: str, targets: list[Target]) -> dict[str, Any]:
        return {
            "job_name": name,
            "static_configs": [{"targets": [t.address], "labels": {"component": t.component}} for t in targets],
        }

    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [job("qatvm-controller", [controller]), job("qatvm-agent", agents)],
    }


class Prometheus:
    def __init__(self, state_dir: Path, controller: Target, agents: list[Target]) -> None:
        self.directory = state_dir / "monitoring"
        self.port = free_port()
        self.controller = controller
        self.agents = agents

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def process(self, logs: Path) -> ManagedProcess:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("--monitoring needs Prometheus: install the Debian package `prometheus`")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.controller, self.agents), sort_keys=False))
        return ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=7d",
            ],
            logs / "prometheus.log",
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False
