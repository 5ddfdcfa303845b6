"""The control plane is the real thing: persistence, watches, RBAC, GC and namespace deletion."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from qatvm.controlplane.kubeconfig import write_kubeconfig
from qatvm.controlplane.server import ControlPlane
from qatvm.processes import wait_until
from qatvm.testing.kubectl import Kubectl
from minute_watch import MinuteWatch


def vm(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"qat": {"count": 1}, "image": {"path": "/images/base.qcow2"}, **spec},
    }


def test_versions_are_the_built_release(kubectl: Kubectl) -> None:
    versions = kubectl.json("version")
    assert versions["clientVersion"]["gitVersion"].startswith("v1.")
    assert versions["serverVersion"]["gitVersion"] == versions["clientVersion"]["gitVersion"]


def test_custom_resource_round_trip_applies_schema_defaults(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(vm("round-trip", namespace, memory="512Mi"))
    stored = kubectl.json("get", "qvm", "round-trip", "-n", namespace)
    assert stored["spec"] == {
        "qat": {"count": 1, "numa": "prefer"},
        "image": {"path": "/images/base.qcow2"},
        "memory": "512Mi",
        "running": True,
        "vcpus": 1,
        "dedicatedCpus": False,
    }
    # Served from etcd through the watch cache: a second read sees the same object.
    again = kubectl.json("get", "qatvirtualmachines.qatvm.io", "round-trip", "-n", namespace)
    assert again["metadata"]["uid"] == stored["metadata"]["uid"]


def test_status_is_a_subresource(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(vm("sub", namespace))
    # A status written through the main resource is dropped; through /status it sticks.
    kubectl.run("patch", "qvm", "sub", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Running"}}')
    assert "status" not in kubectl.json("get", "qvm", "sub", "-n", namespace)
    kubectl.run(
        "patch", "qvm", "sub", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status":{"phase":"Running"}}',
    )
    assert kubectl.json("get", "qvm", "sub", "-n", namespace)["status"]["phase"] == "Running"


def test_watch_with_bookmarks_stays_open_a_minute(minute_watch: MinuteWatch) -> None:
    """kopf watches with bookmarks; an etcd too old for progress requests breaks exactly this."""
    events, seconds = minute_watch.result()
    types = [event["type"] for event in events]
    assert seconds >= 60, f"watch closed after {seconds:.0f}s"
    assert "ADDED" in types and "DELETED" in types, types
    assert "BOOKMARK" in types, f"no bookmark in {types}"
    assert "ERROR" not in types, events


def test_service_account_token_is_limited_to_its_role(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Any
) -> None:
    kubectl.run("create", "serviceaccount", "reader", "-n", namespace)
    kubectl.run("create", "role", "read-qvm", "-n", namespace, "--verb=get,list", "--resource=qatvirtualmachines.qatvm.io")
    kubectl.run("create", "rolebinding", "reader", "-n", namespace, "--role=read-qvm", f"--serviceaccount={namespace}:reader")
    kubectl.apply(vm("secret-keeper", namespace))
    token = kubectl.run("create", "token", "reader", "-n", namespace).stdout.strip()
    reader = kubectl.with_kubeconfig(
        write_kubeconfig(tmp_path / "reader", control_plane.server, control_plane.ca_file, user="reader", token=token)
    )
    assert reader.json("get", "qvm", "-n", namespace)["items"][0]["metadata"]["name"] == "secret-keeper"
    for denied in (("get", "secrets", "-n", namespace), ("delete", "qvm", "secret-keeper", "-n", namespace), ("get", "qvm", "-n", "default")):
        result = reader.run(*denied, check=False)
        assert result.returncode != 0
        assert "Forbidden" in result.stderr and f"system:serviceaccount:{namespace}:reader" in result.stderr
    assert reader.run("auth", "can-i", "list", "qvm", "-n", namespace, check=False).stdout.strip() == "yes"
    assert reader.run("auth", "can-i", "patch", "qvm", "-n", namespace, check=False).stdout.strip() == "no"


def test_dependents_are_garbage_collected(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(vm("owner", namespace))
    owner_uid = kubectl.json("get", "qvm", "owner", "-n", namespace)["metadata"]["uid"]
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "owned",
                "namespace": namespace,
                "ownerReferences": [
                    {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine", "name": "owner", "uid": owner_uid}
                ],
            },
        }
    )
    kubectl.run("delete", "qvm", "owner", "-n", namespace)
    assert wait_until(lambda: not kubectl.exists("configmap", "owned", "-n", namespace), 60)


def test_namespace_deletion_removes_its_objects(kubectl: Kubectl) -> None:
    kubectl.run("create", "namespace", "doomed")
    kubectl.apply(vm("inside", "doomed"))
    kubectl.run("delete", "namespace", "doomed", "--timeout=60s")
    assert not kubectl.exists("namespace", "doomed")
    left = [item for item in kubectl.json("get", "qvm", "-A")["items"] if item["metadata"]["namespace"] == "doomed"]
    assert left == []


def test_default_service_account_is_created(kubectl: Kubectl, namespace: str) -> None:
    assert wait_until(lambda: kubectl.exists("serviceaccount", "default", "-n", namespace), 30)


@pytest.mark.parametrize("path", ["/readyz", "/livez"])
def test_health_endpoints_report_every_check(control_plane: ControlPlane, path: str) -> None:
    with urllib.request.urlopen(f"{control_plane.server}{path}?verbose", context=control_plane.ssl_context()) as response:
        body = response.read().decode()
    assert "etcd ok" in body and body.rstrip().endswith("passed")


def test_anonymous_requests_are_refused(control_plane: ControlPlane) -> None:
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{control_plane.server}/api/v1/namespaces", context=context)
    assert refused.value.code in (401, 403)
