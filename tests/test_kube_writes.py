"""The operator's writer against a real API server: what it writes, how a refusal reads, and a
rotated service-account token."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from lightkube import KubeConfig
from lightkube.core.exceptions import ApiError

from qatvm.controlplane.server import ControlPlane
from qatvm.kube_writes import Writer
from qatvm.testing.kubectl import Kubectl

pytestmark = pytest.mark.controlplane


def _vm(namespace: str, name: str) -> dict[str, object]:
    return {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine", "metadata": {"name": name, "namespace": namespace},
            "spec": {"qat": {"count": 1}, "image": {"path": "/var/lib/qatvm/images/base.qcow2"}}}


async def test_patches_land_as_the_field_manager_and_a_stale_version_is_refused_with_the_servers_words(
    writer: Writer, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(_vm(namespace, "w"))
    stored = kubectl.json("get", "qvm", "w", "-n", namespace)
    version = stored["metadata"]["resourceVersion"]

    updated = await writer.patch_vm(namespace, "w", {"metadata": {"resourceVersion": version}, "status": {"phase": "Pending"}}, status=True)
    assert updated["status"]["phase"] == "Pending" and updated["metadata"]["resourceVersion"] != version
    managers = {(f["manager"], f.get("subresource")) for f in updated["metadata"]["managedFields"]}
    assert ("qatvm-test", "status") in managers

    labelled = await writer.patch_vm(namespace, "w", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["labels"] == {"a": "b"} and labelled["status"]["phase"] == "Pending"

    with pytest.raises(ApiError) as refused:
        await writer.patch_vm(namespace, "w", {"metadata": {"resourceVersion": version}, "status": {"phase": "Running"}}, status=True)
    assert refused.value.status.code == 409
    assert "the object has been modified" in (refused.value.status.message or "")
    with pytest.raises(ApiError) as missing:
        await writer.patch_vm(namespace, "nobody", {"status": {"phase": "Running"}}, status=True)
    assert missing.value.status.code == 404


def _connections_to(port: int) -> int:
    """This process's established TCP connections to `port`, as the kernel lists them."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            mine.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            count += int(remote.rsplit(":", 1)[1], 16) == port and state == "01" and f"socket:[{inode}]" in mine
    return count


async def test_writes_at_once_share_no_more_than_the_writers_connections(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(_vm(namespace, "w"))
    port = urlsplit(control_plane.server).port
    assert port is not None
    before = _connections_to(port)
    writer = Writer(KubeConfig.from_file(str(control_plane.kubeconfig)), "qatvm-test", connections=2)
    try:
        for phase in ("Pending", "Scheduled"):  # two bursts, 16 writes at once each
            await asyncio.gather(*(
                writer.patch_vm(namespace, "w", {"status": {"phase": phase, "observedGeneration": i}}, status=True) for i in range(16)
            ))
            assert _connections_to(port) - before == 2  # the default (100) would open one per write
    finally:
        await writer.close()


async def test_an_event_is_created(writer: Writer, kubectl: Kubectl, namespace: str) -> None:
    await writer.create_event(namespace, {
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "w.", "namespace": namespace},
        "involvedObject": {"kind": "QatVirtualMachine", "name": "w", "namespace": namespace},
        "reason": "Tested", "message": "written by the writer", "type": "Normal",
    })
    [event] = kubectl.json("get", "events", "-n", namespace)["items"]
    assert (event["reason"], event["message"]) == ("Tested", "written by the writer")


async def test_a_rotated_token_file_is_read_again_after_a_401(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl.run("create", "serviceaccount", "writer", "-n", namespace)
    kubectl.run("create", "role", "writer", "-n", namespace, "--verb=patch", "--resource=qatvirtualmachines.qatvm.io")
    kubectl.run("create", "rolebinding", "writer", "-n", namespace, "--role=writer", f"--serviceaccount={namespace}:writer")
    kubectl.apply(_vm(namespace, "w"))
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token")
    config = KubeConfig.from_dict({
        "clusters": [{"name": "c", "cluster": {"server": control_plane.server, "certificate-authority": str(control_plane.ca_file)}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    })
    writer = Writer(config, "qatvm-test")
    try:
        with pytest.raises(ApiError) as refused:
            await writer.patch_vm(namespace, "w", {"metadata": {"labels": {"a": "b"}}})
        assert refused.value.status.code == 401
        # The kubelet rotates the file: the next write is refused once, reads it again and lands.
        token_file.write_text(kubectl.run("create", "token", "writer", "-n", namespace).stdout.strip())
        labelled = await writer.patch_vm(namespace, "w", {"metadata": {"labels": {"a": "b"}}})
        assert labelled["metadata"]["labels"] == {"a": "b"}
    finally:
        await writer.close()


async def test_a_server_that_never_answers_fails_the_write_after_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the request, answers nothing, until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = KubeConfig.from_dict({
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    })
    writer = Writer(config, "qatvm-test", timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TimeoutError):
            await writer.patch_vm("ns", "w", {"status": {"phase": "Running"}}, status=True)
        assert loop.time() - started < 5
    finally:
        await writer.close()
        server.close()
