"""The agent side of the hub: registration and batched heartbeats (protocol v1)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from vms import audit
from vms.api.deps import get_hub, require
from vms.auth import READERS, Principal, Role
from vms.hub import HeartbeatRejected, Hub
from vms.protocol import PROTOCOL_VERSION, Heartbeat, HeartbeatReply, Register, RegisterReply
from vms.timeutil import iso

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


@router.post("/register", response_model=RegisterReply)
def register(
    body: Register, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> RegisterReply:
    if body.protocol != PROTOCOL_VERSION:
        raise HTTPException(426, f"protocol {body.protocol} not supported; this hub speaks {PROTOCOL_VERSION}")
    hub.register_agent(who, body.version, body.hostname)
    audit.append(
        hub.sessions,
        at=hub.clock(),
        actor=who.name,
        role=who.role.value,
        action="agent.register",
        target=who.name,
        detail={"version": body.version, "hostname": body.hostname},
    )
    return RegisterReply(
        agent_id=who.name, prefixes=list(who.prefixes), heartbeat_interval_s=hub.cfg.health.heartbeat_interval_s
    )


@router.post("/heartbeat", response_model=HeartbeatReply)
def heartbeat(
    body: Heartbeat, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> HeartbeatReply:
    """Per-camera stats; devices outside the agent's prefixes are rejected one by one, not the batch."""
    try:
        return hub.heartbeat(who, body)
    except HeartbeatRejected as exc:
        raise HTTPException(426, str(exc)) from None


@router.get("")
def list_agents(hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    now = hub.clock()
    with hub.lock:
        out = []
        for a, name in enumerate(hub.agent_names):
            last = hub.agent_last[a]
            devices = int((hub.health.agent[: hub.health.n] == a).sum())
            out.append(
                {
                    "id": name,
                    "online": not hub.agent_dark(a, now),
                    "devices": devices,
                    "last_heartbeat": iso(last) if math.isfinite(last) else None,
                    "clock_skew_s": round(hub.agent_skew[a], 3),
                }
            )
    return {"agents": out}
