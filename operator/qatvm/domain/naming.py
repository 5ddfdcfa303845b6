"""The libvirt identity of a VM: its domain name and UUID, derived from the Kubernetes object.

Name: `qatvm-<namespace>_<name>`. Kubernetes names never contain `_`, so the first `_` splits the
two unambiguously and no two VMs of a cluster share a name. Names longer than `MAX_NAME_LENGTH`
(libvirt writes the name into file and socket paths) are cut and end with `_<hash>` of the full
namespace/name; a hashed name holds two `_` and a plain one holds one, so a VM can never pick a
name that equals another VM's hashed name.
"""

from __future__ import annotations

import hashlib
import uuid

DOMAIN_PREFIX = "qatvm-"
MAX_NAME_LENGTH = 96
_HASH_CHARS = 16

# Fixed forever: changing it would give every existing VM a new domain UUID.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://qatvm.io/xmlns/domain/v1")


def domain_name(namespace: str, name: str) -> str:
    full = f"{DOMAIN_PREFIX}{namespace}_{name}"
    if len(full) <= MAX_NAME_LENGTH:
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:_HASH_CHARS]
    return f"{full[: MAX_NAME_LENGTH - _HASH_CHARS - 1]}_{digest}"


def domain_uuid(vm_uid: str) -> uuid.UUID:
    """Stable per VM object; a namespaced hash so it never equals the UID another tool may use."""
    return uuid.uuid5(_UUID_NAMESPACE, vm_uid)
