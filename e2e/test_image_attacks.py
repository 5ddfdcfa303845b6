"""A tenant tries to boot from files that are not images: host files, other VMs' disks and seeds,
crafted backing chains, a FIFO; and to change what a scheduled VM was built from.

The tenant is a ServiceAccount with every verb on `qatvirtualmachines` in its own namespace and
none on `status`, as the issue describes a namespace user.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pycdlib
import pytest
import yaml

from qatvm.domain.naming import domain_name
from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from vms import BASE_IMAGE, condition, status, vm, wait_ready

IMAGES = "/var/lib/qatvm/images"


@pytest.fixture
def tenant(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Kubectl:
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant", "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "qvm-user", "namespace": namespace},
            "rules": [{"apiGroups": ["qatvm.io"], "resources": ["qatvirtualmachines"], "verbs": ["*"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tenant", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "qvm-user"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    token = kubectl.run("create", "token", "tenant", "-n", namespace).stdout.strip()
    config = tmp_path / "tenant.kubeconfig"
    shutil.copy(kubectl.kubeconfig, config)
    admin = kubectl.with_kubeconfig(config)
    admin.run("config", "set-credentials", "tenant", f"--token={token}")
    admin.run("config", "set-context", "--current", "--user=tenant", f"--namespace={namespace}")
    return admin


def on(node: str | None, name: str, namespace: str, path: str, **spec: Any) -> dict[str, Any]:
    obj = vm(name, namespace)
    obj["spec"]["image"]["path"] = path
    obj["spec"].update(spec)
    if node:
        obj["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return obj


def assert_refused(kubectl: Kubectl, nodes: LocalNodes, name: str, namespace: str, reason: str, message: str) -> None:
    def refused() -> dict[str, Any]:
        ready = condition(kubectl, name, namespace, "Ready")
        assert ready and ready["status"] == "False" and ready["reason"] == reason, ready
        return ready

    ready = eventually(refused, timeout=60)
    assert message in ready["message"], ready["message"]
    node = status(kubectl, name, namespace)["nodeName"]
    assert domain_name(namespace, name) not in nodes.domains(node)
    uid = kubectl.json("get", "qvm", name, "-n", namespace)["metadata"]["uid"]
    assert not (nodes.root(node) / "var/lib/qatvm/vms" / uid / "overlay.qcow2").exists()


@dataclass(frozen=True)
class Victim:
    namespace: str
    node: str
    files: PurePosixPath  # its directory on the node, as the node sees it


@pytest.fixture
def victim(kubectl: Kubectl) -> Iterator[Victim]:
    """Another tenant's running VM with a cloud-init password."""
    other = f"e2e-victim-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", other)
    try:
        kubectl.apply(on(None, "db", other, BASE_IMAGE, cloudInit={"userData": "#cloud-config\npassword: hunter2\n"}))
        wait_ready(kubectl, "db", other)
        node = status(kubectl, "db", other)["nodeName"]
        uid = kubectl.json("get", "qvm", "db", "-n", other)["metadata"]["uid"]
        yield Victim(other, node, PurePosixPath("/var/lib/qatvm/vms") / uid)
    finally:
        kubectl.run("delete", "namespace", other, "--wait=false", check=False)


def test_host_files_and_other_vms_files_are_no_images(
    kubectl: Kubectl, tenant: Kubectl, nodes: LocalNodes, namespace: str, victim: Victim
) -> None:
    node, victim_files = victim.node, victim.files
    attempts = {
        "shadow": ("/etc/shadow", "image.path /etc/shadow is outside the image directories"),
        "overlay": (str(victim_files / "overlay.qcow2"), "is outside the image directories"),
        "seed": (str(victim_files / "cidata.iso"), "is outside the image directories"),
    }
    for name, (path, _) in attempts.items():
        tenant.apply(on(node, name, namespace, path))
    for name, (path, message) in attempts.items():
        assert_refused(kubectl, nodes, name, namespace, "ImageRefused", f"{message} {IMAGES}; put the image there")

    # `..` out of the image directory (or of a simulated node's root) never reaches the agent.
    climb = tenant.run("apply", "-f", "-", input=on(node, "climb", namespace, f"{IMAGES}/../../../../etc/shadow"), check=False)
    assert climb.returncode != 0 and "spec.image.path: Invalid value" in climb.stderr and "canonical path" in climb.stderr
    # The victim's VM kept running, untouched.
    assert (condition(kubectl, "db", victim.namespace, "Ready") or {}).get("status") == "True"


def test_crafted_images_in_the_image_directory_are_refused(
    kubectl: Kubectl, tenant: Kubectl, nodes: LocalNodes, namespace: str, victim: Victim
) -> None:
    """Files an admin was tricked into placing among the images: a qcow2 whose backing file is
    another VM's overlay or a host file, a symlink out of the directory, and a FIFO."""
    node, victim_files = victim.node, victim.files
    images = nodes.root(node) / IMAGES.lstrip("/")
    tag = namespace.removeprefix("e2e-")
    crafted = {
        f"steal-{tag}.qcow2": nodes.root(node) / victim_files.relative_to("/") / "overlay.qcow2",
        f"host-{tag}.qcow2": Path("/etc/passwd"),
    }
    for name, backing in crafted.items():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", str(backing),
                        str(images / name), "64M"], check=True)
    (images / f"link-{tag}.qcow2").symlink_to(f"../vms/{victim_files.name}/cidata.iso")
    os.mkfifo(images / f"fifo-{tag}")
    try:
        for index, name in enumerate(crafted):
            tenant.apply(on(node, f"chain-{index}", namespace, f"{IMAGES}/{name}"))
        tenant.apply(on(node, "link", namespace, f"{IMAGES}/link-{tag}.qcow2"))
        tenant.apply(on(node, "fifo", namespace, f"{IMAGES}/fifo-{tag}"))
        for index in range(len(crafted)):
            assert_refused(kubectl, nodes, f"chain-{index}", namespace, "ImageRefused",
                           "every file of an image's backing chain must be in them")
        assert_refused(kubectl, nodes, "link", namespace, "ImageRefused",
                       f"resolves to {victim_files}/cidata.iso, which is outside the image directories")
        assert_refused(kubectl, nodes, "fifo", namespace, "ImageRefused", "is a FIFO, not a regular file")
        # The agent did not hang on any of it: a good VM on the same node still comes up.
        tenant.apply(on(node, "good", namespace, BASE_IMAGE))
        wait_ready(kubectl, "good", namespace)
    finally:
        for name in [*crafted, f"link-{tag}.qcow2", f"fifo-{tag}"]:
            (images / name).unlink()


def test_a_scheduled_vm_keeps_its_image_and_selector(kubectl: Kubectl, tenant: Kubectl, namespace: str) -> None:
    tenant.apply(vm("fixed", namespace))
    wait_ready(kubectl, "fixed", namespace)
    for patch, field in (
        ('{"spec":{"image":{"path":"/var/lib/qatvm/images/other.qcow2"}}}', "spec.image.path"),
        ('{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node-2"}}}', "spec.nodeSelector"),
    ):
        refused = tenant.run("patch", "qvm", "fixed", "--type=merge", "-p", patch, check=False)
        assert refused.returncode != 0
        assert f"{field} cannot change once the VM is scheduled" in refused.stderr, refused.stderr
        assert "delete and re-create the VM" in refused.stderr


def test_memory_in_any_spelling_the_api_accepts_runs_and_absurd_memory_is_refused(
    kubectl: Kubectl, tenant: Kubectl, nodes: LocalNodes, namespace: str
) -> None:
    tenant.apply(on(None, "milli", namespace, BASE_IMAGE, memory="200000000000m"))
    wait_ready(kubectl, "milli", namespace)
    st = status(kubectl, "milli", namespace)
    memory = nodes.domains(st["nodeName"])[st["domain"]["name"]][1].memory
    assert memory.value * {"KiB": 1024, "b": 1, "bytes": 1}[memory.unit] >= 200_000_000

    huge = tenant.run("apply", "-f", "-", input=on(None, "huge", namespace, BASE_IMAGE, memory="1Ei"), check=False)
    assert huge.returncode != 0 and "spec.memory" in huge.stderr and "must be at most 16Ti" in huge.stderr, huge.stderr


def test_a_vms_files_are_private_and_its_hostname_a_dns_label(kubectl: Kubectl, tenant: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    name = "svc." + "a" * 70
    tenant.apply(on(None, name, namespace, BASE_IMAGE, cloudInit={"userData": "#cloud-config\npassword: s3cret\n"}))
    wait_ready(kubectl, name, namespace)
    uid = kubectl.json("get", "qvm", name, "-n", namespace)["metadata"]["uid"]
    files = nodes.root(status(kubectl, name, namespace)["nodeName"]) / "var/lib/qatvm/vms" / uid
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (files.parent, files, files / "overlay.qcow2", files / "cidata.iso")}
    assert modes == {"vms": 0o711, files.name: 0o711, "overlay.qcow2": 0o600, "cidata.iso": 0o600}
    iso = pycdlib.PyCdlib()
    iso.open(str(files / "cidata.iso"))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/meta-data")
    finally:
        iso.close()
    assert yaml.safe_load(out.getvalue())["local-hostname"] == "svc-" + "a" * 59
