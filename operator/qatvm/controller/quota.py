"""How many VFs a namespace may hold: set by a cluster admin on the Namespace.

    kubectl annotate namespace team-a qatvm.io/vf-quota=8

An annotation on the Namespace, because the people who run VMs in a namespace cannot change
their Namespace (no namespace role grants it) and a cluster admin already manages it. No
annotation means no cap. A VM that would take its namespace over the cap stays Pending with
the reason QuotaExceeded until VMs of that namespace are deleted or the cap is raised.
"""

from __future__ import annotations

import logging
from typing import Any

from qatvm.controller.placement import NoFit

log = logging.getLogger(__name__)

ANNOTATION = "qatvm.io/vf-quota"


def quota_of(namespace: dict[str, Any]) -> int | None:
    raw = (namespace["metadata"].get("annotations") or {}).get(ANNOTATION)
    if raw is None:
        return None
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        # Fail closed: an admin who meant a cap and mistyped it must not get none.
        log.warning("namespace %s: %s=%r is not a whole number >= 0; no VF may be placed there", namespace["metadata"]["name"], ANNOTATION, raw)
        return 0
    return limit


def over_quota(namespace: str, limit: int | None, held: int, count: int) -> NoFit | None:
    if limit is None or held + count <= limit:
        return None
    return NoFit(
        "QuotaExceeded",
        f"namespace {namespace} may hold {limit} VFs (the annotation {ANNOTATION} on the Namespace); "
        f"its VMs hold {held}, and this VM needs {count}",
        # More than the whole cap: waiting will not help, only a cluster admin can.
        never=count > limit,
    )
