"""A watch with bookmarks held open for a minute against the session's control plane.

Only its check needs it, but a minute of waiting alone would be a minute of the test run: the
session starts it first (tests/conftest.py) and the check collects the result, by which time the
tests in between have run beside it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from qatvm.controlplane.server import ControlPlane
from qatvm.testing.kubectl import Kubectl

NAMESPACE = "minute-watch"
SECONDS = 65


class MinuteWatch:
    def __init__(self, plane: ControlPlane, kubectl: Kubectl) -> None:
        self.plane = plane
        self.kubectl = kubectl
        self._events: list[dict[str, Any]] = []
        self._seconds = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="minute-watch", daemon=True)

    def start(self) -> None:
        self.kubectl.run("create", "namespace", NAMESPACE)
        self._thread.start()
        time.sleep(2)  # the watch is open before the VM exists
        self.kubectl.apply({
            "apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine",
            "metadata": {"name": "watched", "namespace": NAMESPACE},
            "spec": {"qat": {"count": 1}, "image": {"path": "/images/base.qcow2"}},
        })
        # Deleted from a timer, so the tests that run meanwhile are not held up.
        deletion = threading.Timer(20, self.kubectl.run, ("delete", "qvm", "watched", "-n", NAMESPACE))
        deletion.daemon = True  # a session that ends sooner does not wait for it
        deletion.start()

    def result(self) -> tuple[list[dict[str, Any]], float]:
        """The events and how long the watch stayed open, once it has ended."""
        self._thread.join(SECONDS + 60)
        assert not self._thread.is_alive(), f"the watch is still open after {SECONDS + 60}s"
        if self._error is not None:
            raise self._error
        return self._events, self._seconds

    def _run(self) -> None:
        path = f"/apis/qatvm.io/v1alpha1/namespaces/{NAMESPACE}/qatvirtualmachines"
        url = f"{self.plane.server}{path}?watch=true&allowWatchBookmarks=true&timeoutSeconds={SECONDS}"
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, context=self.plane.ssl_context(), timeout=SECONDS + 30) as stream:
                for line in stream:
                    self._events.append(json.loads(line))
        except BaseException as error:  # noqa: BLE001 - handed to the check
            self._error = error
        self._seconds = time.monotonic() - started
