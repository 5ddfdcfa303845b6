"""What every qatvm API model shares: camelCase on the wire, and references to VMs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; fields the API adds later are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ObjectRef(ApiModel):
    """A VM as other objects name it (a VF's holder, a domain's owner): the UID tells a
    re-created VM of the same name apart."""

    model_config = ConfigDict(frozen=True)

    namespace: str = Field(pattern=_DNS_LABEL)
    name: str = Field(max_length=253, pattern=_DNS_SUBDOMAIN)
    uid: str = Field(pattern=r"^[A-Za-z0-9-]{1,128}$")
