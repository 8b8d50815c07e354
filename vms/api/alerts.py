"""Maintenance alerts: list, detail with its life cycle and deliveries, acknowledge, resolve.

The actions are the services' (``hub.alerts.acknowledge``, ``hub.monitor.resolve_by_hand``, both
audited); their refusals (``AlertNotFound`` 404, ``AlertConflict`` 409) reach the one handler.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from vms.alerts import AlertKind, Severity
from vms.alerts import AlertState as State
from vms.api.deps import Comment, get_hub, require
from vms.auth import READERS, Principal, Role
from vms.db.models import Alert, AlertEvent, Delivery
from vms.hub import Hub
from vms.kernel.timeutil import iso
from vms.services.alerting import AlertNotFound

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
AlertState = Literal["open", "acknowledged", "resolved", "active"]


class AlertOut(BaseModel):
    id: int
    kind: AlertKind
    severity: Severity
    state: State
    title: str
    device_id: str | None
    agent_id: str | None
    center: str | None
    detail: dict[str, Any]
    members: list[str] = Field(description="The devices it covers")
    since: str = Field(description="When the trouble started")
    opened_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None
    resolved_at: str | None
    resolved_by: str | None


class AlertEventOut(BaseModel):
    at: str
    action: str
    actor: str
    comment: str


class DeliveryOut(BaseModel):
    receiver: str
    status: str = Field(description="pending, sent or failed")
    event: str | None = Field(description="firing or resolved")
    attempts: int
    sent_at: str | None
    last_error: str


class AlertDetail(AlertOut):
    events: list[AlertEventOut] = Field(description="Its life cycle, oldest first")
    deliveries: list[DeliveryOut] = Field(description="Its notifications, oldest first")


class AlertList(BaseModel):
    active: int = Field(description="Open or acknowledged alerts, whatever the filters")
    alerts: list[AlertOut]


def _at(t: float) -> str:
    return iso(t) or ""


def _out(a: Alert) -> AlertOut:
    return AlertOut(
        id=a.id,
        kind=AlertKind(a.kind),
        severity=Severity(a.severity),
        state=State(a.state),
        title=a.title,
        device_id=a.device_id,
        agent_id=a.agent_id,
        center=a.center_id,
        detail=a.detail,
        members=a.members,
        since=_at(a.since_at),
        opened_at=_at(a.opened_at),
        acknowledged_at=iso(a.acknowledged_at),
        acknowledged_by=a.acknowledged_by,
        resolved_at=iso(a.resolved_at),
        resolved_by=a.resolved_by,
    )


def alert_view(a: Alert) -> dict[str, Any]:
    """An alert as the API shows it (:class:`AlertOut`), as a plain dict (the event stream sends these)."""
    return _out(a).model_dump(mode="json")


@router.get("", response_model=AlertList)
def list_alerts(
    state: AlertState | None = Query(None, description="'active' = open or acknowledged"),
    center: str | None = Query(None, max_length=64),
    kind: str | None = Query(None, max_length=32),
    device_id: str | None = Query(None, max_length=20),
    limit: int = Query(200, ge=1, le=5000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> AlertList:
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
    return AlertList(active=total_active or 0, alerts=[_out(r) for r in rows])


@router.get("/{alert_id}", response_model=AlertDetail)
def get_alert(
    alert_id: int = Path(ge=1, le=2**62), hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> AlertDetail:
    with hub.sessions() as s:
        a = s.get(Alert, alert_id)
        if a is None:
            raise AlertNotFound(f"no alert {alert_id}")
        events = s.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id)).all()
        deliveries = s.scalars(select(Delivery).where(Delivery.alert_id == alert_id).order_by(Delivery.id)).all()
        return AlertDetail(
            **dict(_out(a)),
            events=[AlertEventOut(at=_at(e.at), action=e.action, actor=e.actor, comment=e.comment) for e in events],
            deliveries=[
                DeliveryOut(receiver=d.receiver, status=d.status, event=d.payload.get("status"), attempts=d.attempts,
                            sent_at=iso(d.sent_at), last_error=d.last_error)
                for d in deliveries
            ],
        )


@router.post("/{alert_id}/ack", response_model=AlertOut)
def acknowledge(
    body: Comment,
    alert_id: int = Path(ge=1, le=2**62),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.maintenance, Role.admin)),
) -> AlertOut:
    return _out(hub.alerts.acknowledge(alert_id, who, body.comment))


@router.post("/{alert_id}/resolve", response_model=AlertOut)
def resolve(
    body: Comment,
    alert_id: int = Path(ge=1, le=2**62),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.maintenance, Role.admin)),
) -> AlertOut:
    return _out(hub.monitor.resolve_by_hand(alert_id, who, body.comment))
