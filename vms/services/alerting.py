"""The one alert writer: every alert row, life-cycle event and outbox delivery is written here.

Rooms decide *whether* an alert opens or resolves (``vms/alerts.py`` for outages and defects, the
archive for its disk, the spool-loss watch for agents' lost footage); this service writes the
decision. One transaction holds the alert change and its deliveries, so a crash never sends a
notification for an alert that was not stored, nor stores one that is never sent; after the
commit, the outbox is woken for the new deliveries and the change is published on the event bus,
so the pages see every alert live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms import audit
from vms.alerts import SEVERITY, AlertKind, AlertState, Severity
from vms.auth import Principal
from vms.config import AlertsConfig
from vms.db.models import Alert, AlertEvent
from vms.errors import Conflict, NotFound
from vms.events import EventBus
from vms.notify import enqueue

log = logging.getLogger(__name__)
#: How an opened alert is logged: a matter for the crew, not a fault of the hub (those are errors).
LOG_LEVEL = {Severity.CRITICAL: logging.WARNING, Severity.WARNING: logging.INFO}


class AlertNotFound(NotFound):
    """No alert with that ID."""


class AlertConflict(Conflict):
    """The alert is not in a state that allows the action."""


@dataclass(frozen=True)
class NewAlert:
    fingerprint: str
    kind: AlertKind
    title: str
    since: float
    detail: dict[str, Any] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    device_id: str | None = None
    agent_id: str | None = None
    center_id: str | None = None


@dataclass
class AlertTx:
    """Alert changes inside one store transaction; see ``AlertWriter.transaction``."""

    session: Session
    cfg: AlertsConfig
    url: str
    now: float
    alerts: list[int] = field(default_factory=list)  # changed, published after the commit
    devices: list[str] = field(default_factory=list)
    deliveries: int = 0  # outbox rows added: the outbox is woken after the commit

    def find_active(self, fingerprint: str) -> Alert | None:
        """The open or acknowledged alert with this fingerprint."""
        q = select(Alert).where(Alert.fingerprint == fingerprint, Alert.state != AlertState.RESOLVED)
        return self.session.scalars(q).first()

    def get(self, alert_id: int) -> Alert:
        row = self.session.get(Alert, alert_id)
        if row is None:
            raise AlertNotFound(f"no alert {alert_id}")
        return row

    def open(self, new: NewAlert, *, announce: bool = True) -> Alert:
        """Open ``new``; it is logged unless ``announce`` is False (the caller logs it its own way)."""
        row = Alert(
            fingerprint=new.fingerprint,
            kind=new.kind.value,
            severity=SEVERITY[new.kind].value,
            device_id=new.device_id,
            agent_id=new.agent_id,
            center_id=new.center_id,
            title=new.title,
            detail=new.detail,
            members=new.members,
            state=AlertState.OPEN.value,
            since_at=new.since,
            opened_at=self.now,
        )
        self.session.add(row)
        self.session.flush()
        self._event(row, self.now, "opened", "system", "")
        self.deliveries += enqueue(self.session, row, "firing", self.cfg, self.url, self.now)
        if announce:
            log.log(LOG_LEVEL[SEVERITY[new.kind]], "alert opened (%s): %s", new.kind.value, new.title)
        return row

    def update(self, row: Alert, *, title: str | None = None, detail: dict[str, Any] | None = None,
               members: list[str] | None = None, comment: str | None = None) -> None:
        """Change what an active alert says, without notifying again; ``comment`` adds a history step."""
        if title is not None:
            row.title = title
        if detail is not None:
            row.detail = detail
        if members is not None:
            row.members = members
        if comment is not None:
            self._event(row, self.now, "updated", "system", comment)
        self.alerts.append(row.id)

    def acknowledge(self, row: Alert, by: str, comment: str) -> None:
        if row.state != AlertState.OPEN:
            raise AlertConflict(f"alert {row.id} is {row.state}; only open alerts can be acknowledged")
        row.state, row.acknowledged_at, row.acknowledged_by = AlertState.ACKNOWLEDGED.value, self.now, by
        self._event(row, self.now, "acknowledged", by, comment)

    def resolve(self, row: Alert, by: str, comment: str, at: float | None = None) -> None:
        if row.state == AlertState.RESOLVED:
            raise AlertConflict(f"alert {row.id} is resolved already")
        when = self.now if at is None else at
        row.state, row.resolved_at, row.resolved_by = AlertState.RESOLVED.value, when, by
        self._event(row, when, "resolved", by, comment)
        self.deliveries += enqueue(self.session, row, "resolved", self.cfg, self.url, self.now)

    def _event(self, row: Alert, at: float, action: str, actor: str, comment: str) -> None:
        self.session.add(AlertEvent(alert_id=row.id, at=at, action=action, actor=actor, comment=comment))
        self.alerts.append(row.id)


class AlertWriter:
    """Opens, updates, acknowledges and resolves alerts; the only code that writes them."""

    def __init__(self, sessions: sessionmaker[Session], cfg: AlertsConfig, public_url: Callable[[], str],
                 events: EventBus, clock: Callable[[], float]) -> None:
        self.sessions = sessions
        self.cfg = cfg
        self.public_url = public_url
        self.events = events
        self.clock = clock
        #: Called after a commit that added outbox deliveries (the hub wires ``Outbox.wake``): the
        #: outbox sends them at once instead of polling the store.
        self.delivering: Callable[[], None] | None = None

    @contextmanager
    def transaction(self, now: float | None = None) -> Iterator[AlertTx]:
        """One store transaction for alert changes (and whatever else the caller writes with
        ``tx.session``); committed at the end, then published. Nothing is published if it fails."""
        with self.sessions() as s:
            tx = AlertTx(s, self.cfg, self.public_url(), self.clock() if now is None else now)
            yield tx
            s.commit()
        if tx.deliveries and self.delivering is not None:
            self.delivering()
        self.publish(tx.devices, tx.alerts)

    def publish(self, devices: Iterable[str], alerts: Iterable[int | None]) -> None:
        """Tell the pages what changed (device and alert IDs)."""
        d, a = list(dict.fromkeys(devices)), [i for i in dict.fromkeys(alerts) if i is not None]
        if d or a:
            self.events.publish("changed", {"devices": d, "alerts": a})

    # -- one-step changes ----------------------------------------------------------------------
    def raise_or_update(self, new: NewAlert, update: Callable[[Alert], tuple[str, dict[str, Any], str]] | None = None,
                        ) -> int:
        """Open ``new`` unless an alert with its fingerprint is active; then ``update(row)`` gives the
        new title, detail and a comment for its history (no second notification)."""
        with self.transaction() as tx:
            row = tx.find_active(new.fingerprint)
            if row is None:
                row = tx.open(new)
            elif update is not None:
                title, detail, comment = update(row)
                tx.update(row, title=title, detail=detail, comment=comment)
            return row.id

    def raise_kind(self, kind: AlertKind, fingerprint: str, title: str, since: float,
                   detail: dict[str, Any]) -> int:
        """``raise_or_update(NewAlert(...))`` without an update, for the outbox: it cannot build a
        ``NewAlert`` (this module imports it, not the other way round)."""
        return self.raise_or_update(NewAlert(fingerprint, kind, title, since, detail))

    def resolve_active(self, fingerprint: str, by: str, comment: str) -> int | None:
        """Resolve the active alert with ``fingerprint``, if there is one."""
        with self.transaction() as tx:
            row = tx.find_active(fingerprint)
            if row is None:
                return None
            tx.resolve(row, by, comment)
            return row.id

    # -- people (each action audited) -------------------------------------------------------------
    def acknowledge(self, alert_id: int, who: Principal, comment: str) -> Alert:
        with self.transaction() as tx:
            row = tx.get(alert_id)
            tx.acknowledge(row, who.name, comment)
        audit.record(self.sessions, who, at=tx.now, action="alert.acknowledge", target=str(alert_id),
                     detail={"comment": comment})
        return row

    def resolve(self, alert_id: int, who: Principal, comment: str,
                before: Callable[[Alert], object] | None = None) -> Alert:
        """A person resolves an alert; ``before(row)`` runs first, inside the transaction."""
        with self.transaction() as tx:
            row = tx.get(alert_id)
            if row.state == AlertState.RESOLVED:
                raise AlertConflict(f"alert {alert_id} is resolved already")
            if before is not None:
                before(row)
            tx.resolve(row, who.name, comment)
        audit.record(self.sessions, who, at=tx.now, action="alert.resolve", target=str(alert_id),
                     detail={"comment": comment})
        return row
