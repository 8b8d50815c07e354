"""Maintenance alerts: list, detail with its life cycle and deliveries, acknowledge, resolve."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from sqlalchemy import func, select

from vms.api.deps import Comment, get_hub, require
from vms.auth import READERS, Principal, Role
from vms.db.models import Alert, AlertEvent, Delivery
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
AlertState = Literal["open", "acknowledged", "resolved", "active"]


def alert_view(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "state": a.state,
        "title": a.title,
        "device_id": a.device_id,
        "agent_id": a.agent_id,
        "center": a.center_id,
        "detail": a.detail,
        "members": a.members,
        "since": iso(a.since_at),
        "opened_at": iso(a.opened_at),
        "acknowledged_at": iso(a.acknowledged_at),
        "acknowledged_by": a.acknowledged_by,
        "resolved_at": iso(a.resolved_at),
        "resolved_by": a.resolved_by,
    }


@router.get("")
def list_alerts(
    state: AlertState | None = Query(None, description="'active' = open or acknowledged"),
    center: str | None = Query(None, max_length=64),
    kind: str | None = Query(None, max_length=32),
    device_id: str | None = Query(None, max_length=20),
    limit: int = Query(200, ge=1, le=5000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    q = select(Alert)
    if state == "active":
        q = q.where(Alert.state != "resolved")
    elif state is not None:
        q = q.where(Alert.state == state)
    if kind:
        q = q.where(Alert.kind == kind)
    if device_id:
        q = q.where(Alert.device_id == device_id)
    with hub.sessions() as s:
        rows = s.scalars(q.order_by(Alert.id.desc()).limit(limit if not center else 100_000)).all()
        if center:
            in_center = set(hub.registry.center_devices(center)) if center in hub.registry.members else set()
            rows = [r for r in rows if r.center_id == center or in_center.intersection(r.members or [])][:limit]
        total_active = s.scalar(select(func.count()).select_from(Alert).where(Alert.state != "resolved"))
    return {"active": total_active, "alerts": [alert_view(r) for r in rows]}


@router.get("/{alert_id}")
def get_alert(
    alert_id: int = Path(ge=1, le=2**62), hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    with hub.sessions() as s:
        a = s.get(Alert, alert_id)
        if a is None:
            raise HTTPException(404, f"no alert {alert_id}")
        events = s.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id)).all()
        deliveries = s.scalars(select(Delivery).where(Delivery.alert_id == alert_id).order_by(Delivery.id)).all()
        out = alert_view(a)
        out["events"] = [{"at": iso(e.at), "action": e.action, "actor": e.actor, "comment": e.comment} for e in events]
        out["deliveries"] = [
            {
                "receiver": d.receiver,
                "status": d.status,
                "event": d.payload.get("status"),
                "attempts": d.attempts,
                "sent_at": iso(d.sent_at),
                "last_error": d.last_error,
            }
            for d in deliveries
        ]
    return out


def _act(fn: Any, alert_id: int, who: Principal, comment: str) -> dict[str, Any]:
    return alert_view(fn(alert_id, who, comment))  # NotFound -> 404, Conflict -> 409 (vms/api/__init__.py)


@router.post("/{alert_id}/ack")
def acknowledge(
    body: Comment,
    alert_id: int = Path(ge=1, le=2**62),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.maintenance, Role.admin)),
) -> dict[str, Any]:
    return _act(hub.alerts.acknowledge, alert_id, who, body.comment)


@router.post("/{alert_id}/resolve")
def resolve(
    body: Comment,
    alert_id: int = Path(ge=1, le=2**62),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.maintenance, Role.admin)),
) -> dict[str, Any]:
    return _act(hub.monitor.resolve_by_hand, alert_id, who, body.comment)
