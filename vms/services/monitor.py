"""The tick: state changes into history, alert decisions into the one alert writer.

Every ``tick_s`` the health table is evaluated; its transitions and the alert book's decisions are
written in one transaction. The tick is the only writer of state intervals, so their order in the
store is the order of events. If the store fails, the changes stay queued and are written on the
next tick. Also here: the history reads behind every figure (availability for any window).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from vms.alerts import BOOK_KINDS, AddMembers, AlertBook, AlertKind, Op, Open, OpenAlert, Resolve
from vms.auth import Principal
from vms.config import HubConfig
from vms.db.models import Alert, Meta, StateInterval
from vms.health import Availability, IntervalLog, Transition, rates, state_name
from vms.services.alerting import AlertTx, AlertWriter, NewAlert
from vms.services.registry import HELD, Registry

#: Why a lower platform's camera is out of service here: its platform no longer shares it.
WITHDRAWN = "no longer in the catalog of the lower platform that shared it"

log = logging.getLogger(__name__)

ALIVE_KEY = "hub_alive_at"
_MARK_ALIVE = update(Meta).where(Meta.key == ALIVE_KEY).values(value=bindparam("v"))
Named = list[tuple[Transition, str]]


class Monitor:
    def __init__(self, cfg: HubConfig, registry: Registry, sessions: sessionmaker[Session], writer: AlertWriter,
                 degraded_detail: Callable[[str], dict[str, Any]], clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.reg = registry
        self.health = registry.health
        self.sessions = sessions
        self.writer = writer
        self.degraded_detail = degraded_detail
        self.clock = clock
        self.started_at = clock()
        self.book = AlertBook(cfg.alerts, self.health, registry.home, registry.agent_name, registry.label)
        self._pending: list[tuple[Named, list[Op]]] = []
        self.ticks = 0
        self.last_tick_s = 0.0

    # -- start-up ----------------------------------------------------------------------------
    def load(self, s: Session, read_only: bool) -> None:
        """Open intervals and open alerts of the previous run (after ``Registry.load``)."""
        last_alive = s.get(Meta, ALIVE_KEY)
        alive_at = float(last_alive.value) if last_alive else None
        for iv in s.scalars(select(StateInterval).where(StateInterval.end_at.is_(None))):
            if read_only:
                if iv.device_id in self.health.index:
                    flags = (1 if iv.online else 0) | (2 if iv.uploading else 0) | (4 if iv.intact else 0)
                    self.health.restore_open(self.health.index[iv.device_id], iv.start_at, flags)
            else:
                # Intervals left open by the previous run end when that run was last alive.
                iv.end_at = max(iv.start_at, alive_at if alive_at is not None else iv.start_at)
        if not read_only:
            s.commit()
        self.health.log = self.read_log(s, self.clock() - self.cfg.health.report_cache_days * 86400, math.inf)
        # The book owns outages and defects; the archive and the spool-loss watch own their own kinds.
        q = select(Alert).where(Alert.state != "resolved", Alert.kind.in_([k.value for k in BOOK_KINDS]))
        for row in s.scalars(q):
            self.book.adopt(OpenAlert(
                fingerprint=row.fingerprint, kind=AlertKind(row.kind), since=row.since_at,
                members=[self.health.index[m] for m in row.members if m in self.health.index],
                title=row.title, device_id=row.device_id, agent_id=row.agent_id, center_id=row.center_id,
                db_id=row.id,
            ))

    def read_log(self, s: Session, start: float, end: float) -> IntervalLog:
        q = select(
            StateInterval.device_id,
            StateInterval.start_at,
            StateInterval.end_at,
            StateInterval.online,
            StateInterval.uploading,
            StateInterval.intact,
        ).where(StateInterval.end_at.is_not(None), StateInterval.end_at > start, StateInterval.start_at < end)
        lg = IntervalLog()
        idx = self.health.index
        keep = [r for r in s.execute(q).all() if r[0] in idx]
        if keep:
            lg.extend(
                [idx[r[0]] for r in keep],
                [r[1] for r in keep],
                [float(r[2] or 0.0) for r in keep],
                [(1 if r[3] else 0) | (2 if r[4] else 0) | (4 if r[5] else 0) for r in keep],
            )
        return lg

    # -- acceptance ----------------------------------------------------------------------------
    def hold(self, device_id: str, state: str) -> None:
        """Record a camera's acceptance state: pending and rejected cameras are refused media and stats.

        A held camera that is already a device (an admin rejected it after accepting it) leaves
        service: no state, no alerts (open ones resolve), not in the centers' figures; its archive
        stays. Accepting it again puts it back."""
        self._held(device_id, HELD.get(state))

    def withdraw(self, device_id: str, out: bool) -> None:
        """A lower platform took its camera out of its catalog (``out``: a DEL), or shares it again (an
        ADD): out of service here as a rejected camera is, and back. Not an acceptance decision, so an
        admin's hold (pending, rejected) is neither lifted nor replaced; kept in memory only, since the
        platform tells its catalog again at every registration."""
        with self.reg.lock:
            reason = self.reg.held.get(device_id)
            if out and reason is None:
                self._held(device_id, WITHDRAWN)
            elif not out and reason == WITHDRAWN:
                self._held(device_id, None)

    def _held(self, device_id: str, reason: str | None) -> None:
        """Hold the device for ``reason`` (out of service), or release it (None)."""
        with self.reg.lock:
            i = self.health.index.get(device_id)
            if reason is not None:
                self.reg.held[device_id] = reason
                t = None if i is None else self.health.retire(i, self.clock())
                if t is not None:
                    self._pending.append(([(t, device_id)], []))
            else:
                self.reg.held.pop(device_id, None)
                if i is not None:
                    self.health.reinstate(i, self.clock())
        if i is not None:
            self.writer.publish([device_id], [])

    # -- the tick ------------------------------------------------------------------------------
    def tick(self) -> list[Transition]:
        t0 = time.perf_counter()
        now = self.clock()
        with self.reg.lock:
            transitions = self.health.evaluate(now)
            ops = self.book.plan(transitions, now, lambda a: self.reg.agent_dark(a, now))
            named = [(t, self.health.ids[t.idx]) for t in transitions]
        if named or ops:
            self._pending.append((named, ops))
        if not self.flush(now) and named:
            self.writer.publish([d for _, d in named], [])  # the pages show the state even if the store is down
        self.ticks += 1
        self.last_tick_s = time.perf_counter() - t0
        return transitions

    def flush(self, now: float) -> bool:
        """Write pending state changes and alert operations; keep them if the store fails.

        Every call marks the hub alive (``hub_alive_at``, where a crashed run's open intervals end).
        With nothing pending, as in most ticks, that mark is all: one prepared statement on a
        connection of the pool, without a session or the alert writer's transaction."""
        batch = list(self._pending)
        if not batch:
            try:
                with self.sessions() as s:
                    self._mark_alive(s.connection(), now)
                    s.commit()
            except Exception as exc:
                log.error("store write failed (%s); the hub's alive mark is written again next tick", exc)
                return False
            return True
        try:
            with self.writer.transaction(now) as tx:
                for named, ops in batch:
                    self._write_transitions(tx.session, named)
                    self._write_ops(tx, ops)
                    tx.session.flush()
                    tx.devices.extend(d for _, d in named)
                self._mark_alive(tx.session.connection(), now)
        except Exception as exc:
            # Nothing of the batch is stored (one transaction); it is written again next tick.
            log.error("store write failed (%s); %d tick(s) of changes kept for retry", exc, len(self._pending))
            return False
        del self._pending[: len(batch)]
        return True

    @staticmethod
    def _mark_alive(conn: Connection, now: float) -> None:
        """``hub_alive_at`` = now: an update of the one row (inserted by the first run)."""
        if conn.execute(_MARK_ALIVE, {"v": repr(now)}).rowcount == 0:
            conn.execute(insert(Meta), {"key": ALIVE_KEY, "value": repr(now)})

    def _write_transitions(self, s: Session, named: Named) -> None:
        """Close each device's open interval and open the next: two statements for the whole tick."""
        conn = s.connection()
        closes = [{"d": did, "t": t.at} for t, did in named if t.old is not None]
        if closes:
            conn.execute(
                update(StateInterval)
                .where(StateInterval.device_id == bindparam("d"), StateInterval.end_at.is_(None))
                .values(end_at=bindparam("t")),
                closes,
            )
        rows = [
            {"device_id": did, "start_at": t.at, "end_at": None, "online": bool(t.new & 1),
             "uploading": bool(t.new & 2), "intact": bool(t.new & 4), "state": state_name(t.new)}
            for t, did in named
            if t.new is not None  # retired: closed, nothing opens
        ]
        if rows:
            conn.execute(insert(StateInterval), rows)

    def _detail(self, alert: OpenAlert) -> dict[str, Any]:
        if alert.device_id is not None and alert.members:
            inf = self.reg.info[alert.members[0]]
            center = self.reg.tree.by_id.get(alert.center_id or "")
            return {
                "name": inf.name,
                "location": inf.location,
                "center_name": center.name if center else None,
                "centers": list(inf.homes),
                **(self.degraded_detail(alert.device_id) if alert.kind == AlertKind.DEVICE_DEGRADED else {}),
            }
        return {"members_count": len(set(alert.members))}

    def _write_ops(self, tx: AlertTx, ops: list[Op]) -> None:
        ids = self.health.ids
        for op in ops:
            a = op.alert
            if isinstance(op, Open):
                row = tx.open(NewAlert(
                    fingerprint=a.fingerprint, kind=a.kind, title=a.title, since=a.since, detail=self._detail(a),
                    members=[ids[m] for m in a.members], device_id=a.device_id, agent_id=a.agent_id,
                    center_id=a.center_id,
                ))
                a.db_id = row.id
            elif a.db_id is None:
                continue
            elif isinstance(op, AddMembers):
                row2 = tx.session.get(Alert, a.db_id)
                if row2 is not None:
                    members = [ids[m] for m in dict.fromkeys(a.members)]
                    tx.update(row2, members=members, detail={**(row2.detail or {}), "members_count": len(members)})
            elif isinstance(op, Resolve):
                row3 = tx.session.get(Alert, a.db_id)
                if row3 is not None and row3.state != "resolved":
                    tx.resolve(row3, op.by, "recovered", at=op.at)

    # -- people ----------------------------------------------------------------------------------
    def resolve_by_hand(self, alert_id: int, who: Principal, comment: str) -> Alert:
        """A person resolves an alert: the book forgets it and stays quiet until its members recover."""
        with self.reg.lock:
            return self.writer.resolve(alert_id, who, comment,
                                       before=lambda row: self.book.resolve_by_hand(row.fingerprint))

    # -- figures -------------------------------------------------------------------------------
    def availability(self, start: float, end: float) -> Availability:
        lg = self.log_for(start, end)
        with self.reg.lock:
            return self.health.availability(start, end, self.clock(), lg)

    def log_for(self, start: float, end: float) -> IntervalLog | None:
        """The closed intervals behind a window's figures: None for the in-memory history (the
        caller reads ``health.log`` under the lock), or those read from the store for older windows."""
        if start >= self.started_at - self.cfg.health.report_cache_days * 86400:
            return None
        with self.sessions() as s:
            return self.read_log(s, start, end)

    def center_figures(self, av: Availability, center_id: str) -> dict[str, Any]:
        m = self.health.in_service(self.reg.member_indices(center_id))
        return rates(
            float(av.monitored_s[m].sum()),
            float(av.known_s[m].sum()),
            float(av.online_s[m].sum()),
            float(av.upload_s[m].sum()),
            float(av.intact_s[m].sum()),
        )

    def device_figures(self, av: Availability, idx: int) -> dict[str, Any]:
        return rates(
            float(av.monitored_s[idx]),
            float(av.known_s[idx]),
            float(av.online_s[idx]),
            float(av.upload_s[idx]),
            float(av.intact_s[idx]),
        )

    def prune(self) -> None:
        with self.reg.lock:
            self.health.log.prune(self.clock() - self.cfg.health.report_cache_days * 86400)
