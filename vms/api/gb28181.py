"""GB/T 28181 devices registered with this center now: where they are, until when, their channels."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from vms.api.deps import get_hub, require
from vms.auth import Principal, Role
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1/gb28181", tags=["gb28181"])


class StreamOut(BaseModel):
    """A channel's live stream (INVITE) and what it received."""

    state: str = Field(description="idle (waiting to invite again), inviting, or playing")
    watched: bool = Field(description="streamed only while someone here watches it (a lower platform's camera)")
    reason: str = Field(description="why the stream last ended or failed, empty if it never did")
    ssrc: str
    failures: int = Field(description="INVITEs failed or streams lost in a row (the backoff grows with it)")
    port: int | None = Field(description="local port the media is received on (UDP or TCP-passive)")
    packets: int
    frames: int
    lost: int
    ssrc_mismatch: int
    codec: str


class Registered(BaseModel):
    device_id: str
    peer: str = Field(description="transport:host:port the device registered from (answers go there)")
    registered_at: str | None
    expires_at: str | None
    channels: dict[str, str] = Field(description="channel ID -> catalog status (ON, OFF, VLOST ...)")
    reachable: bool = Field(description="False after it did not answer a probe, until it speaks again")
    info: dict[str, str] = Field(description="its DeviceInfo and DeviceStatus answers")
    streams: dict[str, StreamOut] = Field(description="channel ID -> its live stream, when recorded "
                                           "or watched")


class Registrations(BaseModel):
    enabled: bool
    server_id: str | None
    domain: str | None
    devices: list[Registered]


@router.get("/devices", response_model=Registrations)
def registrations(
    hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin, Role.maintenance))
) -> Registrations:
    gb = hub.gb28181
    cfg = hub.cfg.gb28181
    if gb is None:
        return Registrations(enabled=False, server_id=cfg.server_id, domain=cfg.realm or None, devices=[])
    streams = gb.player.view() if gb.player is not None else {}
    return Registrations(
        enabled=True, server_id=cfg.server_id, domain=cfg.realm,
        devices=[Registered(device_id=r.device_id, peer=str(r.peer), registered_at=iso(r.registered_at),
                            expires_at=iso(r.expires_at), channels=dict(r.channels), reachable=r.reachable,
                            info=dict(r.info),
                            streams={c: StreamOut(**streams[c]) for c in [r.device_id, *r.channels] if c in streams})
                 for r in gb.registrations_now()],
    )
