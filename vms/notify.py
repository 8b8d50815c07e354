"""Durable alert delivery: an outbox in the store, drained with retries and backoff.

A delivery row is written in the same transaction as the alert change it reports, so a hub
killed at any moment either has the alert and its pending deliveries, or neither. Rows are sent
in order per receiver (a ``resolved`` never overtakes its ``firing``); a failing receiver backs
off as a whole, with jitter, and never blocks the others.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms.config import AlertsConfig, AppriseReceiver, WebhookReceiver
from vms.db.models import Alert, Delivery
from vms.kernel.timeutil import iso

log = logging.getLogger(__name__)


#: Alert details that go into the notification's annotations (crews see them in chat and e-mail).
ANNOTATED = ("name", "location", "center_name", "members_count", "snapshot_url")


def _am_time(t: float | None) -> str:
    """RFC 3339 UTC; Alertmanager's 'zero time' for an unset end."""
    return iso(t) or "0001-01-01T00:00:00Z"


def alertmanager_payload(alert: Alert, status: str, receiver: str, external_url: str) -> dict[str, Any]:
    """The JSON body Alertmanager's webhook receiver sends (version 4), for one alert."""
    labels = {
        "alertname": alert.kind,
        "severity": alert.severity,
        **{
            k: v
            for k, v in (
                ("device_id", alert.device_id),
                ("agent_id", alert.agent_id),
                ("center", alert.center_id),
            )
            if v
        },
    }
    detail = alert.detail or {}
    annotations = {
        "summary": alert.title,
        "description": _description(alert),
        **{k: str(v) for k, v in detail.items() if k in ANNOTATED},
    }
    item = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": _am_time(alert.since_at),
        "endsAt": _am_time(alert.resolved_at if status == "resolved" else None),
        "generatorURL": f"{external_url}/api/v1/alerts/{alert.id}",
        "fingerprint": alert.fingerprint,
    }
    return {
        "version": "4",
        "groupKey": alert.fingerprint,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alert.kind},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [item],
    }


def _description(alert: Alert) -> str:
    since = _am_time(alert.since_at)
    members = alert.members or []
    if alert.kind in ("agent_offline", "site_offline"):
        return (
            f"{len(members)} devices dark since {since}: "
            + ", ".join(members[:20])
            + (" ..." if len(members) > 20 else "")
        )
    if alert.device_id is None:  # e.g. the archive's storage alert: its title says it all
        return f"{alert.title} since {since}"
    d = alert.detail or {}
    where = " / ".join(x for x in (d.get("name"), d.get("location"), d.get("center_name")) if x)
    return f"{alert.device_id} ({where}) since {since}"


def enqueue(session: Session, alert: Alert, status: str, cfg: AlertsConfig, external_url: str, now: float) -> None:
    """Add one pending delivery per receiver; call inside the transaction that changed ``alert``."""
    for r in cfg.receivers:
        session.add(
            Delivery(
                alert_id=alert.id,
                receiver=r.name,
                status="pending",
                payload=alertmanager_payload(alert, status, r.name, external_url),
                attempts=0,
                next_attempt_at=now,
                last_error="",
                created_at=now,
            )
        )


class Sender:
    """Sends one payload to one receiver; raises on failure with a message worth logging."""

    def __init__(self) -> None:
        self.http = httpx.Client()

    def send(self, receiver: WebhookReceiver | AppriseReceiver, payload: dict[str, Any]) -> None:
        if isinstance(receiver, WebhookReceiver):
            resp = self.http.post(receiver.url, json=payload, headers=receiver.headers, timeout=receiver.timeout_s)
            if resp.status_code >= 300:
                raise RuntimeError(f"HTTP {resp.status_code} from {receiver.url}")
            return
        import apprise  # imported lazily: it loads many plugins

        ap = apprise.Apprise()
        for url in receiver.urls:
            if not ap.add(url):
                raise RuntimeError(f"apprise rejected a URL of receiver {receiver.name!r}")
        title = f"[{payload['status'].upper()}] {payload['commonAnnotations'].get('summary', '')}"
        body = str(payload["commonAnnotations"].get("description", ""))
        if not ap.notify(title=title, body=body):
            raise RuntimeError(f"apprise could not deliver to receiver {receiver.name!r}")

    def close(self) -> None:
        self.http.close()


class Outbox:
    def __init__(self, cfg: AlertsConfig, sessions: sessionmaker[Session], sender: Sender | None = None) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.receivers = {r.name: r for r in cfg.receivers}
        self.sender = sender or Sender()
        self.sent_total = 0
        self.failed_total = 0

    def backoff(self, attempts: int) -> float:
        base = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** max(0, attempts - 1))
        return base * random.uniform(0.5, 1.0)

    def drain(self, now: float, limit: int = 200) -> int:
        """Send what is due, oldest first per receiver; returns how many were delivered."""
        with self.sessions() as s:
            rows = s.scalars(
                select(Delivery).where(Delivery.status == "pending").order_by(Delivery.id).limit(limit)
            ).all()
            delivered = 0
            blocked: set[str] = set()
            for row in rows:
                if row.receiver in blocked:
                    continue
                receiver = self.receivers.get(row.receiver)
                if receiver is None:
                    row.status, row.last_error = "failed", "receiver no longer configured"
                    continue
                if row.next_attempt_at > now:
                    blocked.add(row.receiver)
                    continue
                row.attempts += 1
                try:
                    self.sender.send(receiver, row.payload)
                except Exception as exc:  # any failure: keep the row and back off
                    blocked.add(row.receiver)
                    row.last_error = str(exc)[:500] or type(exc).__name__
                    give_up = self.cfg.retry_max_attempts and row.attempts >= self.cfg.retry_max_attempts
                    row.status = "failed" if give_up else "pending"
                    row.next_attempt_at = now + self.backoff(row.attempts)
                    if give_up:
                        self.failed_total += 1
                    log.warning(
                        "delivery %s to %s failed (attempt %d): %s", row.id, row.receiver, row.attempts, row.last_error
                    )
                else:
                    row.status, row.sent_at = "sent", now
                    delivered += 1
                    self.sent_total += 1
                s.commit()
            return delivered

    def pending(self) -> int:
        with self.sessions() as s:
            return len(s.scalars(select(Delivery.id).where(Delivery.status == "pending")).all())
