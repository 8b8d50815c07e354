"""The archive as the hub runs it: retention thread, storage alert, holds, clips, accounting views.

One object per hub (``hub.archive``), given the store, the center tree, the clock, lookups of
devices (``ArchiveLookups``) and the one alert writer. Retention runs in its own thread (started and
stopped with the hub) and every call is also usable directly, which is how the tests drive it with
a clock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms import audit
from vms.alerts import AlertKind
from vms.archive import accounting
from vms.archive.clip import (
    MAX_CLIP_SECONDS,
    MAX_EXPORT_SECONDS,
    ClipInvalid,
    ClipNoSpace,
    ClipNotFound,
    ClipPlan,
    find_gaps,
    gaps_json,
    plan_clip,
)
from vms.archive.exports import ClipSlot, Exports, LiveExport
from vms.archive.retention import PassReport, RepairReport, Retention
from vms.archive.store import SegmentStore
from vms.auth import Principal, Role
from vms.centers import CenterTree
from vms.config import HubConfig, RetentionPolicy
from vms.db.models import Device, ExportJob, LegalHold
from vms.errors import Conflict, Forbidden, Invalid, NotFound
from vms.kernel.timeutil import iso
from vms.services.alerting import AlertWriter, NewAlert

log = logging.getLogger(__name__)

STORAGE_ALERT = AlertKind.STORAGE_LOW
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


@dataclass(frozen=True)
class ArchiveLookups:
    """What the archive asks of the device registry."""

    known: Callable[[str], bool]  # is this a registered device?
    homes_of: Callable[[str], tuple[str, ...]]  # a device's home centers, nearest first
    center_devices: Callable[[str], list[str]]  # the devices counted in a center


class Archive:
    def __init__(self, cfg: HubConfig, sessions: sessionmaker[Session], segments: SegmentStore, tree: CenterTree,
                 lookups: ArchiveLookups, alerts: AlertWriter, clock: Callable[[], float],
                 checkpoint: Callable[[], dict[str, Any] | None]) -> None:
        """``checkpoint()`` signs the audit log as it stands (``AuditAnchor.checkpoint``) for clip manifests."""
        self.cfg = cfg.retention
        self.min_free_bytes = cfg.archive.min_free_bytes
        self.max_hold_days = cfg.archive.max_hold_days
        self.tree = tree
        for cid in self.cfg.centers:
            tree.get(cid)  # an unknown center in the retention policies is a start-up error
        self.sessions = sessions
        self.segments = segments
        self.lookups = lookups
        self.alerts = alerts
        self.clock = clock
        self.root = segments.root
        self.exports = Exports(cfg.storage.data_dir / "exports", self.root, sessions, clock, cfg.archive, checkpoint)
        self.retention = Retention(
            self.cfg, sessions, self.root, self.policy_of, lookups.center_devices, segments.free_bytes
        )
        #: ``fetch(device_id, start, end)``: footage held elsewhere (a lower platform's camera) fetched into
        #: this archive before a clip is planned, blocking; None for a device whose footage is all here.
        self.fetch: Callable[[str, float, float], float | None] = lambda *_a: None
        self.snapshot: Snapshot | None = None
        self.last_pass: PassReport | None = None
        self._pass_lock = threading.Lock()

    # -- policies --------------------------------------------------------------------------------
    def policy_of(self, device_id: str) -> tuple[RetentionPolicy, str]:
        """The device's own policy, else its nearest center's, else the default; with where it came from."""
        if device_id in self.cfg.devices:
            return self.cfg.devices[device_id], f"device:{device_id}"
        for home in self.lookups.homes_of(device_id):
            c = self.tree.by_id.get(home)
            while c is not None:
                if c.id in self.cfg.centers:
                    return self.cfg.centers[c.id], f"center:{c.id}"
                c = c.parent
        return self.cfg.default, "default"

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
                low = self.segments.free_bytes() < self.cfg.emergency_free_bytes
                if low or time.monotonic() >= next_at:
                    self.run_pass()
                    next_at = time.monotonic() + self.cfg.interval_s
            except Exception:
                log.exception("retention pass failed")
                next_at = time.monotonic() + self.cfg.interval_s
            stop.wait(1.0)

    def run_pass(self) -> PassReport:
        with self._pass_lock:
            now = self.clock()
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
        with self.alerts.transaction(now) as tx:
            row = tx.find_active(_FINGERPRINT)
            if rep.emergency and row is None:
                row = tx.open(NewAlert(
                    fingerprint=_FINGERPRINT,
                    kind=STORAGE_ALERT,
                    title=(
                        f"archive disk low: {rep.free_bytes_before} bytes free (threshold "
                        f"{self.cfg.emergency_free_bytes}); emergency cleanup deleted "
                        f"{rep.by_reason.get('emergency', 0)} segments, now {rep.free_bytes_after} free"
                    ),
                    since=now,
                    detail={
                        "free_bytes_before": rep.free_bytes_before,
                        "free_bytes_after": rep.free_bytes_after,
                        "deleted_segments": rep.by_reason.get("emergency", 0),
                        "held_segments_kept": rep.held_skipped,
                    },
                ), announce=False)
                log.error("%s", row.title)  # footage was deleted before its time: an error of the hub's own
            elif row is not None and not rep.emergency:
                tx.resolve(row, "system", "space back")

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
        devices = self.lookups.center_devices
        center_bytes = {c.id: sum(tot[d].bytes for d in devices(c.id) if d in tot) for c in self.tree}
        oldest = {d: now - t.oldest for d, t in tot.items() if t.oldest is not None}
        self.snapshot = Snapshot(now, center_bytes, completeness, oldest, self.segments.free_bytes())
        return self.snapshot

    def metrics(self) -> Iterator[Metric]:
        """Storage figures from the last snapshot (taken by the retention thread, not at scrape time)."""
        yield from self.segments.step_seconds.collect()
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
        yield CounterMetricFamily(
            "vms_clip_send_waited_seconds", "Time clip downloads waited for archive.clip_send_mbit_s, all together",
            value=self.exports.pace.waited_s,
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
        centers = [self.tree.get(center_id)] if center_id else list(self.tree)
        tot = accounting.totals(self.sessions)
        win = self.cfg.accounting_window_s
        rec = accounting.recorded_in(self.sessions, now - win, now)
        created = self._created()
        out = []
        for c in centers:
            devs = self.lookups.center_devices(c.id)
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
            "free_bytes": self.segments.free_bytes(),
            "last_pass": asdict(self.last_pass) if self.last_pass else None,
            "centers": out,
        }

    def compliance(self, center_id: str | None, now: float) -> dict[str, Any]:
        """Per center: which devices meet their retention, and how much footage each actually has."""
        centers = [self.tree.get(center_id)] if center_id else list(self.tree)
        tot = accounting.totals(self.sessions)
        created = self._created()
        out = []
        for c in centers:
            rows: list[dict[str, Any]] = []
            for d in self.lookups.center_devices(c.id):
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
        """Keep a device's footage in ``[start, end)`` (audited); :class:`Invalid` for a range longer than
        ``archive.max_hold_days``: held footage survives even emergency cleanup."""
        days = (end - start) / 86400.0
        if days > self.max_hold_days:
            raise Invalid(f"a hold of {days:.2f} days ({iso(start)} to {iso(end)}) is longer than "
                          f"archive.max_hold_days ({self.max_hold_days:g}): hold the range the case needs, "
                          "in several holds if it is longer")
        now = self.clock()
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

    def release_hold(self, who: Principal, hold_id: int, reason: str) -> LegalHold:
        """Only the officer who placed the hold, or an admin, releases it, saying why (audited):
        :class:`Forbidden` for anyone else, :class:`Invalid` for an empty reason."""
        reason = reason.strip()
        if not reason:
            raise Invalid("state why the hold is released: footage it kept can be deleted from then on")
        now = self.clock()
        with self.sessions() as s:
            row = s.get(LegalHold, hold_id)
            if row is None:
                raise NotFound(f"no hold {hold_id}")
            if row.created_by != who.name and who.role is not Role.admin:
                raise Forbidden(f"hold {hold_id} was placed by {row.created_by}: only they or an admin may release it")
            if row.released_at is not None:
                raise Conflict(f"hold {hold_id} was released already at {iso(row.released_at)}")
            row.released_at, row.released_by, row.release_reason = now, who.name, reason
            s.commit()
            s.refresh(row)
        audit.record(
            self.sessions,
            who,
            at=now,
            action="hold.release",
            target=row.device_id,
            detail={"hold_id": hold_id, "case": row.case_number, "placed_by": row.created_by, "reason": reason},
        )
        return row

    # -- exports: each officer sees their own -------------------------------------------------
    @staticmethod
    def _sees_all(who: Principal) -> bool:
        return who.role is Role.admin

    def export_job(self, who: Principal, job_id: str) -> ExportJob:
        """An export ``who`` may see: their own, or any for an admin. Another officer's is
        :class:`NotFound`, as if it did not exist (its reason and case number are not theirs to read)."""
        with self.sessions() as s:
            row = s.get(ExportJob, job_id)
        if row is None or not (self._sees_all(who) or row.requested_by == who.name):
            raise NotFound(f"no export {job_id}")
        return row

    def export_jobs(self, who: Principal, device_id: str | None, limit: int) -> list[ExportJob]:
        """The newest exports ``who`` may see (their own, or all for an admin), newest first."""
        q = select(ExportJob).order_by(ExportJob.created_at.desc()).limit(limit)
        if device_id:
            q = q.where(ExportJob.device_id == device_id)
        if not self._sees_all(who):
            q = q.where(ExportJob.requested_by == who.name)
        with self.sessions() as s:
            return list(s.scalars(q))

    # -- clips ---------------------------------------------------------------------------------
    def plan(self, device_id: str, start: float, end: float, *, export: bool) -> ClipPlan:
        """Check the range and find the footage; a :class:`ClipError` says precisely what is wrong."""
        if end <= start:
            raise ClipInvalid(f"end {iso(end)} must be after start {iso(start)}")
        limit = MAX_EXPORT_SECONDS if export else MAX_CLIP_SECONDS
        if end - start > limit:
            hint = "" if export else "; long ranges are export jobs: POST /api/v1/exports"
            raise ClipInvalid(f"range of {end - start:.0f} s is longer than the {limit:.0f} s allowed{hint}")
        if not self.lookups.known(device_id):
            with self.sessions() as s:
                if s.get(Device, device_id) is None:
                    raise ClipNotFound(f"unknown device {device_id}")
        plan = plan_clip(self.sessions, device_id, start, end)
        missing = find_gaps([(p.start, p.end) for p in plan.pieces], start, end)
        if missing and self.fetch(device_id, *missing[0]) is not None:  # kept elsewhere: fetched, plan again
            for a, b in missing[1:]:
                self.fetch(device_id, a, b)
            plan = plan_clip(self.sessions, device_id, start, end)
        if not plan.pieces:
            raise ClipNotFound(f"no recordings of {device_id} between {iso(start)} and {iso(end)}")
        free = self.segments.free_bytes()
        reserve = self.min_free_bytes
        if free - plan.estimated_bytes < reserve:
            raise ClipNoSpace(
                f"not enough disk for the clip: it needs about {plan.estimated_bytes} bytes, {free} are free and "
                f"{reserve} stay reserved for recording",
            )
        return plan

    def clip_slot(self, who: Principal) -> ClipSlot:
        """One of the clip downloads served at once (``archive.max_clips``, ``max_clips_per_user``), or
        :class:`Busy` naming the limit; released by the caller when its response ends."""
        return self.exports.slots.take(who.name)

    def start_clip(
        self, who: Principal, plan: ClipPlan, reason: str, case_number: str, *, background: bool
    ) -> LiveExport:
        """Audit the request, then build: an export waits in the bounded queue (:class:`Busy` when it is
        full, before anything is written); a direct clip builds at once (the caller holds a clip slot).
        The request is audited before the build starts, so the manifest's checkpoint covers it."""
        if background:
            self.exports.reserve()
        try:
            job_id = secrets.token_hex(16)
            audit.record(
                self.sessions,
                who,
                at=self.clock(),
                action="export.create" if background else "clip.request",
                target=plan.device_id,
                detail={
                    "export_id": job_id,
                    "start": iso(plan.start),
                    "end": iso(plan.end),
                    "reason": reason,
                    "case": case_number,
                    "gaps": len(plan.gaps()),
                },
            )
            return self.exports.start(job_id, plan, who.name, reason, case_number, background=background)
        except BaseException:
            if background:
                self.exports.unreserve()
            raise

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
            at=self.clock(),
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
