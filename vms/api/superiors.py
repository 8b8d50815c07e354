"""The links to superior platforms (级联: the district center, the police platform): admins see
whether each is up, since when, and why not."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from vms.api.deps import get_hub, require
from vms.auth import Principal, Role
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1/superiors", tags=["superiors"])


class SuperiorOut(BaseModel):
    name: str
    server_id: str
    domain: str
    address: str = Field(description="transport:host:port of the superior's SIP server")
    state: str = Field(description="registered, registering, or failing")
    since: str | None = Field(description="when the link entered this state")
    last_error: str = Field(description="why the link last failed or was lost, empty if it never was")
    registered_at: str | None
    expires_at: str | None
    last_keepalive: str | None = Field(description="last keepalive the superior answered")
    failures: int = Field(description="failed registrations in a row")
    subscriptions: list[str] = Field(description="what the superior subscribed to (Catalog, Alarm)")
    share: list[str] = Field(description="center IDs and device-ID prefixes it may see")
    counters: dict[str, int]
    streams: list[dict[str, object]] = Field(description="live streams sent to it now: device, frames, packets")


@router.get("", response_model=list[SuperiorOut])
def superiors(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> list[SuperiorOut]:
    gb = hub.gb28181
    if gb is None or gb.cascade is None:
        return []
    times = ("since", "registered_at", "expires_at", "last_keepalive")
    return [SuperiorOut(**{**v, **{k: iso(v[k]) for k in times}}) for v in gb.cascade.view()]
