"""How the controller and the agents log in to the API server through kopf."""

from __future__ import annotations

from typing import Any

import kopf


def register_login(registry: kopf.OperatorRegistry) -> None:
    """In a pod, its service account; elsewhere KUBECONFIG (set from --kubeconfig).

    Each process has its own registry, which starts without kopf's default login handlers.
    """

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
