"""coordination.k8s.io Leases as qatvm uses them: the controller's election, and one per node.

Each node's agent renews a Lease named after the node in `NODE_LEASE_NAMESPACE`, as the kubelet
does in kube-node-lease; the controller reads their age to tell a lost node from a live one.
"""

from __future__ import annotations

import datetime

from lightkube.resources.coordination_v1 import Lease

# Apart from qatvm-system: node names are up to 253 characters, so each Lease can carry its
# node's name unchanged, and the agents' rights here reach no other Lease.
NODE_LEASE_NAMESPACE = "qatvm-node-lease"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def micro_time(moment: datetime.datetime) -> str:
    """A Lease's MicroTime as the API server parses it: always six fraction digits."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renewed(lease: Lease) -> datetime.datetime | None:
    """When the lease was last renewed (or taken); None if never."""
    spec = lease.spec
    if spec is None:
        return None
    return spec.renewTime or spec.acquireTime
