"""What `qatvm local up` waits for beyond running processes, so that a VM applied the moment it
returns is admitted and placed: admission policies in force, a controller leading."""

from __future__ import annotations

from collections.abc import Callable

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from qatvm.api.vm import FINALIZER
from qatvm.controller.leader import LEASE_NAME
from qatvm.kube import QatVirtualMachineResource
from qatvm.processes import wait_until


def _wait(what: str, check: Callable[[], str | None], timeout: float, hint: str = "") -> None:
    """Until `check` says nothing is missing (None); else it says what is, and so does the error."""
    missing = "not asked yet"

    def done() -> bool:
        nonlocal missing
        try:
            missing = check()
        except ApiError as error:
            missing = str(error.status.message)
        return missing is None

    if not wait_until(done, timeout, interval=0.2):
        raise TimeoutError(f"{what} after {timeout:.0f}s: {missing}{hint}")


def wait_for_admission(kube: Client, timeout: float) -> None:
    """Until a new VM gets the agent's finalizer from the API server (a dry run, so nothing is
    stored). A MutatingAdmissionPolicy acts on a custom resource only once the API server has read
    the CRD's schema, which it polls for every 5 s; until then it refuses every VM's create (503)."""
    probe = QatVirtualMachineResource(
        metadata=ObjectMeta(name="qatvm-admission-probe", namespace="default"),
        spec={"memory": "256Mi", "qat": {"count": 1}, "image": {"path": "/var/lib/qatvm/images/probe.qcow2"}},
    )

    def finalized() -> str | None:
        created = kube.create(probe, dry_run=True)
        if FINALIZER in (created.metadata.finalizers or [] if created.metadata else []):
            return None
        return f"a new VM does not get the finalizer {FINALIZER} yet"

    _wait("the admission policies of manifests/ are not in force", finalized, timeout)


def wait_for_leader(kube: Client, namespace: str, timeout: float) -> None:
    """Until a controller holds the lease. A controller answers its health check (and its pod is
    Ready) before it has won the election, and a first attempt that fails (the API server not yet
    reachable from a new pod) is retried only a few seconds later."""

    def held() -> str | None:
        lease = kube.get(Lease, LEASE_NAME, namespace=namespace)
        return None if lease.spec and lease.spec.holderIdentity else "the lease has no holder"

    _wait("no controller leads", held, timeout, hint=(
        f"; the controller's log says why (kubectl logs -n {namespace} -l app.kubernetes.io/component=controller, "
        "or DIR/logs/controller.log)"
    ))
