"""Runs inside the real-kernel test guest and executes the host's requests, one at a time.

The init script starts it chrooted into the host's read-only root, so requests see the host's
programs and the checkout, and this guest's kernel, /sys and /dev. Requests and replies are
JSON lines on a virtio-serial port (named PORT_NAME): unlike the serial console, nothing else
writes to it, so no kernel message can corrupt a reply.

Three kinds of request:
- `run`: a program, as with subprocess.run.
- `preload`: import modules into this process once (optionally adding a folder to sys.path).
- `python`: source code, run in a fork of this process. Under software emulation a fresh
  interpreter costs seconds and importing pydantic and the project more; a fork inherits the
  preloaded modules for free and still isolates each snippet's state, crashes and timeout.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PORT_NAME = "qatvm.cmd"


def find_port(name: str) -> Path:
    for port in Path("/sys/class/virtio-ports").iterdir():
        if (port / "name").read_text().strip() == name:
            return Path("/dev") / port.name
    raise FileNotFoundError(f"no virtio-serial port named {name}")


def run(request: dict[str, Any]) -> dict[str, Any]:
    try:
        done = subprocess.run(
            request["argv"],
            input=request["input"],
            capture_output=True,
            text=True,
            errors="replace",
            env={**os.environ, **request["env"]},
            timeout=request["timeout"],
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        return {"error": f"timed out after {expired.timeout} s", "stdout": _text(expired.stdout), "stderr": _text(expired.stderr)}
    except OSError as error:
        return {"error": f"cannot run {request['argv'][0]}: {error}"}
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def preload(request: dict[str, Any]) -> dict[str, Any]:
    if request["path"] is not None:
        sys.path.insert(0, request["path"])
    try:
        for module in request["modules"]:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import error is the host's to see, with its traceback
        return {"returncode": 1, "stdout": "", "stderr": traceback.format_exc()}
    return {"returncode": 0, "stdout": "", "stderr": ""}


def python(request: dict[str, Any]) -> dict[str, Any]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        status = 0
        try:
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            exec(compile(request["code"], "<guest snippet>", "exec"), {"__name__": "__main__"})  # noqa: S102
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else (exit.code is not None)
        except BaseException:  # noqa: BLE001 - reported like an uncaught exception in `python -c`
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    output = {out_r: bytearray(), err_r: bytearray()}
    selector = selectors.DefaultSelector()
    for fd in output:
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + request["timeout"]
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=deadline - time.monotonic()):
            chunk = os.read(key.fd, 65536)
            if chunk:
                output[key.fd] += chunk
            else:
                selector.unregister(key.fd)
    timed_out = bool(selector.get_map())
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    for fd in output:
        os.close(fd)
    stdout, stderr = (output[fd].decode(errors="replace") for fd in (out_r, err_r))
    if timed_out:
        return {"error": f"timed out after {request['timeout']} s", "stdout": stdout, "stderr": stderr}
    return {"returncode": os.waitstatus_to_exitcode(status), "stdout": stdout, "stderr": stderr}


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


HANDLERS = {"run": run, "preload": preload, "python": python}


def main() -> None:
    fd = os.open(find_port(PORT_NAME), os.O_RDWR)
    with os.fdopen(fd, "r+b", buffering=0) as channel:
        channel.write(json.dumps({"ready": os.uname().release}).encode() + b"\n")
        pending = b""
        while True:
            chunk = channel.read(65536)
            if not chunk:
                return  # the host closed its end: the guest is done
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                reply = HANDLERS[request["op"]](request)
                channel.write(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    print(f"qatvm guest agent on {sys.executable}", flush=True)
    main()
