"""Boot the real-kernel test guest under QEMU and run commands in it.

The guest is a two-socket (two NUMA nodes) q35 machine with an emulated Intel IOMMU and QEMU's NVMe controller with SR-IOV
on a PCIe root port: the only SR-IOV device QEMU emulates, and enough to drive the same sysfs
files (sriov_numvfs, driver_override, bind, unbind, drivers_probe) and /dev/vfio that a QAT VF
goes through. The host's root is shared read-only, so a command is any host program, run with
this guest's kernel.
"""

from __future__ import annotations

import json
import shlex
import site
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import qatvm
from qatvm.testbed.guest_agent import PORT_NAME
from qatvm.testbed.guest_image import GuestImage
from qatvm.testbed.nvme_sriov import QUEUES_PER_VF

# Two sockets, each its own NUMA node, so discovery reads a real topology and domains can be bound.
NUMA_NODES = 2


class GuestError(RuntimeError):
    """The guest did not boot, or a request got no answer; boot failures end with the console's tail."""


class Guest:
    """One running guest. Use as a context manager; `run` is not thread-safe."""

    def __init__(
        self,
        image: GuestImage,
        workdir: Path,
        *,
        iommu: bool = True,
        vfs: int = 2,
        memory_mib: int = 2048,
        cpus: int = 2,
        boot_timeout: float = 180.0,
    ) -> None:
        self.image = image
        self.workdir = workdir
        self.iommu = iommu
        self.vfs = vfs
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.console_log = workdir / "console.log"
        self.boot_seconds = 0.0
        self.kernel_release = ""
        self._qemu: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._pending = b""

    @staticmethod
    def pythonpath() -> str:
        """The checkout the host runs (so the guest tests the same code), then site-packages.

        The agent starts with -S: `site` would run every .pth file, which costs more than a
        second of emulated CPU per interpreter and adds nothing the path below lacks.
        """
        return ":".join([str(Path(qatvm.__file__).resolve().parents[1]), *site.getsitepackages()])

    def kernel_command_line(self) -> str:
        # Debian's kernel turns the Intel IOMMU on by itself (INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF),
        # so "off" is said explicitly: the state of a kernel that defaults off, booted without
        # intel_iommu=on, as most distributions' kernels are.
        args = ["console=ttyS0", "panic=-1", "loglevel=4", f"intel_iommu={'on' if self.iommu else 'off'}"]
        args += [f"qatvm.python={sys.executable}", f"qatvm.pythonpath={self.pythonpath()}"]
        return " ".join(args)

    def numa_arguments(self) -> list[str]:
        """NUMA nodes as a multi-socket server has them, a socket (its CPUs) and an equal share of
        memory each: the guest's kernel then lays out devices/system/node as it does there."""
        arguments = ["-smp", f"{self.cpus},sockets={NUMA_NODES},cores={self.cpus // NUMA_NODES},threads=1"]
        for node in range(NUMA_NODES):
            arguments += ["-object", f"memory-backend-ram,id=mem{node},size={self.memory_mib // NUMA_NODES}M"]
            arguments += ["-numa", f"node,nodeid={node},memdev=mem{node}"]
            arguments += ["-numa", f"cpu,node-id={node},socket-id={node}"]
        return arguments

    def qemu_command(self, socket_path: Path) -> list[str]:
        return [
            "qemu-system-x86_64",
            "-nodefaults",
            "-display", "none",
            "-no-reboot",
            "-machine", "q35",
            # Software emulation only: these machines' /dev/kvm opens but cannot run this guest
            # (QEMU aborts on MSRs with `-cpu max`, hangs with `-cpu host`), and TCG needs no
            # kernel-irqchip=split for the IOMMU's interrupt remapping.
            "-accel", "tcg",
            "-cpu", "max",
            "-m", str(self.memory_mib),
            *self.numa_arguments(),
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", self.kernel_command_line(),
            "-chardev", f"file,id=console,path={self.console_log}",
            "-serial", "chardev:console",
            # The IOMMU is always there, as on a real server; `iommu=False` only turns the
            # kernel's switch (intel_iommu=) off. Interrupt remapping, because vfio's type1
            # backend refuses to hand out a group without it (allow_unsafe_interrupts).
            "-device", "intel-iommu,intremap=on",
            "-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1",
            "-device", "nvme-subsys,id=nvmesubsys0",
            "-device", (
                f"nvme,serial=qatvm0,subsys=nvmesubsys0,bus=rp0,sriov_max_vfs={self.vfs},"
                f"sriov_vq_flexible={QUEUES_PER_VF * self.vfs},sriov_vi_flexible={self.vfs}"
            ),
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=cmd,path={socket_path}",
            "-device", f"virtserialport,chardev=cmd,name={PORT_NAME}",
        ]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        socket_path = self.workdir / "cmd.sock"
        socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(1)
        started = time.monotonic()
        command = self.qemu_command(socket_path)
        (self.workdir / "qemu.cmd").write_text(shlex.join(command) + "\n")
        with open(self.workdir / "qemu.stderr", "wb") as stderr:
            self._qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        try:
            listener.settimeout(30)
            self._channel, _ = listener.accept()
            hello = self._receive(deadline=started + self.boot_timeout)
        except (OSError, GuestError) as error:
            self.close()
            raise GuestError(f"guest did not boot: {error}\n{self.diagnostics()}") from error
        finally:
            listener.close()
        self.boot_seconds = time.monotonic() - started
        self.kernel_release = hello["ready"]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._qemu is not None:
            self._qemu.terminate()
            try:
                self._qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._qemu.kill()
                self._qemu.wait()
            self._qemu = None

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        input: str = "",
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the guest (as root, in the host's userland) and wait for it."""
        return self._request(argv, {"op": "run", "argv": argv, "env": env or {}, "input": input, "timeout": timeout})

    def sh(self, script: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], timeout=timeout)

    def preload(self, *modules: str, path: Path | None = None) -> None:
        """Import modules once into the agent (after putting `path` first on its sys.path), so
        that every later `python` snippet has them, and can import from `path` too."""
        request = {"op": "preload", "modules": list(modules), "path": str(path) if path else None, "timeout": 120}
        done = self._request(["preload", *modules], request)
        if done.returncode != 0:
            raise GuestError(f"cannot import {modules} in the guest:\n{done.stderr}")

    def python(self, code: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run Python source in a fork of the guest agent (this checkout's qatvm importable)."""
        return self._request(["python", "-c", code], {"op": "python", "code": code, "timeout": timeout})

    def enable_vfs(self) -> tuple[str, list[str]]:
        """Enable the NVMe controller's VFs, bound to nvme; returns the PF's and VFs' addresses."""
        done = self.python(f"from qatvm.testbed import nvme_sriov\nnvme_sriov.main([{str(self.vfs)!r}])", timeout=120)
        if done.returncode != 0:
            raise GuestError(f"cannot enable the VFs:\n{done.stderr}")
        layout = json.loads(done.stdout)
        return layout["pf"], layout["vfs"]

    def _request(self, argv: list[str], request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        if self._channel is None:
            raise GuestError("guest is not running")
        self._channel.sendall(json.dumps(request).encode() + b"\n")
        # The agent enforces the timeout; the margin covers a slow guest answering it.
        reply = self._receive(deadline=time.monotonic() + request["timeout"] + 30)
        if "error" in reply:
            raise GuestError(
                f"{shlex.join(argv)}: {reply['error']}\nstdout: {reply.get('stdout', '')}\nstderr: {reply.get('stderr', '')}"
            )
        return subprocess.CompletedProcess(argv, reply["returncode"], reply["stdout"], reply["stderr"])

    def diagnostics(self) -> str:
        parts = []
        for name in ("qemu.stderr", "console.log"):
            path = self.workdir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {path} (last lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def _receive(self, deadline: float) -> dict[str, Any]:
        assert self._channel is not None
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestError("no answer from the guest agent in time")
            if self._qemu is not None and self._qemu.poll() is not None:
                raise GuestError(f"qemu exited with status {self._qemu.returncode}")
            self._channel.settimeout(min(remaining, 1.0))
            try:
                chunk = self._channel.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError("the guest closed the command channel")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply
