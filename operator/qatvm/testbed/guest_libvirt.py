"""Inside the test guest: start the host's libvirtd, as a node's would run, on this guest's kernel.

The host's root is read-only here, so libvirt's configuration and state folders get tmpfs
mounts of their own, with a qemu.conf that fits a machine with no systemd, no cgroups mounted
and no LSM: QEMU's per-domain mount namespace would need to copy the read-only /dev over
9p, so it is off (`namespaces = [ ]`), and stdout/stderr of QEMU go to plain files rather
than through virtlogd, one daemon fewer to start.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

STATE_DIRS = ("/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
SOCKET = Path("/run/libvirt/libvirt-sock")
URI = "qemu:///system"

QEMU_CONF = """\
namespaces = [ ]
stdio_handler = "file"
security_driver = "none"
"""


def start(timeout: float = 60.0) -> None:
    """Mount the state folders and start libvirtd; idempotent (returns if it already listens)."""
    if SOCKET.exists():
        return
    for directory in STATE_DIRS:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", directory], check=True)
    Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
    Path("/etc/libvirt/libvirtd.conf").write_text("")
    # --daemon: it detaches and closes its output, so the caller's pipes see EOF.
    subprocess.run(["libvirtd", "--daemon"], check=True)
    deadline = time.monotonic() + timeout
    while not SOCKET.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"libvirtd did not create {SOCKET} in {timeout} s")
        time.sleep(0.1)
