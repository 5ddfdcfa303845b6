"""The VM status an agent writes, as whole values computed from what happened.

The agent reconciles from the VM's status and `metadata.generation` against
`status.observedGeneration`, so nothing here depends on what the agent wrote before, and a status
equal to the stored one (but for transition times) is never written again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qatvm.agent.reconciler import Outcome
from qatvm.api import conditions as cond
from qatvm.api.vm import Condition, DomainStatus, Phase, QatVirtualMachine


@dataclass(frozen=True)
class DeviceHealth:
    """The VM's VFs as the node's last scan saw them."""

    missing: tuple[str, ...] = ()
    unhealthy: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unhealthy

    @property
    def reason(self) -> str:
        return "DeviceMissing" if self.missing else "DeviceUnhealthy"

    @property
    def message(self) -> str:
        if self.ok:
            return "every VF is present and healthy"
        parts = []
        if self.missing:
            parts.append(f"VFs gone from the host: {', '.join(self.missing)}")
        if self.unhealthy:
            parts.append(f"VFs unhealthy: {', '.join(self.unhealthy)}")
        return "; ".join(parts)


def after_apply(vm: QatVirtualMachine, outcome: Outcome, health: DeviceHealth) -> dict[str, Any]:
    """Ready once the domain is as spec.running asks (running, or stopped on purpose) and every VF
    is present and healthy."""
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
    if not health.ok:
        conditions = cond.set_condition(conditions, cond.DEVICES_HEALTHY, "False", health.reason, health.message, generation)
        conditions = cond.set_condition(conditions, cond.READY, "False", health.reason, health.message, generation)
    elif vm.status.condition(cond.DEVICES_HEALTHY) is not None:
        conditions = cond.set_condition(conditions, cond.DEVICES_HEALTHY, "True", "DevicesHealthy", health.message, generation)
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


def changes(vm: QatVirtualMachine, status: dict[str, Any]) -> bool:
    """Whether writing `status` would tell a reader anything the stored status does not."""
    current = vm.status
    if "phase" in status and (current.phase.value if current.phase else None) != status["phase"]:
        return True
    if "domain" in status and (current.domain or DomainStatus()).wire() != status["domain"]:
        return True
    if "observedGeneration" in status and current.observed_generation != status["observedGeneration"]:
        return True
    wanted = [Condition.model_validate(c) for c in status.get("conditions", [])]
    return not cond.same(current.conditions, wanted)


def health_changed(vm: QatVirtualMachine, status: dict[str, Any]) -> Condition | None:
    """The DevicesHealthy condition `status` brings when it differs from the stored one."""
    wanted = next((Condition.model_validate(c) for c in status.get("conditions", []) if c["type"] == cond.DEVICES_HEALTHY), None)
    current = vm.status.condition(cond.DEVICES_HEALTHY)
    if wanted is None or (current is not None and current.status == wanted.status and current.message == wanted.message):
        return None
    return wanted
