"""What every qatvm API model shares: camelCase on the wire, and references to VMs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; fields the API adds later are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectRef(ApiModel):
    """Who holds a VF: enough to find the VM and to tell a re-created one apart."""

    namespace: str
    name: str
    uid: str
