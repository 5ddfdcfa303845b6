#!/usr/bin/env python3
"""Print qatvm's speed and memory figures beside a bare client's; run with the project's Python:
`.venv/bin/python tools/benchmark.py` (or `pytest -m bench tools/`).

Starts its own local clusters and prints, in one run:
- placement: N simulated Nodes and QatNodes (no agents), VMs of one VF created 32 at a time,
  create-to-placed, beside a bare lightkube client doing create + one status write per VM at
  the same concurrency, with the controller paused, on the same API server;
- end to end: M nodes with agents, VMs to Ready, beside a bare client doing create + two status
  writes per VM;
- each bare client twice: alone, and timed as qatvm is, by the benchmark's watch seeing each VM
  done (that watch is the benchmark's, not the operator's: the API server sends it an event per
  write and the benchmark parses each, so the second run carries the same observer);
- in each phase, qatvm's own writes sent by a bare client: the statuses one VM got from the
  operator, at their size, and its Events, copied for every VM. No operator that makes these
  writes can be faster on this API server, so its rate against the bare client's is the highest
  ratio within reach;
- the writes each VM cost (from the API server's audit log), the controller's and agents'
  resident memory and CPU seconds, idle CPU, and the controller's memory holding many VMs.
Prints numbers; asserts nothing (targets live in the README and the issues, and a loaded
machine should not fail a build).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Namespace, Node
from lightkube.types import PatchType

from qatvm.api.lease import NODE_LEASE_NAMESPACE, now
from qatvm.kube import QatNodeResource, QatVirtualMachineResource
from qatvm.local.state import ClusterState
from qatvm.testing.cluster import LocalNodes

CONCURRENCY = 32
TICKS = os.sysconf("SC_CLK_TCK")
BASE_IMAGE = "/var/lib/qatvm/images/base.qcow2"


# -- processes -------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Cluster:
    state_dir: Path

    @property
    def state(self) -> ClusterState:
        state = ClusterState.load(self.state_dir)
        assert state is not None
        return state

    def pids(self, prefix: str) -> list[int]:
        return [pid for name, pid in self.state.components.items() if name.startswith(prefix)]

    def usage(self, prefix: str) -> tuple[float, float]:
        """Summed RSS (MiB) and CPU seconds of the components named `prefix*`."""
        pids = self.pids(prefix)
        return sum(rss_mib(p) for p in pids), sum(cpu_seconds(p) for p in pids)

    def api_cpu(self) -> float:
        """CPU seconds of the API server and etcd so far: what each run asks of them."""
        return self.usage("kube-apiserver")[1] + self.usage("etcd")[1]

    def client(self) -> AsyncClient:
        # Deleting a thousand VMs at once takes the API server longer than lightkube's 10 s on a busy machine.
        return AsyncClient(
            config=KubeConfig.from_file(str(self.state_dir / "kubeconfig")), field_manager="qatvm-bench", timeout=120
        )


@contextmanager
def local_cluster(state_dir: Path, nodes: int) -> Iterator[Cluster]:
    qatvm = [sys.executable, "-m", "qatvm", "local"]
    subprocess.run([*qatvm, "up", "--nodes", str(nodes), "--state-dir", str(state_dir)], check=True, capture_output=True, text=True)
    try:
        yield Cluster(state_dir)
    finally:
        subprocess.run([*qatvm, "down", "--state-dir", str(state_dir)], capture_output=True, text=True)


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The operator stopped for a while, so a bare client has the API server to itself."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


# -- objects ---------------------------------------------------------------------------------------


def vm(name: str, namespace: str, node_selector: dict[str, str] | None = None) -> Any:
    spec: dict[str, Any] = {"memory": "256Mi", "qat": {"count": 1, "numa": "none"}, "image": {"path": BASE_IMAGE}}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return QatVirtualMachineResource(metadata=ObjectMeta(name=name, namespace=namespace), spec=spec)


def inventory(node_index: int, vfs: int) -> dict[str, Any]:
    bus = 0x3D
    return {
        "vfs": [
            {
                "pciAddress": f"0000:{bus:02x}:{1 + i // 8:02x}.{i % 8}", "pfAddress": f"0000:{bus:02x}:00.0",
                "deviceId": "4941", "generation": "4xxx", "services": ["sym", "asym"], "numaNode": 0,
                "iommuGroup": 100 + i, "driver": "4xxx", "healthy": True, "assignable": True,
            }
            for i in range(vfs)
        ],
        "total": vfs, "free": vfs, "unhealthy": 0,
        # Room for every VM on the node's VFs: VFs are what the benchmark fills.
        "numa": [{"id": 0, "cpus": "0-63", "memory": 256 << 30}],
    }


async def bounded(count: int, work: Callable[[int], Awaitable[None]], concurrency: int = CONCURRENCY) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await work(i)

    await asyncio.gather(*(one(i) for i in range(count)))


async def ensure_namespace(client: AsyncClient, name: str, **annotations: str) -> None:
    try:
        await client.create(Namespace(metadata=ObjectMeta(name=name, annotations=annotations or None)))
    except ApiError as error:
        if error.status.code != 409:
            raise


async def simulated_nodes(client: AsyncClient, count: int, vfs: int) -> None:
    # No agent renews these nodes' leases, and renewing 1000 of them would be load the bare
    # client does not carry: each is renewed once, dated to cover the whole run, so the
    # controller does not take them for lost nodes midway.
    vouched = now() + datetime.timedelta(hours=3)
    vouched = vouched.replace(microsecond=vouched.microsecond or 1)  # MicroTime needs a fraction

    async def one(i: int) -> None:
        name = f"sim-{i:04d}"
        await client.create(Lease(
            metadata=ObjectMeta(name=name, namespace=NODE_LEASE_NAMESPACE),
            spec=LeaseSpec(holderIdentity=name, leaseDurationSeconds=40, renewTime=vouched),
        ))
        await client.create(Node(metadata=ObjectMeta(name=name, labels={"qatvm.io/bench": "sim"})))
        await client.create(QatNodeResource(metadata=ObjectMeta(name=name), spec={}))
        await client.patch(QatNodeResource.Status, name, {"status": inventory(i, vfs)}, patch_type=PatchType.MERGE)

    await bounded(count, one)


# -- measuring -------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    count: int
    seconds: float
    latencies: list[float]
    # Wall-clock (epoch seconds) from the first create to the last VM done: the audit log's clock.
    window: tuple[float, float] = (0.0, 0.0)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50, p99 = (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]) if lat else (0.0, 0.0)
        return f"{self.label}: {self.count} VMs in {self.seconds:.1f}s = {self.rate:.1f} VMs/s; p50 {p50:.2f}s p99 {p99:.2f}s"


@dataclass
class Writes:
    """What the operator wrote for one VM: each status write (as the merge patch it amounts to)
    and each Event (without its name and the VM it names)."""

    statuses: list[dict[str, Any]]
    events: list[dict[str, Any]]


async def qatvm_writes(client: AsyncClient, namespace: str, done: Callable[[dict[str, Any]], bool]) -> Writes:
    """One VM through qatvm, watched until `done`: the status after each of the operator's writes
    (one watch event each) and the Events it got."""
    await ensure_namespace(client, namespace)
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        async for _, item in client.watch(QatVirtualMachineResource, namespace=namespace, fields={"metadata.name": "template"}):
            body = item.to_dict()
            status = body.get("status") or {}
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            if done(body):
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)  # the watch is open before the create
    await client.create(vm("template", namespace))
    await asyncio.wait_for(watcher, timeout=120)
    await events_sent(client, namespace)
    patches = [seen[0], *({k: after.get(k) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
                          for before, after in zip(seen, seen[1:]))]
    for patch in patches:
        if patch.get("nodeName"):
            # A node of the same length that does not exist: the resumed operator must not act on
            # these VMs (see bare_run).
            patch["nodeName"] = "z" * len(patch["nodeName"])
    events = [
        {"type": e.type, "reason": e.reason, "message": e.message, "source": e.source.to_dict() if e.source else None}
        async for e in client.list(Event, namespace=namespace)
    ]
    return Writes(patches, events)


def _count(items: list[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


async def bare(client: AsyncClient, namespace: str, count: int, status_writes: list[dict[str, Any]],
               done: Callable[[dict[str, Any]], bool] | None, events: list[dict[str, Any]] | None = None) -> Run:
    """What the operator's work costs at the least: create, then the status writes, nothing else;
    with `events`, those Events too. With `done`, timed as qatvm is: by the benchmark's watch
    seeing each VM `done`."""
    label = (f"bare client ({1 + len(status_writes)} writes per VM)" if events is None else
             f"qatvm's writes by a bare client (create, {_count(status_writes, 'status write')}, {_count(events, 'Event')})")

    # As the operator sends them: queued, behind the writes that carry state, by two senders
    # (qatvm.events.SENDERS); the run waits for the last one.
    unsent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send() -> None:
        while True:
            event = await unsent.get()
            try:
                await client.create(Event.from_dict(event))
            finally:
                unsent.task_done()

    async def writes(name: str) -> None:
        made = (await client.create(vm(name, namespace))).metadata
        assert made is not None
        for status in status_writes:
            await client.patch(QatVirtualMachineResource.Status, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE)
        for event in events or []:
            now = datetime.datetime.now(datetime.UTC).isoformat()
            unsent.put_nowait({
                **event, "metadata": {"generateName": f"{name}.", "namespace": namespace},
                "involvedObject": {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine", "name": name,
                                   "namespace": namespace, "uid": made.uid, "resourceVersion": made.resourceVersion},
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            })

    if events:
        assert done is not None, "qatvm's writes are timed by the watch, as qatvm is"
        senders = [asyncio.create_task(send()) for _ in range(2)]
        run = await observed_run(client, namespace, count, writes, done, f"{label}, timed by the same watch")
        await unsent.join()
        for sender in senders:
            sender.cancel()
        return run
    if done is not None:
        return await observed_run(client, namespace, count, writes, done, f"{label}, timed by the same watch")
    await ensure_namespace(client, namespace)
    latencies = [0.0] * count
    started = time.monotonic()

    async def one(i: int) -> None:
        begun = time.monotonic()
        await writes(f"bare-{i}")
        latencies[i] = time.monotonic() - begun

    await bounded(count, one)
    return Run(label, count, time.monotonic() - started, latencies)


async def bare_run(cluster: Cluster, client: AsyncClient, paused_pids: list[int], namespace: str, count: int,
                   status_writes: list[dict[str, Any]], done: Callable[[dict[str, Any]], bool] | None = None,
                   events: list[dict[str, Any]] | None = None) -> Run:
    """The bare client's run with the operator paused, printed with what it cost the API server."""
    with paused(paused_pids):
        api0 = cluster.api_cpu()
        run = await bare(client, namespace, count, status_writes, done, events)
        print(f"{run.line()}; API server + etcd CPU {cluster.api_cpu() - api0:.1f}s")
        # They name a node that does not exist: left in place, the operator would take it for a
        # lost node and write to them while it is being measured. No agent will let them go, so
        # the agent's finalizer (which the API server put on them) comes off first, as an admin.
        async for item in client.list(QatVirtualMachineResource, namespace=namespace):
            await client.patch(QatVirtualMachineResource, item.metadata.name, {"metadata": {"finalizers": None}},
                               namespace=namespace, patch_type=PatchType.MERGE)
        await client.deletecollection(QatVirtualMachineResource, namespace=namespace)
    return run


async def bare_runs(cluster: Cluster, client: AsyncClient, paused_pids: list[int], namespace: str, count: int,
                    status_writes: list[dict[str, Any]], done: Callable[[dict[str, Any]], bool]) -> tuple[Run, Run]:
    """The bare client alone, then timed by the watch that times qatvm. That watch costs the API
    server a watch event for every write and the benchmark the parsing of each; qatvm's run pays
    it, so the second run is the one measured the same way."""
    alone = await bare_run(cluster, client, paused_pids, namespace, count, status_writes)
    watched = await bare_run(cluster, client, paused_pids, f"{namespace}-watched", count, status_writes, done)
    return alone, watched


async def ceiling_run(cluster: Cluster, client: AsyncClient, paused_pids: list[int], namespace: str, count: int,
                      done: Callable[[dict[str, Any]], bool]) -> Run:
    """qatvm's writes for one VM (learnt from a VM the operator takes through) sent for `count`
    VMs by the bare client, timed by the same watch, with the operator paused."""
    writes = await qatvm_writes(client, f"{namespace}-template", done)
    return await bare_run(cluster, client, paused_pids, namespace, count, writes.statuses, done, writes.events)


def ratios(run: Run, alone: Run, watched: Run, ceiling: Run) -> str:
    return (f"ratio qatvm/bare: {run.rate / watched.rate:.2f} against the bare client timed by the same watch, "
            f"{run.rate / alone.rate:.2f} against it alone; within reach: {ceiling.rate / watched.rate:.2f} "
            f"(qatvm's own writes by the bare client), of which qatvm reached {run.rate / ceiling.rate:.2f}")


async def observed_run(client: AsyncClient, namespace: str, count: int, work: Callable[[str], Awaitable[None]],
                       done: Callable[[dict[str, Any]], bool], label: str) -> Run:
    """`work` on VMs vm-0.. 32 at a time, timed by a watch until each is `done`; latencies from
    each VM's start."""
    await ensure_namespace(client, namespace)
    begun: dict[str, float] = {}
    finished: dict[str, float] = {}
    everything = asyncio.Event()

    async def watch() -> None:
        async for _, item in client.watch(QatVirtualMachineResource, namespace=namespace):
            body = item.to_dict()
            name = body["metadata"]["name"]
            if name not in finished and done(body):
                finished[name] = time.monotonic()
                if len(finished) == count:
                    everything.set()
                    return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)  # the watch is open before the first create
    # On stderr, so the figures on stdout stay as the README quotes them; it also marks when
    # to attach a profiler.
    print(f"({label}: creating {count} VMs...)", file=sys.stderr, flush=True)
    started, wall = time.monotonic(), time.time()

    async def one(i: int) -> None:
        name = f"vm-{i}"
        begun[name] = time.monotonic()
        await work(name)

    await bounded(count, one)
    await asyncio.wait_for(everything.wait(), timeout=600)
    watcher.cancel()
    seconds = max(finished.values()) - started
    return Run(label, count, seconds, [finished[n] - begun[n] for n in finished], (wall, wall + seconds))


async def operator_run(client: AsyncClient, namespace: str, count: int, done: Callable[[dict[str, Any]], bool], label: str) -> Run:
    """Create VMs 32 at a time and watch until each is `done`."""

    async def create(name: str) -> None:
        await client.create(vm(name, namespace))

    return await observed_run(client, namespace, count, create, done, label)


def placed(body: dict[str, Any]) -> bool:
    return bool((body.get("status") or {}).get("nodeName"))


def running(body: dict[str, Any]) -> bool:
    return bool((body.get("status") or {}).get("phase") == "Running")


def ready(body: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (body.get("status") or {}).get("conditions", []))


def writes_per_vm(cluster: Cluster, namespace: str, run: Run) -> str:
    """Operator writes on the VM objects of `namespace`, QatNode status writes (in the burst, and
    over the whole run with the nodes' start and the deletions), and Events, per VM."""
    on_vm: Counter[str] = Counter()
    events: Counter[str] = Counter()
    qatnodes = in_burst = 0
    for event in LocalNodes(cluster.state_dir).audit.events():
        if event.get("stage") != "ResponseComplete" or event["verb"] not in ("create", "patch", "update"):
            continue
        user = event["user"]["username"].rsplit(":", 1)[-1]
        if not user.startswith("qatvm-") or user == "qatvm-admin":
            continue
        ref = event.get("objectRef") or {}
        if ref.get("resource") == "qatvirtualmachines" and ref.get("namespace") == namespace:
            on_vm[user] += 1
        elif ref.get("resource") == "events" and ref.get("namespace") == namespace:
            events[user] += 1
        elif ref.get("resource") == "qatnodes" and user == "qatvm-agent":
            qatnodes += 1
            received = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            in_burst += run.window[0] <= received <= run.window[1]
    count = run.count
    per = ", ".join(f"{u} {n / count:.2f}" for u, n in sorted(on_vm.items()))
    ev = ", ".join(f"{u} {n / count:.2f}" for u, n in sorted(events.items()))
    return (f"writes per VM: VM object {sum(on_vm.values()) / count:.2f} ({per}); Events {sum(events.values()) / count:.2f} ({ev}); "
            f"QatNode writes by agents {in_burst / count:.2f} in the burst ({qatnodes / count:.2f} over the whole run)")


async def settled(cluster: Cluster, limit: float = 120.0) -> None:
    """Until the operator is idle: the resumed processes first work off what the bare client's run
    sent their watches (a thousand VMs made and deleted), which must not count against qatvm."""
    deadline = time.monotonic() + limit
    # Idle, each process uses about 0.01 s a second (an agent renews its Lease, rescans sysfs):
    # five times that, summed, means none of them is working through a backlog.
    quiet = 0.05 * len(cluster.pids("controller") + cluster.pids("agent-"))
    before = cluster.usage("controller")[1] + cluster.usage("agent-")[1]
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = cluster.usage("controller")[1] + cluster.usage("agent-")[1]
        if now - before < quiet:
            return
        before = now
    raise TimeoutError(f"the operator was still busy {limit:.0f}s after the bare client's run")


async def wait_placing(client: AsyncClient, namespace: str) -> None:
    """Until the (resumed or restarted) controller places again: one VM through."""
    await ensure_namespace(client, namespace)
    await client.create(vm("warm-up", namespace))
    # A controller paused past its lease steps down, restarts and lists everything again.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = (await client.get(QatVirtualMachineResource, "warm-up", namespace=namespace)).to_dict()
        if placed(body):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the controller placed nothing in 300 s")


async def events_sent(client: AsyncClient, namespace: str, quiet: float = 3.0, limit: float = 180.0) -> float:
    """Until the Events about `namespace`'s VMs stop coming (they are sent in the background,
    after the writes that carry state); returns how long that took."""
    started = time.monotonic()
    count, since = -1, started
    while time.monotonic() - started < limit:
        now = len([e async for e in client.list(Event, namespace=namespace)])
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        await asyncio.sleep(0.5)
    return since - started


def idle_cpu(cluster: Cluster, prefix: str, seconds: float = 10.0) -> float:
    before = cluster.usage(prefix)[1]
    time.sleep(seconds)
    return cluster.usage(prefix)[1] - before


# -- the phases ------------------------------------------------------------------------------------


async def placement_phase(cluster: Cluster, nodes: int, vfs: int, vms: int, memory_vms: int) -> None:
    client = cluster.client()
    print(f"== placement: {nodes} nodes x {vfs} VFs, {vms} VMs of 1 VF, no agents, {CONCURRENCY} at a time")
    started = time.monotonic()
    await simulated_nodes(client, nodes, vfs)
    print(f"made {nodes} Nodes and QatNodes in {time.monotonic() - started:.1f}s")
    alone, watched = await bare_runs(cluster, client, cluster.pids("controller"), "bare-placement", vms,
                                     [{"nodeName": "bare", "devices": [{"pciAddress": "0000:00:00.0"}]}], placed)
    await wait_placing(client, "bench-warm")
    ceiling = await ceiling_run(cluster, client, cluster.pids("controller"), "ceiling-placement", vms, placed)
    await wait_placing(client, "bench-warm-again")
    await settled(cluster)
    rss0, cpu0 = cluster.usage("controller")
    api0 = cluster.api_cpu()
    run = await operator_run(client, "bench-placement", vms, placed, "qatvm create-to-placed")
    print(f"{run.line()}; API server + etcd CPU {cluster.api_cpu() - api0:.1f}s")
    print(f"{ratios(run, alone, watched, ceiling)} (target >= 0.8; p99 target < 2 s)")
    print(f"the last Event followed {await events_sent(client, 'bench-placement'):.1f}s after the last placement")
    rss1, cpu1 = cluster.usage("controller")  # the Events' CPU included
    print(writes_per_vm(cluster, "bench-placement", run))
    print(f"controller: RSS {rss1:.0f} MiB, CPU {cpu1 - cpu0:.1f}s for the run; idle CPU over 10 s: {idle_cpu(cluster, 'controller'):.2f}s")
    if memory_vms > vms:
        more = memory_vms - vms
        big = await operator_run(client, "bench-memory", more, placed, f"{more} more VMs")
        print(big.line())
        await events_sent(client, "bench-memory")
        print(f"controller holding {memory_vms} VMs and {nodes} nodes: RSS {cluster.usage('controller')[0]:.0f} MiB (target < 150 MiB); "
              f"idle CPU over 10 s: {idle_cpu(cluster, 'controller'):.2f}s")
    await client.close()


async def end_to_end_phase(cluster: Cluster, vms: int) -> None:
    client = cluster.client()
    nodes = len(cluster.state.nodes)
    print(f"== end to end: {nodes} nodes with agents, {vms} VMs of 1 VF to Ready, {CONCURRENCY} at a time")
    operator_pids = cluster.pids("controller") + cluster.pids("agent-")
    alone, watched = await bare_runs(cluster, client, operator_pids, "bare-e2e", vms, [
        {"nodeName": "bare", "devices": [{"pciAddress": "0000:00:00.0"}], "phase": "Scheduled"},
        {"phase": "Running", "observedGeneration": 1},
    ], running)
    await wait_placing(client, "bench-warm")
    ceiling = await ceiling_run(cluster, client, operator_pids, "ceiling-e2e", vms, running)
    await wait_placing(client, "bench-warm-again")
    await settled(cluster)
    before = {p: cluster.usage(p) for p in ("controller", "agent-")}
    api0 = cluster.api_cpu()
    run = await operator_run(client, "bench-e2e", vms, ready, "qatvm apply-to-Ready")
    print(f"{run.line()}; API server + etcd CPU {cluster.api_cpu() - api0:.1f}s")
    print(f"{ratios(run, alone, watched, ceiling)} (target >= 0.6; p99 target < 3 s)")
    print(f"the last Event followed {await events_sent(client, 'bench-e2e'):.1f}s after the last VM was Ready")
    after = {p: cluster.usage(p) for p in ("controller", "agent-")}  # the Events' CPU included
    print(writes_per_vm(cluster, "bench-e2e", run))
    print(f"controller: RSS {after['controller'][0]:.0f} MiB, CPU {after['controller'][1] - before['controller'][1]:.1f}s; "
          f"agents: RSS {after['agent-'][0] / nodes:.0f} MiB each, CPU {after['agent-'][1] - before['agent-'][1]:.1f}s in all")
    print(f"idle CPU over 10 s: controller {idle_cpu(cluster, 'controller'):.2f}s, {nodes} agents {idle_cpu(cluster, 'agent-'):.2f}s")
    await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes for placement (default: %(default)s)")
    parser.add_argument("--vfs", type=int, default=16, help="VFs per simulated node (default: %(default)s)")
    parser.add_argument("--vms", type=int, default=1000, help="VMs placed (default: %(default)s); 0: skip the placement phase")
    parser.add_argument("--memory-vms", type=int, default=10000, help="VMs the controller holds for the memory figure; 0: skip")
    parser.add_argument("--e2e-nodes", type=int, default=10, help="nodes with agents (default: %(default)s); 0: skip the end-to-end phase")
    parser.add_argument("--e2e-vms", type=int, default=150, help="VMs to Ready (default: %(default)s); 0: skip the end-to-end phase")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qatvm-bench-") as scratch:
        if args.vms:
            with local_cluster(Path(scratch) / "placement", nodes=0) as cluster:
                asyncio.run(placement_phase(cluster, args.nodes, args.vfs, args.vms, args.memory_vms))
        if args.e2e_nodes and args.e2e_vms:
            with local_cluster(Path(scratch) / "e2e", nodes=args.e2e_nodes) as cluster:
                asyncio.run(end_to_end_phase(cluster, args.e2e_vms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
