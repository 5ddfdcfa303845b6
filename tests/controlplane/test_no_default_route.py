"""The control plane starts on a machine with no default route (no network card at all), the
state of an isolated server or the real-kernel test guest: kube-apiserver would otherwise pick
its advertise address from the default route's interface, and refuse to start without one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from qatvm.controlplane.server import ADVERTISE_ADDRESS

# Runs in a network namespace of its own, holding only a loopback device.
OWNER = """
import json, subprocess, sys
from pathlib import Path
from qatvm.controlplane.server import ControlPlane
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
routes = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=True).stdout
with ControlPlane(Path(sys.argv[1])) as plane:
    endpoints = subprocess.run(
        [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), "get", "endpointslices", "-n", "default",
         "-l", "kubernetes.io/service-name=kubernetes", "-o", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    print(json.dumps({"default_routes": json.loads(routes or "[]"), "slices": json.loads(endpoints)}))
"""


def test_starts_without_a_default_route_and_advertises_the_reserved_address(tmp_path: Path) -> None:
    assert shutil.which("unshare") and shutil.which("ip"), "needs unshare and ip (Debian: util-linux, iproute2)"
    done = subprocess.run(
        ["unshare", "--map-root-user", "--net", sys.executable, "-c", OWNER, str(tmp_path / "plane")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["default_routes"] == []
    addresses = [a for s in seen["slices"]["items"] for e in s.get("endpoints", []) for a in e["addresses"]]
    assert addresses == [ADVERTISE_ADDRESS]
