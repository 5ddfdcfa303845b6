"""Build the control plane's Go binaries once per version into the machine-wide cache.

The versions come from the wrapper modules' `go.mod` files under `tools/`, so bumping a
version there is the only change needed: the cache key follows, and old builds stay usable
by clones that still pin them.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qatvm.paths import cache_dir, project_root

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
# Built only for `qatvm local up --kubelet` (and `qatvm build --kubelet`): most runs need no
# real nodes, and these two add minutes to a cold build.
NODE_COMMANDS = ("kubelet", "kube-scheduler")
KUBE_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KSTATUS_MODULE = "sigs.k8s.io/cli-utils"

Progress = Callable[[str], None]
BUILD_RECORD = "build.json"


class BuildError(RuntimeError):
    """A Go build failed; the message carries the tail of the compiler output."""


@dataclass(frozen=True)
class Bundle:
    """One set of binaries built from one wrapper module at one version."""

    name: str
    module_dir: Path
    version: str
    commands: tuple[str, ...]
    packages: tuple[str, ...]
    ldflags: tuple[str, ...]

    @property
    def directory(self) -> Path:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return cache_dir() / "bin" / f"{self.name}-{self.version}-linux-{arch}"

    def path(self, command: str) -> Path:
        return self.directory / command

    def is_built(self) -> bool:
        return all(os.access(self.path(c), os.X_OK) for c in self.commands)


def required_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if not match:
        raise BuildError(f"{go_mod} does not require {module}")
    return match.group(1)


def _kubernetes(name: str, commands: tuple[str, ...]) -> Bundle:
    module_dir = project_root() / "tools" / "k8s"
    version = required_version(module_dir / "go.mod", KUBE_MODULE)
    major, minor = version.lstrip("v").split(".")[:2]
    stamp = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    # kubectl reports its own version through component-base and client-go; both are stamped
    # so that `kubectl version` and the API server's /version show the real release.
    ldflags = tuple(
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in stamp.items()
    )
    return Bundle(
        name=name,
        module_dir=module_dir,
        version=version,
        commands=commands,
        packages=tuple(f"{KUBE_MODULE}/cmd/{c}" for c in commands),
        ldflags=ldflags,
    )


def kubernetes_bundle() -> Bundle:
    return _kubernetes("kubernetes", KUBE_COMMANDS)


def node_bundle() -> Bundle:
    """kubelet and kube-scheduler, from the same wrapper module and version as the control plane."""
    return _kubernetes("kubernetes-node", NODE_COMMANDS)


def _wrapper_bundle(name: str, module: str) -> Bundle:
    """One command built from the wrapper module `tools/NAME` itself, at the version it requires of `module`."""
    module_dir = project_root() / "tools" / name
    return Bundle(
        name=name,
        module_dir=module_dir,
        version=required_version(module_dir / "go.mod", module),
        commands=(name,),
        packages=(".",),
        ldflags=(),
    )


def etcd_bundle() -> Bundle:
    return _wrapper_bundle("etcd", ETCD_MODULE)


def kstatus_bundle() -> Bundle:
    """The kstatus reader the tests check conditions with; not part of the control plane."""
    return _wrapper_bundle("kstatus", KSTATUS_MODULE)


def bundles(kubelet: bool = False) -> tuple[Bundle, ...]:
    """The control plane's bundles and kstatus, and with `kubelet` also what real nodes run."""
    # kstatus after kubernetes: it shares k8s.io/apimachinery's version, so it reuses those
    # compiled packages from Go's build cache.
    return (etcd_bundle(), kubernetes_bundle(), kstatus_bundle(), *((node_bundle(),) if kubelet else ()))


def binary(command: str) -> Path:
    """The cached binary for a command; raises if it has not been built yet."""
    for bundle in bundles(kubelet=True):
        if command in bundle.commands:
            if not bundle.is_built():
                flag = " --kubelet" if command in NODE_COMMANDS else ""
                raise BuildError(
                    f"{command} {bundle.version} is not built yet: run `qatvm build{flag}` "
                    f"(it caches into {bundle.directory})"
                )
            return bundle.path(command)
    raise KeyError(command)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    return env


def _count_packages(bundle: Bundle) -> int:
    listed = subprocess.run(
        ["go", "list", "-deps", *bundle.packages],
        cwd=bundle.module_dir,
        env=_go_env(),
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        raise BuildError(f"go list failed in {bundle.module_dir}:\n{listed.stderr[-4000:]}")
    return len(listed.stdout.split())


def build(bundle: Bundle, progress: Progress) -> None:
    """Build one bundle into its cache folder; a no-op when it is there already.

    A lock serialises clones building the same version at once, and the binaries appear
    only by an atomic rename, so a killed build never leaves a half-written cache entry.
    """
    if bundle.is_built():
        progress(f"{bundle.name} {bundle.version}: cached in {bundle.directory}")
        return
    bundle.directory.parent.mkdir(parents=True, exist_ok=True)
    with open(bundle.directory.parent / f".{bundle.directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if bundle.is_built():
            progress(f"{bundle.name} {bundle.version}: built by another process")
            return
        _build_locked(bundle, progress)


def _build_locked(bundle: Bundle, progress: Progress) -> None:
    started = time.monotonic()
    progress(f"{bundle.name} {bundle.version}: resolving modules in {bundle.module_dir}")
    total = _count_packages(bundle)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.directory.name}.", dir=bundle.directory.parent))
    try:
        # `-o DIR/` names each binary after its package; a single package built from the
        # wrapper module itself ("." ) would be named after the module, so it is named here.
        output = f"{staging}/" if len(bundle.commands) > 1 else str(staging / bundle.commands[0])
        command = ["go", "build", "-v", "-trimpath", "-o", output]
        command += ["-ldflags", " ".join(("-s", "-w", *bundle.ldflags)), *bundle.packages]
        proc = subprocess.Popen(
            command,
            cwd=bundle.module_dir,
            env=_go_env(),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None
        tail: list[str] = []
        done = 0
        last_report = 0.0
        for line in proc.stderr:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            if line and not line.startswith(("#", " ", "\t")):
                done += 1
            now = time.monotonic()
            if now - last_report >= 10:
                last_report = now
                progress(
                    f"{bundle.name} {bundle.version}: compiled {done}/{total} packages "
                    f"({now - started:.0f}s)"
                )
        if proc.wait() != 0:
            raise BuildError(f"go build of {bundle.name} failed:\n" + "\n".join(tail))
        missing = [c for c in bundle.commands if not (staging / c).exists()]
        if missing:
            raise BuildError(f"go build of {bundle.name} produced no {', '.join(missing)}")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every clone
        # What the build cost, for `tools/benchmark.py`; ru_maxrss is the largest child (KiB).
        record = {
            "seconds": round(time.monotonic() - started, 1),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
            "go": subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip(),
        }
        (staging / BUILD_RECORD).write_text(json.dumps(record, indent=2))
        staging.rename(bundle.directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"{bundle.name} {bundle.version}: built in {time.monotonic() - started:.0f}s -> {bundle.directory}")


def ensure_built(progress: Progress | None = None, kubelet: bool = False) -> None:
    report = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    # Go is needed only to build: a machine that runs cached binaries (a server, a test guest
    # sharing the cache) need not have it.
    if shutil.which("go") is None and not all(bundle.is_built() for bundle in bundles()):
        raise BuildError("the Go toolchain is not on PATH; it is needed once to build the control plane")
    for bundle in bundles(kubelet):
        build(bundle, report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qatvm build",
        description="Build etcd, kube-apiserver, kube-controller-manager, kubectl and kstatus into the cache.",
    )
    parser.add_argument("--print-dir", action="store_true", help="print the cache folders and exit")
    parser.add_argument(
        "--kubelet", action="store_true", help="also build kubelet and kube-scheduler (for `qatvm local up --kubelet`)"
    )
    args = parser.parse_args(argv)
    if args.print_dir:
        for bundle in bundles(args.kubelet):
            print(bundle.directory)
        return 0
    try:
        ensure_built(kubelet=args.kubelet)
    except BuildError as error:
        print(f"qatvm build: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
