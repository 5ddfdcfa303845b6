"""kopf settings shared by the controller and the agents, whose kopf handlers only watch.

Neither has a change handler, so kopf's diff-base (an "essence" of every object: a deep copy of
its body, then a diff against the last handled one) serves nothing, yet kopf builds it for every
watch event, at more CPU than the controller's handler spends on the event.
"""

from __future__ import annotations

from typing import Any, cast

import kopf


class _NoEssence(kopf.DiffBaseStorage):
    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        raise AssertionError("a change handler (kopf.on.create/update/resume/field) needs kopf's diff-base: do not use watch_only() for it")


def watch_only(settings: kopf.OperatorSettings) -> kopf.OperatorSettings:
    settings.persistence.diffbase_storage = _NoEssence()
    # The resources are known; scanning CRDs would need a right neither has any other use for.
    settings.scanning.disabled = True
    return settings
