"""Bad QatVirtualMachines are refused by the real API server with a message naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from qatvm.testing.kubectl import Kubectl

GOOD: dict[str, Any] = {
    "apiVersion": "qatvm.io/v1alpha1",
    "kind": "QatVirtualMachine",
    "metadata": {"name": "bad"},
    "spec": {"vcpus": 2, "memory": "1Gi", "qat": {"count": 2}, "image": {"path": "/images/base.qcow2"}},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = obj["spec"]
        for key in parents:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(leaf)
        else:
            target[leaf] = value
    return obj


BAD = [
    pytest.param(with_spec(qat__count=0), "spec.qat.count", "should be greater than or equal to 1", id="count-zero"),
    pytest.param(with_spec(qat__count=65), "spec.qat.count", "should be less than or equal to 64", id="count-too-many"),
    pytest.param(with_spec(qat__services=["sym", "crc"]), "spec.qat.services[1]", 'Unsupported value: "crc"', id="unknown-service"),
    pytest.param(with_spec(qat__generation="5xxx"), "spec.qat.generation", 'Unsupported value: "5xxx"', id="unknown-generation"),
    pytest.param(with_spec(qat__numa="always"), "spec.qat.numa", 'Unsupported value: "always"', id="unknown-numa"),
    pytest.param(with_spec(memory="lots"), "spec.memory", "must be a Kubernetes quantity", id="memory-not-quantity"),
    pytest.param(with_spec(memory="64Mi"), "spec.memory", "must be at least 128Mi", id="memory-too-small"),
    pytest.param(with_spec(vcpus=0), "spec.vcpus", "should be greater than or equal to 1", id="zero-vcpus"),
    pytest.param(with_spec(vcpus=257), "spec.vcpus", "should be less than or equal to 256", id="too-many-vcpus"),
    pytest.param(with_spec(qat=None), "spec.qat", "Required value", id="missing-qat"),
    pytest.param(with_spec(image__path="images/base.qcow2"), "spec.image.path", "must be an absolute path", id="relative-image"),
    *(
        pytest.param(with_spec(image__path=path), "spec.image.path", "must be a canonical path", id=f"p-{kind}")
        for kind, path in {
            "up": "/var/lib/qatvm/images/../../../etc/shadow",
            "upend": "/var/lib/qatvm/images/..",
            "dot": "/var/lib/qatvm/./images/base.qcow2",
            "dotend": "/var/lib/qatvm/images/.",
            "2slash": "/var/lib/qatvm//images/base.qcow2",
            "lead2": "//etc/shadow",
            "trail": "/var/lib/qatvm/images/",
            "root": "/",
            "nul": "/var/lib/qatvm/images/base.qcow2\0/etc/shadow",
        }.items()
    ),
    pytest.param(with_spec(memory="1Ei"), "spec.memory", "must be at most 16Ti", id="mem-huge"),
    pytest.param(with_spec(memory="16385Gi"), "spec.memory", "must be at most 16Ti", id="mem-over"),
    # More characters than bytes allowed: the schema's maxLength speaks first, in the same unit.
    pytest.param(with_spec(cloudInit__userData="#" * 65537), "spec.cloudInit.userData", "may not be more than 65536 bytes", id="ud-ascii"),
    # 32769 characters, well under 65536 of them, but 65538 bytes.
    pytest.param(with_spec(cloudInit__userData="é" * 32769), "spec.cloudInit.userData", "must be at most 65536 bytes (64 KiB) as UTF-8", id="ud-utf8"),
    pytest.param(with_spec(nodeSelector={"zone": 1}), "spec.nodeSelector.zone", "must be of type string", id="sel-type"),
    pytest.param(with_spec(hugepages__pageSize="4Ki"), "spec.hugepages.pageSize", 'Unsupported value: "4Ki"', id="unknown-page-size"),
    pytest.param(with_spec(dedicatedCpus="yes"), "spec.dedicatedCpus", "must be of type boolean", id="dedicated-not-bool"),
]


@pytest.mark.parametrize(("obj", "field", "message"), BAD)
def test_bad_vm_is_refused_naming_the_field(kubectl: Kubectl, namespace: str, obj: dict[str, Any], field: str, message: str) -> None:
    obj["metadata"]["namespace"] = namespace
    result = kubectl.run("apply", "-f", "-", input=obj, check=False)
    assert result.returncode != 0, result.stdout
    assert field in result.stderr and message in result.stderr, result.stderr
    assert not kubectl.exists("qvm", "bad", "-n", namespace)


def test_unknown_fields_are_refused_with_strict_validation(kubectl: Kubectl, namespace: str) -> None:
    obj = with_spec(gpus=1)
    obj["metadata"]["namespace"] = namespace
    result = kubectl.run("apply", "--validate=strict", "-f", "-", input=obj, check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.gpus"' in result.stderr, result.stderr


def test_good_vm_is_accepted(kubectl: Kubectl, namespace: str) -> None:
    obj = with_spec(qat__services=["sym", "asym"], qat__generation="4xxx", qat__numa="require")
    obj["metadata"]["namespace"] = namespace
    kubectl.run("apply", "--validate=strict", "-f", "-", input=obj)
    assert kubectl.json("get", "qvm", "bad", "-n", namespace)["spec"]["qat"]["services"] == ["sym", "asym"]


@pytest.mark.parametrize(
    "user_data",
    [
        pytest.param("#" * 65536, id="ascii"),
        pytest.param("\U0001f512" * 16384, id="four-byte"),  # 65536 bytes in 16384 characters
        pytest.param("é" * 32768, id="two-byte"),
    ],
)
def test_user_data_of_64_kib(kubectl: Kubectl, namespace: str, user_data: str) -> None:
    assert len(user_data.encode()) == 65536
    obj = with_spec(cloudInit__userData=user_data)
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    assert kubectl.json("get", "qvm", "bad", "-n", namespace)["spec"]["cloudInit"]["userData"] == user_data


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/var/lib/qatvm/images/.hidden/..x/a...b.qcow2", id="dots"),
        pytest.param("/x", id="short"),
        pytest.param("/images/base.qcow2.", id="dot-end"),
    ],
)
def test_dotted_names_are_canonical(kubectl: Kubectl, namespace: str, path: str) -> None:
    obj = with_spec(image__path=path, memory="16Ti")
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    assert kubectl.json("get", "qvm", "bad", "-n", namespace)["spec"]["image"]["path"] == path


def schedule(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run(
        "patch", "qvm", "bad", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status":{"nodeName":"node-1","phase":"Scheduled"}}',
    )


@pytest.mark.parametrize(
    ("field", "patch"),
    [
        pytest.param("spec.image.path", {"image": {"path": "/var/lib/qatvm/images/other.qcow2"}}, id="image"),
        pytest.param("spec.nodeSelector", {"nodeSelector": {"zone": "b"}}, id="sel-change"),
        pytest.param("spec.nodeSelector", {"nodeSelector": {"zone": None}}, id="sel-remove"),
        pytest.param("spec.nodeSelector", {"nodeSelector": {"zone": "a", "rack": "1"}}, id="sel-add"),
    ],
)
def test_frozen_once_scheduled(
    kubectl: Kubectl, namespace: str, field: str, patch: dict[str, Any]
) -> None:
    obj = with_spec(nodeSelector={"zone": "a"})
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    # Before scheduling, both may still change.
    kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": patch}))
    kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=json", "-p", json.dumps([{"op": "replace", "path": "/spec", "value": obj["spec"]}]))
    schedule(kubectl, namespace)
    refused = kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": patch}), check=False)
    assert refused.returncode != 0
    assert f"{field}: Forbidden: {field} cannot change once the VM is scheduled" in refused.stderr, refused.stderr
    assert "delete and re-create the VM" in refused.stderr
    # The same values again are no change, and other fields stay editable.
    kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {**obj["spec"], "running": False}}))


def test_a_node_selector_cannot_appear_once_scheduled(kubectl: Kubectl, namespace: str) -> None:
    obj = with_spec()
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    schedule(kubectl, namespace)
    kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", '{"spec":{"nodeSelector":{}}}')
    refused = kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", '{"spec":{"nodeSelector":{"zone":"a"}}}', check=False)
    assert "spec.nodeSelector cannot change once the VM is scheduled" in refused.stderr, refused.stderr


def test_qat_is_frozen_once_scheduled(kubectl: Kubectl, namespace: str) -> None:
    obj = with_spec()
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    # Before scheduling, the request may still change.
    kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", '{"spec":{"qat":{"count":3},"vcpus":2}}')
    kubectl.run(
        "patch", "qvm", "bad", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status":{"nodeName":"node-1","phase":"Scheduled"}}',
    )
    refused = kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", '{"spec":{"qat":{"count":4}}}', check=False)
    assert refused.returncode != 0
    assert "spec.qat" in refused.stderr and "cannot change once the VM is scheduled" in refused.stderr, refused.stderr
    # What the node holds for the VM is frozen with its VFs.
    for change in ('{"spec":{"vcpus":4}}', '{"spec":{"memory":"2Gi"}}', '{"spec":{"dedicatedCpus":true}}',
                   '{"spec":{"hugepages":{"pageSize":"2Mi"}}}'):
        refused = kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", change, check=False)
        assert refused.returncode != 0, change
        assert "vcpus, memory, hugepages and dedicatedCpus cannot change once the VM is scheduled" in refused.stderr
    # The rest of spec stays editable: that is how users stop and start VMs.
    kubectl.run("patch", "qvm", "bad", "-n", namespace, "--type=merge", "-p", '{"spec":{"running":false}}')
    spec = kubectl.json("get", "qvm", "bad", "-n", namespace)["spec"]
    assert spec["qat"]["count"] == 3 and spec["running"] is False and spec["vcpus"] == 2


def test_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    obj = with_spec()
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    header, row = kubectl.run("get", "qvm", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "NODE", "VFS", "READY", "AGE"]
    assert row.split()[:2] == ["bad", "2"]  # phase, node and ready stay blank until scheduled
    wide = kubectl.run("get", "qvm", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert wide == ["NAME", "PHASE", "NODE", "VFS", "READY", "DEVICES", "DOMAIN", "AGE"]


def test_qatnode_columns(kubectl: Kubectl) -> None:
    kubectl.apply({"apiVersion": "qatvm.io/v1alpha1", "kind": "QatNode", "metadata": {"name": "columns-node"}})
    try:
        kubectl.run(
            "patch", "qatnode", "columns-node", "--subresource=status", "--type=merge",
            "-p", '{"status":{"total":8,"free":6,"unhealthy":1,"freeCpus":26,"freeMemory":"38Gi"}}',
        )
        header, row = kubectl.run("get", "qatnode", "columns-node").stdout.splitlines()
        assert header.split() == ["NAME", "TOTAL", "FREE", "UNHEALTHY", "FREE", "CPUS", "FREE", "MEMORY", "AGE"]
        assert row.split()[:6] == ["columns-node", "8", "6", "1", "26", "38Gi"]
    finally:
        kubectl.run("delete", "qatnode", "columns-node")


def test_categories_and_short_names(kubectl: Kubectl, namespace: str) -> None:
    obj = with_spec()
    obj["metadata"]["namespace"] = namespace
    kubectl.apply(obj)
    assert "qatvirtualmachine.qatvm.io/bad" in kubectl.run("get", "qatvm", "-n", namespace, "-o", "name").stdout
