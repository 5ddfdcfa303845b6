"""The operator's own identities on the local cluster: its RBAC from manifests/, and tokens.

The controller and the agents run with tokens of their ServiceAccounts, never as admin, so the
local cluster exercises exactly the rights a real cluster grants them. Each agent's token is
bound to its Node object, which puts the node's name in the token, as a pod's token has it
on a real node; manifests/agent-policy.yaml confines the agent to that node.
"""

from __future__ import annotations

from pathlib import Path

from lightkube import Client
from lightkube.codecs import load_all_yaml
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount

from qatvm.controlplane.kubeconfig import write_kubeconfig
from qatvm.paths import project_root

NAMESPACE = "qatvm-system"
CONTROLLER_SA = "qatvm-controller"
AGENT_SA = "qatvm-agent"
TOKEN_SECONDS = 7 * 24 * 3600
# The manifests that grant and limit rights (tenant roles included); the Deployment and DaemonSet are for real clusters only.
RBAC_MANIFESTS = (
    "namespace.yaml", "controller-rbac.yaml", "agent-rbac.yaml", "agent-policy.yaml", "vm-policy.yaml",
    "vm-finalizer-policy.yaml", "tenant-roles.yaml", "agent-lease-policy.yaml",
)


def apply_rbac(kube: Client) -> None:
    for name in RBAC_MANIFESTS:
        for obj in load_all_yaml((project_root() / "manifests" / name).read_text()):
            kube.apply(obj, force=True)


def _token(kube: Client, account: str, bound_node: str | None = None) -> str:
    spec = TokenRequestSpec(audiences=[], expirationSeconds=TOKEN_SECONDS)
    if bound_node:
        spec.boundObjectRef = BoundObjectReference(apiVersion="v1", kind="Node", name=bound_node)
    request = ServiceAccount.Token(metadata=ObjectMeta(name=account, namespace=NAMESPACE), spec=spec)
    issued = kube.create(request, account, namespace=NAMESPACE)
    assert issued.status is not None
    return str(issued.status.token)


def service_account_kubeconfig(
    kube: Client, path: Path, server: str, ca_file: Path, account: str, bound_node: str | None = None
) -> Path:
    return write_kubeconfig(
        path, server, ca_file, user=account, token=_token(kube, account, bound_node), namespace=NAMESPACE
    )
