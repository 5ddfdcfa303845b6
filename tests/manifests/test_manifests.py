"""manifests/, the kind overlay and the image recipe, checked by the real tools.

The real kubectl renders the kustomizations (offline); the real API server admits every object
(server-side dry run) and judges the Pod Security level of each pod template; the operator's
service accounts, with real tokens, are asked what they may do (RBAC), and the agent, with a
token bound to a node as a pod's is, is kept to its node by the admission policy.

The RBAC and policy are applied for real and left in place: the session's control plane is
shared, and other tests apply the same objects. Nodes and QatNodes made here are deleted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from qatvm.agent.main import parse as parse_agent_args
from qatvm.controlplane.binaries import binary
from qatvm.controlplane.kubeconfig import write_kubeconfig
from qatvm.controlplane.server import ControlPlane
from qatvm.kube import QatNodeResource, QatVirtualMachineResource, client
from qatvm.node.sysfs import dev_root
from qatvm.simulation import SIMULATION_MARKER
from qatvm.simulation.hypervisor import open_hypervisor
from qatvm.paths import project_root
from qatvm.testing.kubectl import Kubectl
from qatvm.testing.cluster import eventually

Manifest = dict[str, Any]

ROOT = project_root()
MANIFESTS = ROOT / "manifests"
KIND = ROOT / "e2e" / "kind"
OVERLAY = KIND / "overlay"
SYSTEM = "qatvm-system"
CONTROLLER_SA = "qatvm-controller"
AGENT_SA = "qatvm-agent"
NODE_LABEL = "qatvm.io/qat"
VM_NODE_LABEL = "qatvm.io/node"
RBAC_FILES = ("namespace.yaml", "controller-rbac.yaml", "agent-rbac.yaml", "agent-policy.yaml", "vm-policy.yaml",
              "vm-finalizer-policy.yaml", "tenant-roles.yaml", "agent-lease-policy.yaml")
NODE_LEASES = "qatvm-node-lease"

# (kind, namespace, name) of everything `kubectl apply -k manifests/` creates; no CRDs.
EXPECTED_OBJECTS = {
    ("Namespace", None, SYSTEM),
    ("Namespace", None, "qatvm-node-lease"),
    ("Role", "qatvm-node-lease", "qatvm-agent-node-lease"),
    ("RoleBinding", "qatvm-node-lease", "qatvm-agent-node-lease"),
    ("Role", "qatvm-node-lease", "qatvm-controller-node-lease"),
    ("RoleBinding", "qatvm-node-lease", "qatvm-controller-node-lease"),
    ("ValidatingAdmissionPolicy", None, "qatvm-agent-own-lease"),
    ("ValidatingAdmissionPolicyBinding", None, "qatvm-agent-own-lease"),
    ("ServiceAccount", SYSTEM, CONTROLLER_SA),
    ("ServiceAccount", SYSTEM, AGENT_SA),
    ("ClusterRole", None, CONTROLLER_SA),
    ("ClusterRole", None, AGENT_SA),
    ("ClusterRoleBinding", None, CONTROLLER_SA),
    ("ClusterRoleBinding", None, AGENT_SA),
    ("Role", SYSTEM, "qatvm-controller-leader"),
    ("RoleBinding", SYSTEM, "qatvm-controller-leader"),
    ("ValidatingAdmissionPolicy", None, "qatvm-agent-own-node"),
    ("ValidatingAdmissionPolicyBinding", None, "qatvm-agent-own-node"),
    ("ValidatingAdmissionPolicy", None, "qatvm-agent-bookkeeping"),
    ("ValidatingAdmissionPolicyBinding", None, "qatvm-agent-bookkeeping"),
    ("MutatingAdmissionPolicy", None, "qatvm-agent-finalizer"),
    ("MutatingAdmissionPolicyBinding", None, "qatvm-agent-finalizer"),
    ("ValidatingAdmissionPolicy", None, "qatvm-controller-unplaced-only"),
    ("ValidatingAdmissionPolicyBinding", None, "qatvm-controller-unplaced-only"),
    ("ClusterRole", None, "qatvm-view"),
    ("ClusterRole", None, "qatvm-edit"),
    ("Deployment", SYSTEM, "qatvm-controller"),
    ("PodDisruptionBudget", SYSTEM, "qatvm-controller"),
    ("DaemonSet", SYSTEM, "qatvm-agent"),
}


# -- helpers -----------------------------------------------------------------------------------


def render(directory: Path) -> list[Manifest]:
    """`kubectl kustomize DIR`: what `kubectl apply -k DIR` would send."""
    done = subprocess.run(
        [str(binary("kubectl")), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def identities(objects: list[Manifest]) -> set[tuple[str, str | None, str]]:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest, name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name}"
    one: dict[str, Any] = found[0]
    return one


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def expand(args: list[str], values: dict[str, str]) -> list[str]:
    """The kubelet's `$(VAR)` expansion of a container's args; an unknown name stays as written."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m[1], m[0]), a) for a in args]


def host_mounts(workload: Manifest, name: str) -> dict[str, tuple[str, bool]]:
    """hostPath path -> (mount path in the container, read-only) for one container."""
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod_spec(workload).get("volumes", []) if "hostPath" in v}
    return {
        volumes[m["name"]]: (m["mountPath"], bool(m.get("readOnly", False)))
        for m in container(workload, name).get("volumeMounts", [])
        if m["name"] in volumes
    }


def under(path: Path, mounts: set[str]) -> bool:
    return any(path == Path(m) or Path(m) in path.parents for m in mounts)


def pod_from(workload: Manifest, name: str, namespace: str) -> Manifest:
    template = workload["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def kind_overlay() -> list[Manifest]:
    return render(OVERLAY)


# -- (a) what kustomize renders, offline ---------------------------------------------------------


def test_kustomization_renders_exactly_the_operator_objects(base: list[Manifest]) -> None:
    assert identities(base) == EXPECTED_OBJECTS
    assert not [o for o in base if o["kind"] == "CustomResourceDefinition"], "CRDs are applied from crds/ first"
    for obj in base:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "qatvm", obj["metadata"]["name"]


def test_kustomization_lists_every_manifest_file() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_controller_deployment(base: list[Manifest]) -> None:
    deployment = find(base, "Deployment", "qatvm-controller")
    spec = deployment["spec"]
    pod = pod_spec(deployment)
    controller = container(deployment, "controller")
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == CONTROLLER_SA
    assert pod.get("automountServiceAccountToken", True) is True
    assert controller["image"] == "qatvm:latest"
    assert controller["command"] == ["qatvm", "controller"]
    assert env_of(controller)["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    args = expand(controller["args"], {"POD_NAMESPACE": SYSTEM, "POD_NAME": "qatvm-controller-abc"})
    assert f"--lease-namespace={SYSTEM}" in args
    # Locked down at the pod and the container level.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = controller["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("privileged", False)
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v]
    for kind in ("requests", "limits"):
        assert set(controller["resources"][kind]) == {"cpu", "memory"}
    # The standby survives a drain: the budget covers exactly these pods.
    budget = find(base, "PodDisruptionBudget", "qatvm-controller")
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert budget["spec"]["maxUnavailable"] == 1


def test_controller_command_line_is_accepted_by_qatvm_controller(base: list[Manifest], tmp_path: Path) -> None:
    """argparse exits 2 on a flag it does not know; past parsing, the missing kubeconfig fails."""
    controller = container(find(base, "Deployment", "qatvm-controller"), "controller")
    args = expand(controller["args"], {"POD_NAMESPACE": SYSTEM, "POD_NAME": "qatvm-controller-abc"})
    missing = tmp_path / "no-such-kubeconfig"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "qatvm", *controller["command"][1:], *args, f"--kubeconfig={missing}"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert done.returncode == 1, done.stderr
    assert "usage:" not in done.stderr
    assert str(missing) in done.stderr


def test_agent_daemonset(base: list[Manifest]) -> None:
    daemonset = find(base, "DaemonSet", "qatvm-agent")
    pod = pod_spec(daemonset)
    agent = container(daemonset, "agent")
    assert pod["serviceAccountName"] == AGENT_SA
    # The pod's projected token names its node; the agent policy depends on it.
    assert pod.get("automountServiceAccountToken", True) is True
    assert pod["nodeSelector"] == {NODE_LABEL: "true"}
    assert "tolerations" not in pod and "affinity" not in pod
    assert agent["image"] == "qatvm:latest"
    assert agent["command"] == ["qatvm", "agent"]
    assert env_of(agent)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    sc = agent["securityContext"]
    assert sc["privileged"] is True and sc["runAsUser"] == 0
    for kind in ("requests", "limits"):
        assert set(agent["resources"][kind]) == {"cpu", "memory"}

    mounts = host_mounts(daemonset, "agent")
    assert {"/sys", "/dev/vfio", "/var/run/libvirt", "/var/lib/qatvm", "/var/lib/qatvm/images"} <= set(mounts)
    # libvirtd and QEMU on the host open the files the agent names: same path inside and out.
    for host_path, (mount_path, _) in mounts.items():
        assert mount_path == host_path
    assert mounts["/var/lib/qatvm/images"][1] is True, "base images are mounted read-only"
    assert mounts["/var/lib/qatvm"][1] is False

    _, config = parse_agent_args(expand(agent["args"], {"NODE_NAME": "node-a"}))
    assert config.node == "node-a"
    assert config.libvirt_uri == "qemu:///system"
    writable = {h for h, (_, ro) in mounts.items() if not ro}
    for path in (config.sysfs, dev_root(config.sysfs) / "vfio", config.state_dir):
        assert under(path, writable), f"{path} is not on a writable host mount"
    # The read-only mounts are exactly the directories the agent admits images from.
    assert {h for h, (_, ro) in mounts.items() if ro} == {str(d) for d in config.image_dirs}


def test_agent_policy_names_the_daemonsets_service_account(base: list[Manifest]) -> None:
    daemonset = find(base, "DaemonSet", "qatvm-agent")
    account = f"system:serviceaccount:{daemonset['metadata']['namespace']}:{pod_spec(daemonset)['serviceAccountName']}"
    policy = find(base, "ValidatingAdmissionPolicy", "qatvm-agent-own-node")
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == f'request.userInfo.username == "{account}"'
    binding = find(base, "ClusterRoleBinding", AGENT_SA)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": AGENT_SA, "namespace": SYSTEM}]


def test_images_entry_overrides_every_container(base: list[Manifest], tmp_path: Path) -> None:
    for workload in (find(base, "Deployment", "qatvm-controller"), find(base, "DaemonSet", "qatvm-agent")):
        assert {c["image"] for c in pod_spec(workload)["containers"]} == {"qatvm:latest"}
    user = tmp_path / "site"
    user.mkdir()
    (user / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(MANIFESTS, user)],
                "images": [{"name": "qatvm", "newName": "registry.example.com/qatvm", "newTag": "0.1.0"}],
            }
        )
    )
    images = {
        c["image"]
        for o in render(user)
        if o["kind"] in ("Deployment", "DaemonSet")
        for c in pod_spec(o)["containers"] + pod_spec(o).get("initContainers", [])
    }
    assert images == {"registry.example.com/qatvm:0.1.0"}


def test_podmonitor_scrapes_the_metrics_port_of_both_workloads(base: list[Manifest]) -> None:
    assert not [o for o in base if o["kind"] == "PodMonitor"], "the PodMonitor needs the Prometheus Operator: kept apart"
    [monitor] = render(MANIFESTS / "monitoring")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    for kind, name, component in (("Deployment", "qatvm-controller", "controller"), ("DaemonSet", "qatvm-agent", "agent")):
        workload = find(base, kind, name)
        assert workload["metadata"]["namespace"] == monitor["metadata"]["namespace"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        served = container(workload, component)
        ports = {p["name"]: p["containerPort"] for p in served["ports"]}
        # The named port is where the process really listens.
        assert f"--metrics-port={ports[endpoint['port']]}" in served["args"], served["args"]
        assert ports["metrics"] != ports["health"]


# -- the kind cluster and its overlay ------------------------------------------------------------


def test_kind_cluster_has_two_labelled_workers(base: list[Manifest]) -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert (cluster["kind"], cluster["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [n["role"] for n in cluster["nodes"]]
    assert sorted(roles) == ["control-plane", "worker", "worker"]
    selector = pod_spec(find(base, "DaemonSet", "qatvm-agent"))["nodeSelector"]
    for node in cluster["nodes"]:
        labels = node.get("labels", {})
        assert (selector.items() <= labels.items()) == (node["role"] == "worker"), node


def test_kind_overlay_points_only_the_agent_at_a_simulated_node(
    base: list[Manifest], kind_overlay: list[Manifest]
) -> None:
    assert identities(kind_overlay) == EXPECTED_OBJECTS
    changed = {(o["kind"], o["metadata"]["name"]) for o in kind_overlay if o not in base}
    assert changed == {("DaemonSet", "qatvm-agent")}

    daemonset = find(kind_overlay, "DaemonSet", "qatvm-agent")
    agent = container(daemonset, "agent")
    assert agent["command"] == ["qatvm", "simulation", "agent"]
    assert not agent["securityContext"]["privileged"]
    mounts = host_mounts(daemonset, "agent")
    assert set(mounts) == {"/var/lib/qatvm-sim"}
    sim = Path(mounts["/var/lib/qatvm-sim"][0])
    values = {e["name"]: e["value"] for e in agent["env"] if "value" in e} | {"NODE_NAME": "qatvm-worker"}
    _, config = parse_agent_args(expand(agent["args"], values))
    assert config.host_root == sim
    assert config.sysfs == sim / "sys"
    assert config.libvirt_uri == f"qatvm-test://{sim}/hypervisor.xml"
    assert config.state_dir.is_relative_to(sim)
    (init,) = pod_spec(daemonset)["initContainers"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {str(sim)}


def test_kind_init_container_lays_out_a_node_the_agent_can_use(kind_overlay: list[Manifest], tmp_path: Path) -> None:
    """Run the init container's script here, on a temporary root, with this checkout's qatvm."""
    daemonset = find(kind_overlay, "DaemonSet", "qatvm-agent")
    (init,) = pod_spec(daemonset)["initContainers"]
    agent = container(daemonset, "agent")
    sim = tmp_path / "qatvm-sim"
    values = {"SIM_ROOT": str(sim), "NODE_NAME": "qatvm-worker"}
    env = dict(os.environ) | values | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run_init() -> None:
        done = subprocess.run([*init["command"], *init["args"]], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr

    run_init()
    _, config = parse_agent_args(expand(agent["args"], values))
    assert (config.sysfs / SIMULATION_MARKER).is_file()
    inventory = subprocess.run(
        [sys.executable, "-m", "qatvm", "inventory", f"--sysfs-root={config.sysfs}", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    vfs = json.loads(inventory.stdout)["vfs"]
    assert vfs and all(vf["healthy"] and vf["assignable"] for vf in vfs)
    base_image = config.images.admit("/var/lib/qatvm/images/base.qcow2").host_path
    assert base_image.read_bytes()[:4] == b"QFI\xfb"  # qcow2 magic
    hypervisor = open_hypervisor(config.libvirt_uri)
    assert (sim / "hypervisor.xml").is_file()
    del hypervisor

    # A restarted pod keeps the node as it was (bound VFs, the base image).
    stamp = (base_image.stat().st_mtime_ns, (config.sysfs / SIMULATION_MARKER).stat().st_mtime_ns)
    run_init()
    assert (base_image.stat().st_mtime_ns, (config.sysfs / SIMULATION_MARKER).stat().st_mtime_ns) == stamp


# -- the image recipe ----------------------------------------------------------------------------


def test_containerfile_context_and_user_match_the_manifests(base: list[Manifest]) -> None:
    containerfile = (ROOT / "Containerfile").read_text()
    ignore = (ROOT / ".containerignore").read_text()
    assert (ROOT / ".dockerignore").read_text() == ignore
    kept = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    copied = [
        source
        for line in containerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert copied, "the Containerfile copies nothing from the context"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in kept, f"{source} is excluded from the build context"
    # The controller's runAsUser is the image's numeric user, so runAsNonRoot can be checked.
    users = re.findall(r"^USER (\d+)(?::(\d+))?$", containerfile, flags=re.MULTILINE)
    assert users, "the image's USER must be numeric"
    pod = pod_spec(find(base, "Deployment", "qatvm-controller"))
    assert int(users[-1][0]) == pod["securityContext"]["runAsUser"]
    assert containerfile.count("FROM debian:bookworm-slim") == 2
    assert "--constraint constraints.txt" in containerfile


# -- (b) the API server admits it all --------------------------------------------------------------


def apply_for_real(kubectl: Kubectl, path: Path) -> None:
    """Idempotent, and co-owned with whatever else applies the same objects."""
    kubectl.run("apply", "--server-side", "--force-conflicts", "--field-manager=qatvm-tests-manifests", "-f", str(path))


@pytest.fixture(scope="module")
def operator_rbac(kubectl: Kubectl) -> None:
    for name in RBAC_FILES:
        apply_for_real(kubectl, MANIFESTS / name)


@pytest.mark.parametrize("directory", [MANIFESTS, OVERLAY], ids=["manifests", "kind-overlay"])
def test_server_side_dry_run_admits_every_object(kubectl: Kubectl, directory: Path) -> None:
    # Namespaced objects can be dry-run only into a namespace that exists.
    apply_for_real(kubectl, MANIFESTS / "namespace.yaml")
    done = kubectl.run("apply", "--dry-run=server", "-k", str(directory))
    reported = set(re.findall(r"^(\S+) (?:created|configured|unchanged|serverside-applied) \(server dry run\)$", done.stdout, re.MULTILINE))
    assert len(reported) == len(EXPECTED_OBJECTS), done.stdout
    assert "deployment.apps/qatvm-controller" in reported
    assert "daemonset.apps/qatvm-agent" in reported
    assert not kubectl.exists("deployment", "qatvm-controller", "-n", SYSTEM), "a dry run created the Deployment"


def test_pod_security_levels(kubectl: Kubectl, namespace: str, base: list[Manifest]) -> None:
    """The controller meets `restricted`; the agent needs `privileged` (hostPath, privileged)."""
    for account in (CONTROLLER_SA, AGENT_SA):
        kubectl.run("create", "serviceaccount", account, "-n", namespace)
    controller = pod_from(find(base, "Deployment", "qatvm-controller"), "controller", namespace)
    agent = pod_from(find(base, "DaemonSet", "qatvm-agent"), "agent", namespace)

    def admitted(pod: Manifest) -> subprocess.CompletedProcess[str]:
        return kubectl.run("create", "--dry-run=server", "-f", "-", input=pod, check=False)

    for level in ("restricted", "baseline"):
        kubectl.run("label", "namespace", namespace, f"pod-security.kubernetes.io/enforce={level}", "--overwrite")
        done = admitted(controller)
        assert done.returncode == 0, f"{level}: {done.stderr}"
        refused = admitted(agent)
        assert refused.returncode != 0
        assert f'violates PodSecurity "{level}:latest"' in refused.stderr
        assert '"hostPath"' in refused.stderr or "hostPath volumes" in refused.stderr, refused.stderr
        assert "privileged" in refused.stderr, refused.stderr
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged", "--overwrite")
    done = admitted(agent)
    assert done.returncode == 0, done.stderr


# -- (c) least privilege, asked with the service accounts' own tokens -------------------------------


def token_kubectl(kubectl: Kubectl, plane: ControlPlane, directory: Path, account: str, *token_args: str) -> Kubectl:
    token = kubectl.run("create", "token", account, "-n", SYSTEM, "--duration=1h", *token_args).stdout.strip()
    path = write_kubeconfig(directory / f"{account}.kubeconfig", plane.server, plane.ca_file, user=account, token=token)
    return kubectl.with_kubeconfig(path)


@pytest.fixture(scope="module")
def as_account(
    kubectl: Kubectl, control_plane: ControlPlane, operator_rbac: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Kubectl]:
    directory = tmp_path_factory.mktemp("tokens")
    return {account: token_kubectl(kubectl, control_plane, directory, account) for account in (CONTROLLER_SA, AGENT_SA)}


def can(user: Kubectl, verb: str, resource: str, *extra: str) -> bool:
    done = user.run("auth", "can-i", verb, resource, *extra, check=False)
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), done.stderr
    return answer == "yes"


VM = "qatvirtualmachines.qatvm.io"
QATNODE = "qatnodes.qatvm.io"
LEASE = "leases.coordination.k8s.io"
ANY_NS = ("-n", "some-namespace")
ALL_NS = ("--all-namespaces",)
IN_SYSTEM = ("-n", SYSTEM)
IN_LEASES = ("-n", "qatvm-node-lease")
STATUS = "--subresource=status"

RIGHTS: list[tuple[str, bool, tuple[str, ...]]] = [
    # The controller: reads the cluster picture (and Namespaces' quotas), writes a VM's status only.
    (CONTROLLER_SA, True, ("list", VM, *ALL_NS)),
    (CONTROLLER_SA, True, ("watch", VM, *ALL_NS)),
    (CONTROLLER_SA, True, ("get", VM, *ANY_NS)),
    (CONTROLLER_SA, True, ("patch", VM, STATUS, *ANY_NS)),
    (CONTROLLER_SA, True, ("list", QATNODE)),
    (CONTROLLER_SA, True, ("watch", QATNODE)),
    (CONTROLLER_SA, True, ("list", "nodes")),
    (CONTROLLER_SA, True, ("watch", "nodes")),
    (CONTROLLER_SA, True, ("create", "events", *ANY_NS)),
    (CONTROLLER_SA, True, ("create", LEASE, *IN_SYSTEM)),
    (CONTROLLER_SA, True, ("get", f"{LEASE}/qatvm-controller", *IN_SYSTEM)),
    (CONTROLLER_SA, True, ("patch", f"{LEASE}/qatvm-controller", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("update", f"{LEASE}/qatvm-controller", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("update", VM, *ANY_NS)),
    # Only the agent's finalizer off a deleted, never placed VM (qatvm-controller-unplaced-only).
    (CONTROLLER_SA, True, ("patch", VM, *ANY_NS)),
    (CONTROLLER_SA, True, ("watch", "namespaces")),
    (CONTROLLER_SA, False, ("patch", "namespaces")),
    (CONTROLLER_SA, False, ("update", VM, STATUS, *ANY_NS)),
    (CONTROLLER_SA, False, ("create", VM, *ANY_NS)),
    (CONTROLLER_SA, False, ("delete", VM, *ANY_NS)),
    (CONTROLLER_SA, False, ("deletecollection", VM, *ANY_NS)),
    (CONTROLLER_SA, False, ("get", "secrets", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("list", "secrets", *ALL_NS)),
    (CONTROLLER_SA, False, ("create", QATNODE)),
    (CONTROLLER_SA, False, ("patch", QATNODE)),
    (CONTROLLER_SA, False, ("update", QATNODE)),
    (CONTROLLER_SA, False, ("delete", QATNODE)),
    (CONTROLLER_SA, False, ("patch", QATNODE, STATUS)),
    (CONTROLLER_SA, False, ("patch", "nodes")),
    (CONTROLLER_SA, False, ("patch", "nodes", STATUS)),
    (CONTROLLER_SA, False, ("get", f"{LEASE}/someone-else", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("patch", f"{LEASE}/someone-else", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("delete", f"{LEASE}/qatvm-controller", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("create", LEASE, "-n", "kube-system")),
    (CONTROLLER_SA, False, ("patch", f"{LEASE}/qatvm-controller", "-n", "kube-system")),
    (CONTROLLER_SA, False, ("create", "pods", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("create", "serviceaccounts", "--subresource=token", *IN_SYSTEM)),
    (CONTROLLER_SA, False, ("list", "configmaps", *ALL_NS)),
    (CONTROLLER_SA, False, ("bind", "clusterroles.rbac.authorization.k8s.io")),
    # ... and reads the node leases, writing none.
    (CONTROLLER_SA, True, ("list", LEASE, *IN_LEASES)),
    (CONTROLLER_SA, False, ("patch", f"{LEASE}/node-1", *IN_LEASES)),
    (CONTROLLER_SA, False, ("delete", f"{LEASE}/node-1", *IN_LEASES)),
        # The agent: its node's VMs (by status.nodeName), its QatNode, its Node's status; the policy narrows it.
    (AGENT_SA, True, ("list", VM, *ALL_NS)),
    (AGENT_SA, True, ("watch", VM, *ALL_NS)),
    (AGENT_SA, True, ("patch", VM, *ANY_NS)),
    (AGENT_SA, True, ("patch", VM, STATUS, *ANY_NS)),
    (AGENT_SA, True, ("create", QATNODE)),
    (AGENT_SA, True, ("patch", QATNODE, STATUS)),
    (AGENT_SA, True, ("patch", "nodes", STATUS)),
    (AGENT_SA, True, ("create", "events", *ANY_NS)),
    (AGENT_SA, False, ("list", "secrets", *ALL_NS)),
    (AGENT_SA, False, ("get", "secrets", *IN_SYSTEM)),
    (AGENT_SA, False, ("delete", VM, *ANY_NS)),
    (AGENT_SA, False, ("create", VM, *ANY_NS)),
    (AGENT_SA, False, ("update", VM, *ANY_NS)),
    (AGENT_SA, False, ("create", "nodes")),
    (AGENT_SA, False, ("delete", "nodes")),
    (AGENT_SA, False, ("patch", "nodes")),
    (AGENT_SA, False, ("delete", QATNODE)),
    (AGENT_SA, False, ("patch", QATNODE)),
    (AGENT_SA, False, ("create", LEASE, *IN_SYSTEM)),
    # Its node lease (agent-lease-policy.yaml narrows it to its own node's).
    (AGENT_SA, True, ("create", LEASE, *IN_LEASES)),
    (AGENT_SA, True, ("patch", f"{LEASE}/node-1", *IN_LEASES)),
    (AGENT_SA, False, ("delete", f"{LEASE}/node-1", *IN_LEASES)),
    (AGENT_SA, False, ("update", f"{LEASE}/node-1", *IN_LEASES)),
    (AGENT_SA, False, ("patch", f"{LEASE}/qatvm-controller", *IN_SYSTEM)),
    (AGENT_SA, False, ("create", LEASE, "-n", "kube-node-lease")),
    (AGENT_SA, False, ("create", "pods", *IN_SYSTEM)),
    (AGENT_SA, False, ("create", "serviceaccounts", "--subresource=token", *IN_SYSTEM)),
]


@pytest.mark.parametrize(
    ("account", "allowed", "request_args"),
    RIGHTS,
    ids=[f"{a.removeprefix('qatvm-')}-{'may' if ok else 'may-not'}-{' '.join(r)}" for a, ok, r in RIGHTS],
)
def test_service_account_rights(as_account: dict[str, Kubectl], account: str, allowed: bool, request_args: tuple[str, ...]) -> None:
    assert can(as_account[account], *request_args) is allowed


# -- the agent policy: an agent's token, bound to a node as a pod's is, keeps it to that node -------


NODE_A = "manifests-test-node-a"
NODE_B = "manifests-test-node-b"


@pytest.fixture
def two_nodes(kubectl: Kubectl, operator_rbac: None) -> Iterator[None]:
    for node in (NODE_A, NODE_B):
        kubectl.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    yield
    for node in (NODE_A, NODE_B):
        kubectl.run("delete", QATNODE, node, "--ignore-not-found", "--wait=false")
        kubectl.run("delete", "node", node, "--ignore-not-found", "--wait=false")


def vm_on(name: str, namespace: str, node: str | None) -> Manifest:
    return {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"qat": {"count": 1}, "image": {"path": "/var/lib/qatvm/images/base.qcow2"}},
    }


def place_as_controller(kubectl: Kubectl, name: str, namespace: str, node: str) -> None:
    """What the controller writes on placement: status.nodeName and the devices."""
    placement = {"status": {"nodeName": node, "pciAddresses": "0000:3d:01.1", "devices": [{"pciAddress": "0000:3d:01.1"}]}}
    kubectl.run("patch", "qvm", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(placement))


class AgentClient:
    """The requests the agent makes, as it makes them (lightkube merge patches), with a given token."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kube = client(kubeconfig, field_manager="qatvm-agent-test")

    def _try(self, call: Callable[[], object]) -> str | None:
        """None when the API server accepts the request; its refusal message when it refuses."""
        try:
            call()
        except ApiError as error:
            assert error.status.code in (403, 422), error.status  # a policy refusal without a reason is 422
            return error.status.message or ""
        return None

    def node_status(self, node: str, vfs: int) -> str | None:
        quantity = str(vfs)
        patch = {"status": {"capacity": {"qatvm.io/vf": quantity}, "allocatable": {"qatvm.io/vf": quantity}}}
        return self._try(lambda: self.kube.patch(Node.Status, node, patch, patch_type=PatchType.MERGE))

    def create_qatnode(self, node: str) -> str | None:
        return self._try(lambda: self.kube.create(QatNodeResource(metadata=ObjectMeta(name=node), spec={})))

    def qatnode_status(self, node: str) -> str | None:
        patch: dict[str, Any] = {"status": {"vfs": []}}
        return self._try(lambda: self.kube.patch(QatNodeResource.Status, node, patch, patch_type=PatchType.MERGE))

    def vm_status(self, name: str, namespace: str, phase: str) -> str | None:
        patch = {"status": {"phase": phase}}
        return self._try(
            lambda: self.kube.patch(QatVirtualMachineResource.Status, name, patch, namespace=namespace, patch_type=PatchType.MERGE)
        )

    def renew_lease(self, name: str, holder: str) -> str | None:
        """What NodeLease.renew sends: a merge patch, or a create the first time."""
        spec = {"holderIdentity": holder, "leaseDurationSeconds": 40, "renewTime": "2030-01-01T00:00:00.000001Z"}

        def renew() -> None:
            try:
                self.kube.patch(Lease, name, {"spec": spec}, namespace=NODE_LEASES, patch_type=PatchType.MERGE)
            except ApiError as error:
                if error.status.code != 404:
                    raise
                self.kube.create(Lease(metadata=ObjectMeta(name=name, namespace=NODE_LEASES), spec=LeaseSpec(**spec)))

        return self._try(renew)

    def vm(self, name: str, namespace: str, patch: dict[str, Any]) -> str | None:
        return self._try(
            lambda: self.kube.patch(QatVirtualMachineResource, name, patch, namespace=namespace, patch_type=PatchType.MERGE)
        )


def agent_client(kubectl: Kubectl, plane: ControlPlane, directory: Path, *token_args: str) -> AgentClient:
    return AgentClient(token_kubectl(kubectl, plane, directory, AGENT_SA, *token_args).kubeconfig)


def refusal(message: str | None, reason: str) -> bool:
    return message is not None and "qatvm-agent-own-node" in message and reason in message


def test_agent_policy_keeps_an_agent_to_its_node(
    kubectl: Kubectl, control_plane: ControlPlane, two_nodes: None, namespace: str, tmp_path: Path
) -> None:
    agent = agent_client(kubectl, control_plane, tmp_path, "--bound-object-kind=Node", f"--bound-object-name={NODE_A}")
    for name, node in (("on-a", NODE_A), ("on-b", NODE_B), ("unplaced", None)):
        kubectl.apply(vm_on(name, namespace, node))
        if node:
            place_as_controller(kubectl, name, namespace, node)

    # Its own Node's status, its QatNode, its VMs' status and metadata (kopf's annotations): yes.
    assert agent.node_status(NODE_A, 2) is None
    assert agent.create_qatnode(NODE_A) is None
    assert agent.qatnode_status(NODE_A) is None
    assert agent.vm_status("on-a", namespace, "Running") is None
    assert agent.vm("on-a", namespace, {"metadata": {"annotations": {"agent.qatvm.io/last-handled": "{}"}}}) is None
    assert kubectl.json("get", "node", NODE_A)["status"]["capacity"]["qatvm.io/vf"] == "2"
    assert kubectl.json("get", "qvm", "on-a", "-n", namespace)["status"]["phase"] == "Running"

    # Anything of another node, an unplaced VM, or any VM's spec: no, though RBAC allows the verb.
    assert refusal(agent.node_status(NODE_B, 2), f"may not write nodes {NODE_B}")
    assert refusal(agent.create_qatnode(NODE_B), f"may not write qatnodes {NODE_B}")
    assert refusal(agent.vm_status("on-b", namespace, "Running"), f"may not write a VM placed on {NODE_B}")
    assert refusal(agent.vm_status("unplaced", namespace, "Running"), "may not write a VM placed on no node")
    assert refusal(agent.vm("on-a", namespace, {"spec": {"running": False}}), "may not change a VM's spec")
    # A label decides nothing: writing one on another node's VM is refused like any other write.
    assert refusal(agent.vm("on-b", namespace, {"metadata": {"labels": {VM_NODE_LABEL: NODE_A}}}), f"placed on {NODE_B}")
    assert kubectl.json("get", "qvm", "on-a", "-n", namespace)["spec"]["running"] is True
    assert "qatvm.io/vf" not in kubectl.json("get", "node", NODE_B).get("status", {}).get("capacity", {})
    assert "phase" not in kubectl.json("get", "qvm", "on-b", "-n", namespace)["status"]
    assert not kubectl.exists(QATNODE, NODE_B)


def test_agent_renews_only_its_own_nodes_lease(
    kubectl: Kubectl, control_plane: ControlPlane, two_nodes: None, tmp_path: Path
) -> None:
    agent = agent_client(kubectl, control_plane, tmp_path, "--bound-object-kind=Node", f"--bound-object-name={NODE_A}")
    try:
        assert agent.renew_lease(NODE_A, NODE_A) is None  # created
        assert agent.renew_lease(NODE_A, NODE_A) is None  # renewed
        kubectl.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": NODE_B, "namespace": NODE_LEASES}, "spec": {"holderIdentity": NODE_B}})
        # Keeping a lost node looking alive, or taking a live one's lease: refused, saying what it may do.
        refused = agent.renew_lease(NODE_B, NODE_A)
        assert refused is not None and "qatvm-agent-own-lease" in refused
        assert f"may renew only the Lease qatvm-node-lease/{NODE_A}, not qatvm-node-lease/{NODE_B}" in refused
        refused = agent.renew_lease(NODE_A, NODE_B)
        assert refused is not None and f"must hold its Lease as {NODE_A}" in refused
        assert kubectl.json("get", "lease", NODE_B, "-n", NODE_LEASES)["spec"]["holderIdentity"] == NODE_B
        assert kubectl.json("get", "lease", NODE_A, "-n", NODE_LEASES)["spec"]["holderIdentity"] == NODE_A
    finally:
        kubectl.run("delete", "lease", NODE_A, NODE_B, "-n", NODE_LEASES, "--ignore-not-found")


def test_agent_token_without_a_node_writes_nothing(
    kubectl: Kubectl, control_plane: ControlPlane, two_nodes: None, namespace: str, tmp_path: Path
) -> None:
    agent = agent_client(kubectl, control_plane, tmp_path)
    kubectl.apply(vm_on("on-a", namespace, NODE_A))
    place_as_controller(kubectl, "on-a", namespace, NODE_A)
    assert refusal(agent.vm_status("on-a", namespace, "Running"), "not bound to a node")
    assert refusal(agent.node_status(NODE_A, 1), "not bound to a node")
    assert refusal(agent.create_qatnode(NODE_A), "not bound to a node")
    # Reading is not confined: the agent lists VMs.
    listed = agent.kube.list(QatVirtualMachineResource, namespace=namespace)
    assert [vm.metadata.name for vm in listed if vm.metadata] == ["on-a"]


def test_an_agent_cannot_move_delete_or_relabel_what_it_serves(
    kubectl: Kubectl, control_plane: ControlPlane, two_nodes: None, namespace: str, tmp_path: Path
) -> None:
    """Finding 5 of the trust-boundary review, with a real node-bound agent token."""
    agent = agent_client(kubectl, control_plane, tmp_path, "--bound-object-kind=Node", f"--bound-object-name={NODE_A}")
    kubectl.apply(vm_on("mine", namespace, NODE_A))
    place_as_controller(kubectl, "mine", namespace, NODE_A)
    kubectl.run("label", "node", NODE_A, "zone=a")
    owner = kubectl.json("get", "qvm", "mine", "-n", namespace)["metadata"]
    kubectl.apply(vm_on("victim", namespace, NODE_A))
    place_as_controller(kubectl, "victim", namespace, NODE_A)

    def status_patch(change: dict[str, Any]) -> str | None:
        return agent._try(lambda: agent.kube.patch(
            QatVirtualMachineResource.Status, "mine", {"status": change}, namespace=namespace, patch_type=PatchType.MERGE
        ))

    placement = "may not change a VM's placement"
    assert refusal(status_patch({"nodeName": NODE_B}), placement)
    assert refusal(status_patch({"devices": [{"pciAddress": "0000:3b:00.0"}]}), placement)
    assert refusal(status_patch({"pciAddresses": "0000:3b:00.0"}), placement)
    reference = {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine", "name": "mine", "uid": owner["uid"]}
    assert refusal(agent.vm("victim", namespace, {"metadata": {"ownerReferences": [reference]}}), "labels or ownerReferences")
    assert refusal(agent.vm("mine", namespace, {"metadata": {"labels": {"team": "x"}}}), "labels or ownerReferences")
    assert refusal(agent.vm("mine", namespace, {"metadata": {"finalizers": ["example.com/other"]}}), "only its own finalizer")
    assert refusal(agent.vm("mine", namespace, {"metadata": {"annotations": {"note": "x"}}}), "only its own annotations")
    # Its Node: the VF count, yes; labels (which decide what lands there) or anything else, no.
    nodes_status = "may change only the qatvm.io/vf capacity"
    relabel = {"metadata": {"labels": {"zone": "b"}}}
    for patch in (relabel, {"status": {"capacity": {"cpu": "64"}}}, {"status": {"phase": "Running"}}):
        assert refusal(agent._try(lambda p=patch: agent.kube.patch(Node.Status, NODE_A, p, patch_type=PatchType.MERGE)),
                       nodes_status if "status" in patch else "labels or ownerReferences")
    # What it must do still works: its finalizer, its annotations, its VM's state.
    assert agent.vm("mine", namespace, {"metadata": {"finalizers": ["agent.qatvm.io/finalizer"]}}) is None
    assert agent.vm("mine", namespace, {"metadata": {"annotations": {"agent.qatvm.io/state": "x"}}}) is None
    assert status_patch({"phase": "Running", "observedGeneration": 1}) is None
    assert agent.vm("mine", namespace, {"metadata": {"finalizers": None}}) is None
    assert agent.node_status(NODE_A, 3) is None

    after = kubectl.json("get", "qvm", "mine", "-n", namespace)
    assert after["status"]["nodeName"] == NODE_A and after["status"]["devices"] == [{"pciAddress": "0000:3d:01.1"}]
    assert "ownerReferences" not in kubectl.json("get", "qvm", "victim", "-n", namespace)["metadata"]
    assert kubectl.json("get", "node", NODE_A)["metadata"]["labels"]["zone"] == "a"


# -- tenants: the shipped roles, and what they can never do ----------------------------------------


@pytest.fixture
def tenants(kubectl: Kubectl, control_plane: ControlPlane, operator_rbac: None, namespace: str, tmp_path: Path) -> dict[str, Kubectl]:
    """Two tenants of `namespace`: one bound to Kubernetes' `edit` (qatvm-edit aggregated into it),
    one bound to qatvm-edit alone."""
    users = {}
    for account, role in (("tenant-edit", "edit"), ("tenant-qatvm-edit", "qatvm-edit")):
        kubectl.run("create", "serviceaccount", account, "-n", namespace)
        kubectl.run("create", "rolebinding", account, "-n", namespace, f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}")
        token = kubectl.run("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
        path = write_kubeconfig(tmp_path / f"{account}.kubeconfig", control_plane.server, control_plane.ca_file,
                                user=account, token=token, namespace=namespace)
        users[account] = kubectl.with_kubeconfig(path)
    return users


def _aggregated(kubectl: Kubectl, role: str) -> None:
    rules = kubectl.json("get", "clusterrole", role).get("rules") or []
    assert any("qatvirtualmachines" in (r.get("resources") or []) for r in rules), f"{role} has no qatvm rules yet"


def test_tenant_roles_give_the_vm_verbs_and_never_status(kubectl: Kubectl, tenants: dict[str, Kubectl], namespace: str) -> None:
    for role in ("view", "edit", "admin"):
        eventually(lambda role=role: _aggregated(kubectl, role), timeout=30)
    for tenant in tenants.values():
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"):
            assert can(tenant, verb, VM, "-n", namespace), verb
        for verb in ("get", "update", "patch"):
            assert not can(tenant, verb, VM, STATUS, "-n", namespace), f"{verb} status"
        assert not can(tenant, "create", VM, "-n", "kube-system")
        assert not can(tenant, "patch", "namespaces")
        assert not can(tenant, "list", QATNODE)
    view = kubectl.json("get", "clusterrole", "qatvm-view")["rules"]
    assert view == [{"apiGroups": ["qatvm.io"], "resources": ["qatvirtualmachines"], "verbs": ["get", "list", "watch"]}]


def test_a_tenant_cannot_remove_or_forge_the_agents_bookkeeping(kubectl: Kubectl, tenants: dict[str, Kubectl], namespace: str) -> None:
    for role in ("edit",):
        eventually(lambda role=role: _aggregated(kubectl, role), timeout=30)
    manifest = vm_on("held", namespace, None)
    held = {**manifest, "metadata": {**manifest["metadata"], "finalizers": ["agent.qatvm.io/finalizer"],
                                     "annotations": {"agent.qatvm.io/state": "bound"}}}
    kubectl.apply(held)  # as the agent would leave it (a cluster admin may write it)
    for name, tenant in tenants.items():
        refused = tenant.run("patch", "qvm", "held", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]', check=False)
        assert refused.returncode != 0, name
        assert "only the node's agent removes the finalizer" in refused.stderr and "kubectl delete" in refused.stderr, refused.stderr
        # `kubectl replace` with the original manifest drops finalizers and annotations: refused, saying why.
        current = kubectl.json("get", "qvm", "held", "-n", namespace)
        replaced = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        refused = tenant.run("replace", "-f", "-", input=replaced, check=False)
        assert refused.returncode != 0 and "kubectl replace" in refused.stderr, refused.stderr
        forged = tenant.run("annotate", "qvm", "held", "agent.qatvm.io/state=released", "--overwrite", check=False)
        assert forged.returncode != 0 and "agent.qatvm.io/" in forged.stderr, forged.stderr
        # The API server puts the finalizer on a new VM; on one without it (an admin took it off),
        # a tenant may not put it back.
        tenant.run("create", "-f", "-", input=vm_on(f"bare-{name}", namespace, None))
        assert kubectl.json("get", "qvm", f"bare-{name}", "-n", namespace)["metadata"]["finalizers"] == ["agent.qatvm.io/finalizer"]
        kubectl.run("patch", "qvm", f"bare-{name}", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        refused = tenant.run("patch", "qvm", f"bare-{name}", "--type=merge", "-p", '{"metadata":{"finalizers":["agent.qatvm.io/finalizer"]}}', check=False)
        assert refused.returncode != 0 and "only the node's agent adds the finalizer" in refused.stderr, refused.stderr
        assert "forbidden" in tenant.run("patch", "qvm", "held", "--subresource=status", "--type=merge",
                                         "-p", '{"status":{"nodeName":"x"}}', check=False).stderr.lower()
        # Their own labels and annotations, and the spec, remain theirs.
        tenant.run("label", "qvm", "held", f"owner={name}", "--overwrite")
        tenant.run("patch", "qvm", "held", "--type=merge", "-p", '{"spec":{"vcpus":2}}')
    after = kubectl.json("get", "qvm", "held", "-n", namespace)["metadata"]
    assert after["finalizers"] == ["agent.qatvm.io/finalizer"] and after["annotations"]["agent.qatvm.io/state"] == "bound"
    # A cluster admin may: the way out when a node is gone for good.
    kubectl.run("patch", "qvm", "held", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
