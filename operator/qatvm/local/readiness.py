"""What `qatvm local up` waits for beyond running processes, so that a VM applied the moment it
returns is admitted and placed: admission policies in force, a controller leading."""

from __future__ import annotations

import time

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from qatvm.api.vm import FINALIZER
from qatvm.controller.leader import LEASE_NAME
from qatvm.kube import QatVirtualMachineResource


def wait_for_admission(kube: Client, timeout: float) -> None:
    """Until a new VM gets the agent's finalizer from the API server (a dry run, so nothing is
    stored). A MutatingAdmissionPolicy acts on a custom resource only once the API server has read
    the CRD's schema, which it polls for every 5 s; until then it refuses every VM's create (503)."""
    probe = QatVirtualMachineResource(
        metadata=ObjectMeta(name="qatvm-admission-probe", namespace="default"),
        spec={"memory": "256Mi", "qat": {"count": 1}, "image": {"path": "/var/lib/qatvm/images/probe.qcow2"}},
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            created = kube.create(probe, dry_run=True)
            if FINALIZER in (created.metadata.finalizers or [] if created.metadata else []):
                return
            why = f"a new VM does not get the finalizer {FINALIZER} yet"
        except ApiError as error:
            why = str(error.status.message)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the admission policies of manifests/ are not in force after {timeout:.0f}s: {why}")
        time.sleep(0.2)


def wait_for_leader(kube: Client, namespace: str, timeout: float) -> str:
    """Until a controller holds the lease; returns the holder. A controller answers its health
    check (and its pod is Ready) before it has won the election, and a first attempt that fails
    (the API server not yet reachable from a new pod) is retried only a few seconds later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            holder = kube.get(Lease, LEASE_NAME, namespace=namespace).spec.holderIdentity
            if holder:
                return str(holder)
            why = "the lease has no holder"
        except ApiError as error:
            why = str(error.status.message)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no controller leads after {timeout:.0f}s ({why}); the controller's log says why "
                f"(kubectl logs -n {namespace} -l app.kubernetes.io/component=controller, or DIR/logs/controller.log)"
            )
        time.sleep(0.2)
