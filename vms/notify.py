"""Durable alert delivery: an outbox in the store, drained with retries and backoff.

A delivery row is written in the same transaction as the alert change it reports, so a hub
killed at any moment either has the alert and its pending deliveries, or neither. Each receiver
is drained from its own queue, in order (a ``resolved`` never overtakes its ``firing``), with its
own backoff and jitter, concurrently with the others: a dead or hanging receiver, however long its
backlog, never delays a healthy one. A receiver that keeps failing for ``receiver_down_after_s``
raises one ``receiver_down`` alert (through the alert writer, so the others hear of it); its next
delivery resolves it. Webhook URLs hold secrets: logs, ``last_error`` and alerts show them redacted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vms.alerts import AlertKind
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


def enqueue(session: Session, alert: Alert, status: str, cfg: AlertsConfig, external_url: str, now: float) -> int:
    """Add one pending delivery per receiver; call inside the transaction that changed ``alert``.
    Returns how many were added: after the commit, the outbox is woken for them (``Outbox.wake``).

    A ``receiver_down`` alert goes to every receiver but the one it is about: that one cannot take
    it, and its queue must not grow because it is dead."""
    about = (alert.detail or {}).get("receiver") if alert.kind == AlertKind.RECEIVER_DOWN else None
    added = 0
    for r in cfg.receivers:
        if r.name == about:
            continue
        added += 1
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
    return added


# -- secrets in receiver URLs ------------------------------------------------------------------
Receiver = WebhookReceiver | AppriseReceiver
HIDDEN = "***"


def redact_url(url: str, keep_host: bool = True) -> str:
    """A receiver URL fit for logs, errors and the API: its scheme and (for webhooks) host and port.

    Webhook URLs carry their secret in the path, query or user info (DingTalk ``access_token``,
    WeCom ``key``, Slack's path); apprise URLs often in the host part too (``dingtalk://TOKEN``),
    so those keep only the scheme (``keep_host=False``)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return HIDDEN
    if not parts.scheme:
        return HIDDEN
    if not keep_host:
        return f"{parts.scheme}://{HIDDEN}"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    secret = parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment
    return f"{parts.scheme}://{netloc}" + (f"/{HIDDEN}" if secret else "")


def receiver_target(r: Receiver) -> str:
    """Where a receiver sends, redacted: what logs, errors and alerts may show of it."""
    if isinstance(r, WebhookReceiver):
        return redact_url(r.url)
    return ", ".join(redact_url(u, keep_host=False) for u in r.urls)


def _secrets(r: Receiver) -> list[tuple[str, str]]:
    """(text, replacement) pairs that take a receiver's secrets out of any message, longest first."""
    pairs: set[tuple[str, str]] = set()
    if isinstance(r, WebhookReceiver):
        urls = {r.url}
        with contextlib.suppress(Exception):  # an invalid URL fails on sending; its text is still hidden
            urls.add(str(httpx.URL(r.url)))  # as httpx prints it (normalised, percent-encoded)
        for u in urls:
            pairs.add((u, redact_url(r.url)))
            try:
                p = urlsplit(u)
                tail, password = p.path + (f"?{p.query}" if p.query else ""), p.password
            except ValueError:
                continue
            pairs.update((t, HIDDEN) for t in (tail, p.query, password) if t and len(t) >= 4)
        pairs.update((v, HIDDEN) for v in r.headers.values() if len(v) >= 4)
    else:
        for u in r.urls:
            pairs.add((u, redact_url(u, keep_host=False)))
            rest = u.split("://", 1)[-1]
            if len(rest) >= 4:
                pairs.add((rest, HIDDEN))
    return sorted(pairs, key=lambda p: -len(p[0]))


def scrub(text: str, pairs: list[tuple[str, str]]) -> str:
    for secret, shown in pairs:
        if secret in text:
            text = text.replace(secret, shown)
    return text


class _RedactLog(logging.Filter):
    """Takes configured receivers' secrets out of records of the HTTP and apprise libraries
    (httpx logs every request's full URL at INFO)."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[str, str]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pairs:
            try:
                msg = record.getMessage()
            except Exception:  # a malformed record is the logging module's to report
                return True
            clean = scrub(msg, self.pairs)
            if clean != msg:
                record.msg, record.args = clean, ()
        return True


_REDACT_LOG = _RedactLog()
for _name in ("httpx", "apprise"):
    logging.getLogger(_name).addFilter(_REDACT_LOG)


def hide_in_logs(receivers: list[Receiver]) -> None:
    """Add these receivers' secrets to what the library log filter hides (kept for the process)."""
    known = set(_REDACT_LOG.pairs)
    for r in receivers:
        known.update(_secrets(r))
    _REDACT_LOG.pairs = sorted(known, key=lambda p: -len(p[0]))


class Sender:
    """Sends one payload to one receiver; raises on failure with a message worth logging
    (which never holds the receiver's URL in clear: the outbox scrubs it again anyway)."""

    def __init__(self) -> None:
        self.http = httpx.Client()

    def send(self, receiver: Receiver, payload: dict[str, Any]) -> None:
        if isinstance(receiver, WebhookReceiver):
            resp = self.http.post(receiver.url, json=payload, headers=receiver.headers, timeout=receiver.timeout_s)
            if resp.status_code >= 300:
                raise RuntimeError(f"HTTP {resp.status_code} from {redact_url(receiver.url)}")
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


# -- the outbox ----------------------------------------------------------------------------------
#: ``raise_alert(kind, fingerprint, title, since, detail)``: the alert writer opens it unless active.
RaiseAlert = Callable[[AlertKind, str, str, float, dict[str, Any]], object]
#: ``resolve_alert(fingerprint, by, comment)``: the alert writer resolves it if active.
ResolveAlert = Callable[[str, str, str], object]

#: Receivers drained at once, each in its own thread from its own queue (a connection of the store
#: is held only while a row is written, never while a receiver is being waited on).
MAX_PARALLEL = 16
#: How long a round waits for a receiver that is already failing; a hung one (its ``timeout_s``, up
#: to 60 s) then finishes in the background, and is not tried again until that attempt has ended.
DETACH_AFTER_S = 1.0
#: How often :meth:`Outbox.run` drains while it has work: deliveries waiting (due now or backing
#: off), attempts running, a failing receiver not yet alerted.
POLL_S = 0.5
#: With no work it waits for :meth:`Outbox.wake` (the alert writer, after committing deliveries)
#: and reads the store only this often, in case another process wrote some.
IDLE_POLL_S = 10.0
#: Receivers with deliveries pending: the one query of a drain that finds nothing to do (built once).
_PENDING_RECEIVERS = select(Delivery.receiver).where(Delivery.status == "pending").distinct()


def receiver_down_fingerprint(name: str) -> str:
    return "receiver_down:" + hashlib.sha256(name.encode()).hexdigest()[:40]


@dataclass
class ReceiverState:
    """What the outbox knows of one receiver in this process."""

    failing_since: float | None = None  # first failure of the current streak
    last_error: str = ""
    alerted: bool | None = None  # None: unknown since start (an alert may be active in the store)


@dataclass(frozen=True)
class _Round:
    name: str
    now: float
    delivered: int = 0
    given_up: int = 0
    ok: bool | None = None  # None: nothing was due; True: its last attempt delivered; False: failed
    error: str = ""


class Outbox:
    """Sends pending deliveries: per receiver, oldest first, each receiver with its own backoff.

    ``raise_alert`` / ``resolve_alert`` are the alert writer's (``AlertWriter.raise_kind`` and
    ``resolve_active``): a receiver failing for ``receiver_down_after_s`` raises ``receiver_down``
    once, and its next delivery resolves it. That alert is sent to the other receivers only (see
    ``enqueue``), and it cannot loop: it opens once per failure streak (not per failed delivery,
    nor again after a restart while it is active), and it adds nothing to the dead one's queue."""

    def __init__(self, cfg: AlertsConfig, sessions: sessionmaker[Session], sender: Sender | None = None,
                 raise_alert: RaiseAlert | None = None, resolve_alert: ResolveAlert | None = None) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.receivers = {r.name: r for r in cfg.receivers}
        self.sender = sender or Sender()
        self.raise_alert = raise_alert
        self.resolve_alert = resolve_alert
        self.state = {name: ReceiverState() for name in self.receivers}
        self._secrets = {name: _secrets(r) for name, r in self.receivers.items()}
        hide_in_logs(list(self.receivers.values()))
        self._pool = ThreadPoolExecutor(max(1, min(MAX_PARALLEL, len(self.receivers))),
                                        thread_name_prefix="vms-outbox")
        weakref.finalize(self, self._pool.shutdown, wait=False)
        self._rounds: dict[str, Future[_Round]] = {}  # in flight, one per receiver at most
        self._wake = threading.Event()
        self._waiting = False  # the last drain found deliveries pending
        self.sent_total = 0
        self.failed_total = 0

    def wake(self) -> None:
        """Deliveries were committed (or the hub stops): :meth:`run` drains now instead of at its idle poll."""
        self._wake.set()

    def idle(self) -> bool:
        """Nothing to do until new deliveries are written: none were pending at the last drain, no
        attempt is running and no failing receiver is still on its way to a ``receiver_down``."""
        return not (self._waiting or self._rounds
                    or any(st.failing_since is not None and not st.alerted for st in self.state.values()))

    def run(self, stop: threading.Event, clock: Callable[[], float]) -> None:
        """Drain until ``stop`` is set (call :meth:`wake` after setting it): every ``POLL_S`` while
        there is work; idle, at once when woken and every ``IDLE_POLL_S`` otherwise. An idle hub thus
        costs a wait, not a store query twice a second, and an alert is sent as soon as it is committed."""
        while not stop.is_set():
            self._wake.clear()  # before the drain: a commit during it makes the wait below return at once
            failed = False
            try:
                self.drain(clock())
            except Exception:
                log.exception("outbox drain failed")
                failed = True  # the store may be back soon
            self._wake.wait(POLL_S if failed or not self.idle() else IDLE_POLL_S)

    def backoff(self, attempts: int) -> float:
        base = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** max(0, attempts - 1))
        return base * random.uniform(0.5, 1.0)

    def drain(self, now: float, limit: int = 200) -> int:
        """Send what is due, up to ``limit`` per receiver, each receiver's queue oldest first and
        concurrently with the others; returns how many were delivered. Waits for every receiver's
        round, except that a receiver already failing gets ``DETACH_AFTER_S`` before its round is
        left to end in the background (taken in by a later call)."""
        with self.sessions() as s:
            waiting = set(s.connection().execute(_PENDING_RECEIVERS).scalars())
            gone = waiting - self.receivers.keys()
            if gone:
                s.execute(update(Delivery).where(Delivery.status == "pending", Delivery.receiver.in_(gone))
                          .values(status="failed", last_error="receiver no longer configured"))
                s.commit()
        self._waiting = bool(waiting - gone)
        delivered = self._collect()  # rounds left running by an earlier call
        for n in self.receivers:
            if n in waiting and n not in self._rounds:
                self._rounds[n] = self._pool.submit(self._drain_one, n, now, limit)
        failing = {n for n, f in self._rounds.items() if self.state[n].failing_since is not None}
        wait([f for n, f in self._rounds.items() if n not in failing])
        wait([f for n, f in self._rounds.items() if n in failing], timeout=DETACH_AFTER_S)
        delivered += self._collect()
        self._watch(now)
        return delivered

    def _collect(self) -> int:
        """Take in the rounds that have ended; returns how many they delivered."""
        delivered = 0
        for name, fut in list(self._rounds.items()):
            if fut.done():
                del self._rounds[name]
                r = fut.result()
                self.sent_total += r.delivered
                self.failed_total += r.given_up
                self._note(r)
                delivered += r.delivered
        return delivered

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _drain_one(self, name: str, now: float, limit: int) -> _Round:
        try:
            return self._send_due(name, now, limit)
        except Exception:  # the store failed: this receiver's round is lost, the others' are not
            log.exception("outbox round for receiver %s failed", name)
            return _Round(name, now)

    def _send_due(self, name: str, now: float, limit: int) -> _Round:
        """One receiver's due deliveries in order; stops at the first failure (its backoff holds the
        rest of its queue, and only its queue)."""
        receiver, delivered, given_up, ok, error = self.receivers[name], 0, 0, None, ""
        with self.sessions() as s:
            rows = s.scalars(
                select(Delivery).where(Delivery.status == "pending", Delivery.receiver == name)
                .order_by(Delivery.id).limit(limit)
            ).all()
            s.commit()  # ends the read: no store connection is held while the receiver is waited on
            for row in rows:
                if row.next_attempt_at > now:
                    break
                row.attempts += 1
                try:
                    self.sender.send(receiver, row.payload)
                except Exception as exc:  # any failure: keep the row and back off
                    error = scrub(str(exc), self._secrets[name])[:500] or type(exc).__name__
                    ok, row.last_error = False, error
                    give_up = bool(self.cfg.retry_max_attempts and row.attempts >= self.cfg.retry_max_attempts)
                    row.status = "failed" if give_up else "pending"
                    row.next_attempt_at = now + self.backoff(row.attempts)
                    given_up += give_up
                    s.commit()
                    log.warning("delivery %s to %s failed (attempt %d): %s", row.id, name, row.attempts, error)
                    break
                row.status, row.sent_at = "sent", now
                delivered, ok = delivered + 1, True
                s.commit()
        return _Round(name, now, delivered, given_up, ok, error)

    def _note(self, r: _Round) -> None:
        st = self.state[r.name]
        if r.delivered:  # it delivers: the failure streak ends, and so does its alert
            st.failing_since, st.last_error = None, ""
            # alerted, or unknown since start (an alert may be active in the store): resolve it
            if st.alerted is not False and self._tell(self.resolve_alert, receiver_down_fingerprint(r.name),
                                                      "system", "the receiver delivers again"):
                st.alerted = False
        if r.ok is False:
            st.last_error = r.error
            if st.failing_since is None:
                st.failing_since = r.now

    def _watch(self, now: float) -> None:
        """Raise ``receiver_down`` for each receiver failing for ``receiver_down_after_s`` (once)."""
        for name, st in self.state.items():
            if st.failing_since is None or st.alerted or now - st.failing_since < self.cfg.receiver_down_after_s:
                continue
            target = receiver_target(self.receivers[name])
            title = f"alert receiver {name!r} unreachable ({target})"[:300]
            detail = {"receiver": name, "target": target, "last_error": st.last_error,
                      "note": "its notifications wait in the outbox and are sent when it is back"}
            if self._tell(self.raise_alert, AlertKind.RECEIVER_DOWN, receiver_down_fingerprint(name), title,
                          st.failing_since, detail):
                st.alerted = True

    @staticmethod
    def _tell(fn: Callable[..., object] | None, *args: Any) -> bool:
        """Call the alert writer; a failure (the store) is logged and the call repeated next round."""
        if fn is None:
            return True
        try:
            fn(*args)
        except Exception:
            log.exception("could not write the receiver alert")
            return False
        return True

    def pending(self) -> int:
        with self.sessions() as s:
            return len(s.scalars(select(Delivery.id).where(Delivery.status == "pending")).all())
