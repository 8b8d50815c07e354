"""Footage an agent's spool had to drop: one alert per agent for the maintenance crew.

An agent counts, for ever, the recorded segments its spool quota forced out before they reached
the hub (a hub outage longer than the agent's disk can hold, or a quota set too small). That video
is lost for good, so it must not stay a number on the agent: the hub opens a ``spool_dropped``
alert at the first drop it learns of, updates its title and detail as the count grows (without
notifying again), and leaves resolving it to a person, who fixes the disk, the quota or the link.
The count last seen is kept in the store, so drops made while the hub itself was down still raise
the alert when the agent reports again, and a hub restart never raises it twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from vms.alerts import AlertKind
from vms.db.models import Meta
from vms.services.alerting import AlertTx, AlertWriter, NewAlert

log = logging.getLogger(__name__)

KIND = AlertKind.SPOOL_DROPPED


def _meta_key(agent: str) -> str:
    # Meta keys are short; agent names need not be.
    return "spool_dropped:" + hashlib.sha256(agent.encode()).hexdigest()[:40]


class SpoolLosses:
    """Compares each agent's reported drop count with the last one stored; alerts on growth."""

    def __init__(self, sessions: sessionmaker[Session], writer: AlertWriter) -> None:
        self.sessions = sessions
        self.writer = writer
        self._known: dict[str, int] = {}  # agent -> drop count stored
        self._lock = threading.Lock()

    def note(self, agent: str, dropped: int, now: float) -> int | None:
        """Called with every heartbeat that carries spool figures; touches the store only on change.
        Returns the ID of the alert it opened or updated."""
        alert_id = None
        with self._lock:
            known = self._known.get(agent)
            if known == dropped:
                return None
            with self.writer.transaction(now) as tx:
                if known is None:
                    row = tx.session.get(Meta, _meta_key(agent))
                    known = int(row.value) if row is not None else 0
                if dropped != known:
                    tx.session.merge(Meta(key=_meta_key(agent), value=str(dropped)))
                    if dropped > known:  # smaller: the agent's spool was reset, nothing more lost
                        alert_id = self._raise(tx, agent, dropped - known, dropped)
            self._known[agent] = dropped
        return alert_id

    def _raise(self, tx: AlertTx, agent: str, new: int, total: int) -> int:
        fingerprint = f"{KIND}:{agent}"
        row = tx.find_active(fingerprint)
        lost = (row.detail or {}).get("lost_segments", 0) + new if row is not None else new
        title = (f"agent {agent} dropped {lost} recorded segment(s) before upload: footage lost "
                 f"(spool quota full; {total} dropped in all)")
        detail = {"lost_segments": lost, "agent_total": total}
        log.error("%s", title)
        if row is not None:
            tx.update(row, title=title, detail=detail, comment=f"{new} more segment(s) dropped")
            return row.id
        return tx.open(NewAlert(fingerprint=fingerprint, kind=KIND, title=title, since=tx.now, detail=detail,
                                agent_id=agent), announce=False).id
