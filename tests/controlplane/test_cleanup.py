"""However its owner ends, a control plane leaves no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qatvm.processes import pid_alive, wait_until

# Ctrl-C's handler, set even where the test runs with SIGINT ignored (as a shell's background job
# does, and its children inherit): ignored, the signal would not interrupt the owner at all.
OWNER = """
import json, signal, sys, time
from pathlib import Path
from qatvm.controlplane.server import ControlPlane
signal.signal(signal.SIGINT, signal.default_int_handler)
with ControlPlane(Path(sys.argv[1])) as plane:
    print(json.dumps(plane.endpoints().pids), flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["killed", "interrupted"])
def test_owner_ending_stops_every_component(tmp_path: Path, signum: signal.Signals) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "plane")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert owner.stdout is not None
    pids: dict[str, int] = json.loads(owner.stdout.readline())
    assert sorted(pids) == ["etcd", "kube-apiserver", "kube-controller-manager"]
    assert all(pid_alive(pid) for pid in pids.values())
    started = time.monotonic()
    owner.send_signal(signum)
    try:
        owner.wait(30)
    except subprocess.TimeoutExpired:
        owner.kill()  # its components die with it (PR_SET_PDEATHSIG): a failure leaves nothing running
        raise
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids.values()), 15), {
        name: pid for name, pid in pids.items() if pid_alive(pid)
    }
    print(f"{signum.name}: all components gone {time.monotonic() - started:.1f}s after the signal")
