"""The archive as the hub runs it: retention thread, storage alert, holds, clips, accounting views.

One object per hub (``hub.archive``). Retention runs in its own thread (started and stopped with
the hub) and every call is also usable directly, which is how the tests drive it with a clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import select

from vms import audit
from vms.archive import accounting
from vms.archive.clip import MAX_CLIP_SECONDS, MAX_EXPORT_SECONDS, ClipError, ClipPlan, gaps_json, plan_clip
from vms.archive.exports import Exports, LiveExport
from vms.archive.retention import PassReport, RepairReport, Retention
from vms.auth import Principal
from vms.config import RetentionPolicy
from vms.db.models import Alert, AlertEvent, Device, LegalHold
from vms.kernel.timeutil import iso
from vms.notify import enqueue

if TYPE_CHECKING:
    from vms.hub import Hub

log = logging.getLogger(__name__)

STORAGE_ALERT = "storage_low"
_FINGERPRINT = "storage_low:archive"
#: Footage span counted as meeting a retention of N days: N days less this slack.
COMPLIANCE_SLACK_S = 3600.0
REGULATION_DAYS = 30


@dataclass
class Snapshot:
    """Figures for metrics, refreshed by the retention thread (scrapes never query the index)."""

    at: float
    center_bytes: dict[str, int]
    completeness: dict[str, float]
    oldest_age_s: dict[str, float]
    free_bytes: int


class Archive:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.cfg = hub.cfg.retention
        for cid in self.cfg.centers:
            hub.tree.get(cid)  # an unknown center in the retention policies is a start-up error
        self.sessions = hub.sessions
        self.root = hub.segments.root
        self.exports = Exports(hub.cfg.storage.data_dir / "exports", self.root, hub.sessions, hub.clock)
        self.retention = Retention(
            self.cfg, hub.sessions, self.root, self.policy_of, self._center_devices, hub.segments.free_bytes
        )
        self.snapshot: Snapshot | None = None
        self.last_pass: PassReport | None = None
        self._pass_lock = threading.Lock()

    # -- policies --------------------------------------------------------------------------------
    def policy_of(self, device_id: str) -> tuple[RetentionPolicy, str]:
        """The device's own policy, else its nearest center's, else the default; with where it came from."""
        if device_id in self.cfg.devices:
            return self.cfg.devices[device_id], f"device:{device_id}"
        i = self.hub.health.index.get(device_id)
        homes = self.hub.info[i].homes if i is not None else tuple(c.id for c in self.hub.tree.homes(device_id))
        for home in homes:
            c = self.hub.tree.by_id.get(home)
            while c is not None:
                if c.id in self.cfg.centers:
                    return self.cfg.centers[c.id], f"center:{c.id}"
                c = c.parent
        return self.cfg.default, "default"

    def _center_devices(self, center_id: str) -> list[str]:
        with self.hub.lock:
            return [self.hub.health.ids[int(i)] for i in self.hub.member_indices(center_id)]

    # -- the retention thread ------------------------------------------------------------------
    def startup(self) -> RepairReport:
        rep = self.retention.repair()
        failed = self.exports.recover()
        if failed:
            log.warning("%d clip build(s) cut off by the last shutdown marked failed", failed)
        return rep

    def loop(self, stop: threading.Event) -> None:
        """Run a pass every ``interval_s``, and at once when free space falls under the threshold."""
        next_at = 0.0
        while not stop.is_set():
            try:
                low = self.hub.segments.free_bytes() < self.cfg.emergency_free_bytes
                if low or time.monotonic() >= next_at:
                    self.run_pass()
                    next_at = time.monotonic() + self.cfg.interval_s
            except Exception:
                log.exception("retention pass failed")
                next_at = time.monotonic() + self.cfg.interval_s
            stop.wait(1.0)

    def run_pass(self) -> PassReport:
        with self._pass_lock:
            now = self.hub.clock()
            t0 = time.perf_counter()
            rep = self.retention.run(now)
            self.exports.expire(now, self.cfg.exports_keep_days)
            rep.seconds = time.perf_counter() - t0
            self._storage_alert(rep, now)
            self.last_pass = rep
            if rep.deleted_segments:
                log.info(
                    "retention: %d segments (%d bytes) deleted %s",
                    rep.deleted_segments,
                    rep.deleted_bytes,
                    rep.by_reason,
                )
            self.refresh(now)
            return rep

    def _storage_alert(self, rep: PassReport, now: float) -> None:
        """Open a ``storage_low`` alert when an emergency cleanup ran; resolve it once space is back."""
        hub = self.hub
        with self.sessions() as s:
            row = s.scalars(select(Alert).where(Alert.fingerprint == _FINGERPRINT, Alert.state != "resolved")).first()
            if rep.emergency and row is None:
                row = Alert(
                    fingerprint=_FINGERPRINT,
                    kind=STORAGE_ALERT,
                    severity="critical",
                    title=(
                        f"archive disk low: {rep.free_bytes_before} bytes free (threshold "
                        f"{self.cfg.emergency_free_bytes}); emergency cleanup deleted "
                        f"{rep.by_reason.get('emergency', 0)} segments, now {rep.free_bytes_after} free"
                    ),
                    detail={
                        "free_bytes_before": rep.free_bytes_before,
                        "free_bytes_after": rep.free_bytes_after,
                        "deleted_segments": rep.by_reason.get("emergency", 0),
                        "held_segments_kept": rep.held_skipped,
                    },
                    members=[],
                    state="open",
                    since_at=now,
                    opened_at=now,
                )
                s.add(row)
                s.flush()
                s.add(AlertEvent(alert_id=row.id, at=now, action="opened", actor="system", comment=""))
                enqueue(s, row, "firing", hub.cfg.alerts, hub.public_url, now)
                s.commit()
                log.error("%s", row.title)
            elif row is not None and not rep.emergency:
                row.state, row.resolved_at, row.resolved_by = "resolved", now, "system"
                s.add(AlertEvent(alert_id=row.id, at=now, action="resolved", actor="system", comment="space back"))
                enqueue(s, row, "resolved", hub.cfg.alerts, hub.public_url, now)
                s.commit()

    # -- accounting ----------------------------------------------------------------------------
    def refresh(self, now: float) -> Snapshot:
        """Recompute the metric figures (called after each pass)."""
        tot = accounting.totals(self.sessions)
        win = self.cfg.accounting_window_s
        rec = accounting.recorded_in(self.sessions, now - win, now)
        created = self._created()
        completeness = {}
        for d, c in created.items():
            expected = now - max(now - win, c)
            if expected > 0:
                completeness[d] = min(rec.get(d, 0.0) / expected, 1.0)
        center_bytes = {c.id: sum(tot[d].bytes for d in self._center_devices(c.id) if d in tot) for c in self.hub.tree}
        oldest = {d: now - t.oldest for d, t in tot.items() if t.oldest is not None}
        self.snapshot = Snapshot(now, center_bytes, completeness, oldest, self.hub.segments.free_bytes())
        return self.snapshot

    def metrics(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Storage figures from the last snapshot (taken by the retention thread, not at scrape time)."""
        snap = self.snapshot
        if snap is None:
            return
        by_center = GaugeMetricFamily("vms_storage_bytes", "Recorded bytes of the center's devices", labels=["center"])
        for cid, b in snap.center_bytes.items():
            by_center.add_metric([cid], float(b))
        comp = GaugeMetricFamily(
            "vms_device_recording_completeness_ratio",
            "Recorded seconds / expected seconds over retention.accounting_window_s",
            labels=["device_id"],
        )
        for d, v in snap.completeness.items():
            comp.add_metric([d], v)
        oldest = GaugeMetricFamily(
            "vms_device_oldest_recording_age_seconds", "Age of the device's oldest recording", labels=["device_id"]
        )
        for d, v in snap.oldest_age_s.items():
            oldest.add_metric([d], v)
        yield from (by_center, comp, oldest)
        yield GaugeMetricFamily("vms_storage_free_bytes", "Free bytes on the recordings disk", value=snap.free_bytes)
        yield CounterMetricFamily(
            "vms_retention_deleted_segments", "Segments deleted by retention", value=self.retention.deleted_total
        )

    def _created(self) -> dict[str, float]:
        with self.sessions() as s:
            return {d: c for d, c in s.execute(select(Device.id, Device.created_at))}

    def device_storage(self, device_id: str, start: float, end: float) -> dict[str, Any]:
        """One device: totals, and completeness of [start, end) with its gaps listed."""
        tot = accounting.totals_of(self.sessions, device_id)
        created = self._created().get(device_id, start)
        a = max(start, created)
        covered, gaps = accounting.coverage(self.sessions, device_id, a, end) if end > a else (0.0, [])
        policy, source = self.policy_of(device_id)
        return {
            "device_id": device_id,
            "bytes": tot.bytes,
            "segments": tot.segments,
            "hours": round(tot.recorded_s / 3600, 3),
            "oldest": iso(tot.oldest),
            "newest": iso(tot.newest),
            "window": {"start": iso(start), "end": iso(end), "expected_s": round(max(end - a, 0.0), 3)},
            "recorded_s": round(covered, 3),
            "completeness": round(covered / (end - a), 6) if end > a else None,
            "gaps": gaps_json(gaps),
            "retention": {**policy.model_dump(), "source": source},
        }

    def storage(self, center_id: str | None, now: float) -> dict[str, Any]:
        """Per center and per device: bytes, hours, completeness over the window, oldest and newest."""
        centers = [self.hub.tree.get(center_id)] if center_id else list(self.hub.tree)
        tot = accounting.totals(self.sessions)
        win = self.cfg.accounting_window_s
        rec = accounting.recorded_in(self.sessions, now - win, now)
        created = self._created()
        out = []
        for c in centers:
            devs = self._center_devices(c.id)
            rows: list[dict[str, Any]] = []
            for d in devs:
                t = tot.get(d)
                expected = now - max(now - win, created.get(d, now - win))
                rows.append(
                    {
                        "device_id": d,
                        "bytes": t.bytes if t else 0,
                        "hours": round(t.recorded_s / 3600, 3) if t else 0.0,
                        "oldest": iso(t.oldest) if t else None,
                        "newest": iso(t.newest) if t else None,
                        "completeness": round(min(rec.get(d, 0.0) / expected, 1.0), 6) if expected > 0 else None,
                    }
                )
            rows.sort(key=lambda r: (r["completeness"] if r["completeness"] is not None else 2.0, r["device_id"]))
            out.append(
                {
                    "center": c.id,
                    "name": c.name,
                    "bytes": sum(r["bytes"] for r in rows),
                    "hours": round(sum(r["hours"] for r in rows), 3),
                    "devices": rows,
                }
            )
        return {
            "window_s": win,
            "free_bytes": self.hub.segments.free_bytes(),
            "last_pass": asdict(self.last_pass) if self.last_pass else None,
            "centers": out,
        }

    def compliance(self, center_id: str | None, now: float) -> dict[str, Any]:
        """Per center: which devices meet their retention, and how much footage each actually has."""
        centers = [self.hub.tree.get(center_id)] if center_id else list(self.hub.tree)
        tot = accounting.totals(self.sessions)
        created = self._created()
        out = []
        for c in centers:
            rows: list[dict[str, Any]] = []
            for d in self._center_devices(c.id):
                policy, source = self.policy_of(d)
                t = tot.get(d)
                span_days = (now - t.oldest) / 86400 if t and t.oldest is not None else 0.0
                # A device younger than its keep days cannot have more footage than its age.
                required_s = min(policy.keep_days * 86400.0, now - created.get(d, now))
                has_footage = t is not None and t.oldest is not None
                policy_ok = policy.keep_days >= REGULATION_DAYS
                meets = policy_ok and has_footage and span_days * 86400 >= required_s - COMPLIANCE_SLACK_S
                status = (
                    "policy_below_30_days"
                    if not policy_ok
                    else "compliant"
                    if meets
                    else "no_footage"
                    if not has_footage
                    else "short"
                )
                rows.append(
                    {
                        "device_id": d,
                        "keep_days": policy.keep_days,
                        "policy_source": source,
                        "footage_days": round(span_days, 3),
                        "recorded_hours": round(t.recorded_s / 3600, 3) if t else 0.0,
                        "oldest": iso(t.oldest) if t else None,
                        "meets_retention": meets,
                        "status": status,
                    }
                )
            meeting = sum(1 for r in rows if r["meets_retention"])
            out.append(
                {
                    "center": c.id,
                    "name": c.name,
                    "devices": len(rows),
                    "meeting_retention": meeting,
                    "ratio": round(meeting / len(rows), 6) if rows else None,
                    "device_rows": sorted(rows, key=lambda r: (r["meets_retention"], r["footage_days"])),
                }
            )
        return {"at": iso(now), "regulation_days": REGULATION_DAYS, "centers": out}

    # -- holds ---------------------------------------------------------------------------------
    def add_hold(
        self, who: Principal, device_id: str, start: float, end: float, case_number: str, reason: str
    ) -> LegalHold:
        now = self.hub.clock()
        with self.sessions() as s:
            row = LegalHold(
                device_id=device_id,
                start_at=start,
                end_at=end,
                case_number=case_number,
                reason=reason,
                created_by=who.name,
                created_at=now,
            )
            s.add(row)
            s.commit()
            s.refresh(row)
        audit.record(
            self.sessions,
            who,
            at=now,
            action="hold.create",
            target=device_id,
            detail={"hold_id": row.id, "start": iso(start), "end": iso(end), "case": case_number, "reason": reason},
        )
        return row

    def release_hold(self, who: Principal, hold_id: int, comment: str) -> LegalHold:
        now = self.hub.clock()
        with self.sessions() as s:
            row = s.get(LegalHold, hold_id)
            if row is None:
                raise KeyError(hold_id)
            if row.released_at is not None:
                raise ValueError(f"hold {hold_id} was released already at {iso(row.released_at)}")
            row.released_at, row.released_by = now, who.name
            s.commit()
            s.refresh(row)
        audit.record(
            self.sessions,
            who,
            at=now,
            action="hold.release",
            target=row.device_id,
            detail={"hold_id": hold_id, "case": row.case_number, "comment": comment},
        )
        return row

    # -- clips ---------------------------------------------------------------------------------
    def plan(self, device_id: str, start: float, end: float, *, export: bool) -> ClipPlan:
        """Check the range and find the footage; :class:`ClipError` says precisely what is wrong."""
        if end <= start:
            raise ClipError(422, f"end {iso(end)} must be after start {iso(start)}")
        limit = MAX_EXPORT_SECONDS if export else MAX_CLIP_SECONDS
        if end - start > limit:
            hint = "" if export else "; long ranges are export jobs: POST /api/v1/exports"
            raise ClipError(422, f"range of {end - start:.0f} s is longer than the {limit:.0f} s allowed{hint}")
        if device_id not in self.hub.health.index:
            with self.sessions() as s:
                if s.get(Device, device_id) is None:
                    raise ClipError(404, f"unknown device {device_id}")
        plan = plan_clip(self.sessions, device_id, start, end)
        if not plan.pieces:
            raise ClipError(404, f"no recordings of {device_id} between {iso(start)} and {iso(end)}")
        free = self.hub.segments.free_bytes()
        reserve = self.hub.cfg.archive.min_free_bytes
        if free - plan.estimated_bytes < reserve:
            raise ClipError(
                507,
                f"not enough disk for the clip: it needs about {plan.estimated_bytes} bytes, {free} are free and "
                f"{reserve} stay reserved for recording",
            )
        return plan

    def start_clip(
        self, who: Principal, plan: ClipPlan, reason: str, case_number: str, *, background: bool
    ) -> LiveExport:
        live = self.exports.start(plan, who.name, reason, case_number, background=background)
        audit.record(
            self.sessions,
            who,
            at=self.hub.clock(),
            action="export.create" if background else "clip.request",
            target=plan.device_id,
            detail={
                "export_id": live.id,
                "start": iso(plan.start),
                "end": iso(plan.end),
                "reason": reason,
                "case": case_number,
                "gaps": len(plan.gaps()),
            },
        )
        return live

    def record_served(
        self,
        who: Principal,
        job_id: str,
        device_id: str,
        start: float,
        end: float,
        reason: str,
        case_number: str,
        *,
        sent: int,
        sha256: str,
        complete: bool,
        byte_range: str | None,
        file_sha256: str | None,
        error: str | None = None,
    ) -> int:
        """Audit exactly what left the hub; returns the audit row's sequence number."""
        entry = audit.record(
            self.sessions,
            who,
            at=self.hub.clock(),
            action="clip.served",
            target=device_id,
            detail={
                "export_id": job_id,
                "start": iso(start),
                "end": iso(end),
                "reason": reason,
                "case": case_number,
                "bytes": sent,
                "sha256": sha256,
                "complete": complete,
                "range": byte_range,
                "file_sha256": file_sha256,
                **({"error": error} if error else {}),
            },
        )
        return entry.seq

    def close(self) -> None:
        self.exports.close()
