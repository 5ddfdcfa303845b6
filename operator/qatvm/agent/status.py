"""The VM status an agent writes, as whole values computed from what happened."""

from __future__ import annotations

from typing import Any

from qatvm.agent.reconciler import Outcome
from qatvm.api import conditions as cond
from qatvm.api.vm import Phase, QatVirtualMachine


def after_apply(vm: QatVirtualMachine, outcome: Outcome) -> dict[str, Any]:
    """Ready once the domain is as spec.running asks: running, or stopped on purpose."""
    generation = vm.metadata.get("generation")
    wanted = Phase.RUNNING if vm.spec.running else Phase.STOPPED
    reached = outcome.phase is wanted
    conditions = cond.set_condition(
        vm.status.conditions, cond.READY, "True" if reached else "False", outcome.phase.value, outcome.message, generation
    )
    conditions = cond.remove_condition(conditions, cond.STALLED)
    if reached:
        conditions = cond.remove_condition(conditions, cond.RECONCILING)
    else:
        conditions = cond.set_condition(conditions, cond.RECONCILING, "True", "DomainState", outcome.message, generation)
    return {
        "phase": outcome.phase.value,
        "domain": outcome.domain.wire(),
        "conditions": [c.wire() for c in conditions],
        "observedGeneration": generation,
    }


def after_failure(vm: QatVirtualMachine, error: Exception) -> dict[str, Any]:
    """Failed, with what went wrong in words: the agent retries, but a person may need to act."""
    generation = vm.metadata.get("generation")
    reason = type(error).__name__.removesuffix("Error") or "Error"
    conditions = cond.set_condition(vm.status.conditions, cond.READY, "False", reason, str(error), generation)
    conditions = cond.set_condition(conditions, cond.STALLED, "True", reason, str(error), generation)
    conditions = cond.remove_condition(conditions, cond.RECONCILING)
    return {"phase": Phase.FAILED.value, "conditions": [c.wire() for c in conditions], "observedGeneration": generation}


def device_health(vm: QatVirtualMachine, missing: list[str], unhealthy: list[str]) -> dict[str, Any] | None:
    """The DevicesHealthy condition (and Ready) for the VFs' state; None when nothing changes."""
    generation = vm.metadata.get("generation")
    current = vm.status.condition(cond.DEVICES_HEALTHY)
    if not missing and not unhealthy:
        if current is None or current.status == "True":
            return None
        conditions = cond.set_condition(vm.status.conditions, cond.DEVICES_HEALTHY, "True", "DevicesHealthy", "every VF is present and healthy", generation)
        return {"conditions": [c.wire() for c in conditions]}
    parts = []
    if missing:
        parts.append(f"VFs gone from the host: {', '.join(missing)}")
    if unhealthy:
        parts.append(f"VFs unhealthy: {', '.join(unhealthy)}")
    message = "; ".join(parts)
    reason = "DeviceMissing" if missing else "DeviceUnhealthy"
    if current is not None and current.status == "False" and current.message == message:
        return None
    conditions = cond.set_condition(vm.status.conditions, cond.DEVICES_HEALTHY, "False", reason, message, generation)
    conditions = cond.set_condition(conditions, cond.READY, "False", reason, message, generation)
    return {"conditions": [c.wire() for c in conditions]}
