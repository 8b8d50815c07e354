"""Retention: delete footage past its keep days or over its byte quota, oldest first, never held footage.

Legal holds are read again for each batch, and the mark that dooms a batch skips, in the same
statement, any segment a hold covers at that moment: a hold placed while a pass runs protects its
footage from the next batch on.

Deletion keeps the index and the disk consistent through crashes: a batch of rows is first marked
``deleting`` (committed), then the files are unlinked, then the rows deleted. Readers ignore marked
rows, and :func:`repair` (run at start-up) finishes any marked batch, removes index rows whose
file is gone and re-indexes files that no row names from what their names and contents say
(device, start, sha256 and duration): after a power cut that lost the newest commits, or an upload
cut off between rename and commit, footage the agent may already have deleted is never lost. A
file that cannot be re-indexed (torn, unreadable, conflicting) is moved to ``.quarantine/`` and
counted, never deleted; only temporary files of unfinished uploads are removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.clip import safe_path
from vms.archive.store import INCOMING, QUARANTINE, relative_path
from vms.config import RetentionConfig, RetentionPolicy
from vms.db.models import Device, LegalHold, Segment

log = logging.getLogger(__name__)

#: ``START_US-SHA12.ts``, as :func:`vms.archive.store.relative_path` names a segment file.
_SEGMENT_NAME = re.compile(r"^(\d{1,20})-([0-9a-f]{12})\.ts$")
#: The longest segment the API takes (``duration`` of an upload).
_MAX_SEGMENT_S = 600.0

Holds = dict[str, list[tuple[float, float]]]


@dataclass
class PassReport:
    at: float
    deleted_segments: int = 0
    deleted_bytes: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    held_skipped: int = 0
    emergency: bool = False
    free_bytes_before: int = 0
    free_bytes_after: int = 0
    seconds: float = 0.0

    def count(self, reason: str, rows: list[Any]) -> None:
        self.deleted_segments += len(rows)
        self.deleted_bytes += sum(r.bytes for r in rows)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + len(rows)


@dataclass
class RepairReport:
    finished_deletions: int = 0
    rows_without_file: int = 0
    files_without_row: int = 0  # all of them: re-indexed + quarantined + temporary files removed
    reindexed: int = 0
    quarantined: int = 0
    temp_removed: int = 0  # unfinished uploads' temporary files (never acknowledged to an agent)


def active_holds(s: Session, devices: Collection[str], start: float, end: float) -> Holds:
    """Unreleased holds of ``devices`` overlapping ``[start, end)``, by device."""
    q = select(LegalHold.device_id, LegalHold.start_at, LegalHold.end_at).where(
        LegalHold.released_at.is_(None), LegalHold.device_id.in_(list(devices)), LegalHold.end_at > start,
        LegalHold.start_at < end)
    out: Holds = {}
    for d, a, b in s.execute(q):
        out.setdefault(d, []).append((a, b))
    return out


def _held(holds: Holds, device_id: str, start: float, end: float) -> bool:
    return any(end > a and start < b for a, b in holds.get(device_id, ()))


#: True for a segment row that an unreleased hold covers (correlated: used inside the mark's UPDATE).
_HELD_NOW = exists().where(
    LegalHold.device_id == Segment.device_id, LegalHold.released_at.is_(None),
    LegalHold.end_at > Segment.start_at, LegalHold.start_at < Segment.end_at,
)


class Retention:
    """One retention pass at a time (the hub's retention thread, or a test calling :meth:`run`)."""

    def __init__(
        self,
        cfg: RetentionConfig,
        sessions: sessionmaker[Session],
        root: Path,
        policy_of: Callable[[str], tuple[RetentionPolicy, str]],
        center_members: Callable[[str], list[str]],
        free_bytes: Callable[[], int],
    ) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.root = root
        self.policy_of = policy_of
        self.center_members = center_members
        self.free_bytes = free_bytes
        self.deleted_total = 0
        self.deleted_bytes_total = 0

    # -- the pass ------------------------------------------------------------------------------
    def run(self, now: float) -> PassReport:
        rep = PassReport(at=now, free_bytes_before=self.free_bytes())
        with self.sessions() as s:
            devices = list(s.scalars(select(Device.id)))
        for d in devices:
            policy, source = self.policy_of(d)
            cutoff = now - policy.keep_days * 86400.0
            self._delete_where(rep, "age", [d], Segment.end_at <= cutoff, Segment.start_at < cutoff)
            # A center's quota caps the center's total (below); a device's or the default caps each device.
            if policy.quota_bytes is not None and not source.startswith("center:"):
                self._enforce_quota(rep, [d], policy.quota_bytes, "device_quota")
        for cid, pol in self.cfg.centers.items():
            if pol.quota_bytes is not None:
                self._enforce_quota(rep, self.center_members(cid), pol.quota_bytes, "center_quota")
        if self.free_bytes() < self.cfg.emergency_free_bytes:
            rep.emergency = True
            self._emergency(rep)
        rep.free_bytes_after = self.free_bytes()
        self.deleted_total += rep.deleted_segments
        self.deleted_bytes_total += rep.deleted_bytes
        return rep

    def _candidates(self, s: Session, devices: list[str], *where: Any, after: tuple[float, int] | None) -> list[Any]:
        q = select(Segment.id, Segment.device_id, Segment.path, Segment.start_at, Segment.end_at, Segment.bytes).where(
            Segment.deleting.is_(False), *where
        )
        q = q.where(Segment.device_id == devices[0]) if len(devices) == 1 else q.where(Segment.device_id.in_(devices))
        if after is not None:
            q = q.where(or_(Segment.start_at > after[0], and_(Segment.start_at == after[0], Segment.id > after[1])))
        return list(s.execute(q.order_by(Segment.start_at, Segment.id).limit(self.cfg.batch_size)).all())

    def _delete_where(self, rep: PassReport, reason: str, devices: list[str], *where: Any) -> None:
        after: tuple[float, int] | None = None
        while devices:
            with self.sessions() as s:
                rows = self._candidates(s, devices, *where, after=after)
            if not rows:
                return
            after = (rows[-1].start_at, rows[-1].id)
            self._delete(rep, reason, self._unheld(rep, rows))

    def _enforce_quota(self, rep: PassReport, devices: list[str], quota: int, reason: str) -> None:
        if not devices:
            return
        with self.sessions() as s:
            used = int(
                s.scalar(
                    select(func.coalesce(func.sum(Segment.bytes), 0)).where(
                        Segment.device_id.in_(devices), Segment.deleting.is_(False)
                    )
                )
                or 0
            )
        after: tuple[float, int] | None = None
        while used > quota:
            with self.sessions() as s:
                rows = self._candidates(s, devices, after=after)
            if not rows:
                log.warning("%s: %d bytes over quota %d but the rest is held", reason, used, quota)
                return
            after = (rows[-1].start_at, rows[-1].id)
            doomed = []
            for r in self._unheld(rep, rows):
                if used <= quota:
                    break
                doomed.append(r)
                used -= r.bytes
            deleted = {r.id for r in self._delete(rep, reason, doomed)}
            used += sum(r.bytes for r in doomed if r.id not in deleted)  # held since the batch was read

    def _emergency(self, rep: PassReport) -> None:
        """Oldest footage of any device goes until the target free space is reached."""
        after: tuple[float, int] | None = None
        target = self.cfg.emergency_target_free_bytes
        while self.free_bytes() < target:
            with self.sessions() as s:
                q = select(
                    Segment.id, Segment.device_id, Segment.path, Segment.start_at, Segment.end_at, Segment.bytes
                ).where(Segment.deleting.is_(False))
                if after is not None:
                    q = q.where(
                        or_(Segment.start_at > after[0], and_(Segment.start_at == after[0], Segment.id > after[1]))
                    )
                rows = list(s.execute(q.order_by(Segment.start_at, Segment.id).limit(self.cfg.batch_size)).all())
            if not rows:
                log.error("archive disk still low after deleting all unheld footage")
                return
            after = (rows[-1].start_at, rows[-1].id)
            doomed = self._unheld(rep, rows)
            # Delete in small steps so no more is lost than the target needs.
            need = target - self.free_bytes()
            step: list[Any] = []
            for r in doomed:
                step.append(r)
                need -= r.bytes
                if need <= 0:
                    break
            if step and len(step) < len(doomed):
                after = (step[-1].start_at, step[-1].id)  # the rest of this batch is next in line
            self._delete(rep, "emergency", step)

    def _unheld(self, rep: PassReport, rows: list[Any]) -> list[Any]:
        """The batch's rows no hold covers, with the holds as they are now (not as the pass began)."""
        if not rows:
            return []
        with self.sessions() as s:
            holds = active_holds(s, {r.device_id for r in rows}, min(r.start_at for r in rows),
                                 max(r.end_at for r in rows))
        keep = [r for r in rows if not _held(holds, r.device_id, r.start_at, r.end_at)]
        rep.held_skipped += len(rows) - len(keep)
        return keep

    def _delete(self, rep: PassReport, reason: str, rows: list[Any]) -> list[Any]:
        """Delete ``rows`` and count them; a row a hold took since :meth:`_unheld` counts as held."""
        deleted = self.delete_rows(rows)
        rep.held_skipped += len(rows) - len(deleted)
        rep.count(reason, deleted)
        return deleted

    def delete_rows(self, rows: Iterable[Any]) -> list[Any]:
        """Mark, unlink, delete: each step committed before the next (see the module doc). The mark
        skips rows a hold covers at that moment, in the same statement, so no hold placed after the
        batch was read is missed; returns the rows deleted."""
        rows = list(rows)
        if not rows:
            return []
        ids_ = [r.id for r in rows]
        with self.sessions() as s:
            s.execute(update(Segment).where(Segment.id.in_(ids_), ~_HELD_NOW).values(deleting=True)
                      .execution_options(synchronize_session=False))
            marked = set(s.scalars(select(Segment.id).where(Segment.id.in_(ids_), Segment.deleting.is_(True))))
            s.commit()
        rows = [r for r in rows if r.id in marked]
        self._unlink(r.path for r in rows)
        with self.sessions() as s:
            s.execute(delete(Segment).where(Segment.id.in_([r.id for r in rows])))
            s.commit()
        return rows

    def _unlink(self, rels: Iterable[str]) -> None:
        dirs: set[Path] = set()
        for rel in rels:
            p = safe_path(self.root, rel)
            if p is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            dirs.add(p.parent)
        for d in dirs:  # day directories left empty
            with contextlib.suppress(OSError):
                d.rmdir()

    # -- start-up ------------------------------------------------------------------------------
    def repair(self) -> RepairReport:
        """Make the index and the recordings directory agree again (run before serving)."""
        rep = RepairReport()
        while True:
            with self.sessions() as s:
                marked = list(
                    s.execute(
                        select(Segment.id, Segment.path).where(Segment.deleting.is_(True)).limit(self.cfg.batch_size)
                    ).all()
                )
            if not marked:
                break
            self._unlink(r.path for r in marked)
            with self.sessions() as s:
                s.execute(delete(Segment).where(Segment.id.in_([r.id for r in marked])))
                s.commit()
            rep.finished_deletions += len(marked)
        if not self.root.is_dir():
            return rep
        incoming = self.root / INCOMING
        if incoming.is_dir():
            for p in incoming.iterdir():
                if p.is_file():
                    p.unlink(missing_ok=True)
                    rep.temp_removed += 1
        for dev_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            on_disk = {str(p.relative_to(self.root)): p for p in dev_dir.rglob("*") if p.is_file()}
            with self.sessions() as s:
                indexed = dict(
                    s.execute(select(Segment.path, Segment.id).where(Segment.device_id == dev_dir.name)).all()
                )
            gone = [i for rel, i in indexed.items() if rel not in on_disk]
            for k in range(0, len(gone), self.cfg.batch_size):
                with self.sessions() as s:
                    s.execute(delete(Segment).where(Segment.id.in_(gone[k : k + self.cfg.batch_size])))
                    s.commit()
            rep.rows_without_file += len(gone)
            for rel, p in sorted(on_disk.items()):
                if rel in indexed:
                    continue
                rep.files_without_row += 1
                if p.name.endswith(".part"):  # an upload cut off before its rename: the agent still has it
                    p.unlink(missing_ok=True)
                    rep.temp_removed += 1
                    continue
                why = self._reindex(dev_dir.name, rel, p)
                if why is None:
                    rep.reindexed += 1
                else:
                    self._quarantine(rel, p, why)
                    rep.quarantined += 1
        with self.sessions() as s:  # rows of devices whose whole directory is gone
            dirs = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            orphans = [d for d in s.scalars(select(Segment.device_id).distinct()) if d not in dirs]
            for d in orphans:
                n = s.execute(delete(Segment).where(Segment.device_id == d)).rowcount  # type: ignore[attr-defined]
                rep.rows_without_file += int(n or 0)
            s.commit()
        if rep.finished_deletions or rep.rows_without_file or rep.files_without_row or rep.temp_removed:
            log.warning(
                "archive repaired: %d interrupted deletions finished, %d rows without file removed, "
                "%d files without row: %d re-indexed, %d quarantined in %s; %d temporary files removed",
                rep.finished_deletions,
                rep.rows_without_file,
                rep.files_without_row,
                rep.reindexed,
                rep.quarantined,
                self.root / QUARANTINE,
                rep.temp_removed,
            )
        return rep

    def _reindex(self, device_id: str, rel: str, path: Path) -> str | None:
        """Index a segment file no row names, from its name (device, day, start, sha256 prefix) and
        its content (the full sha256, the duration its packets span); None if done, else why not."""
        parts = rel.split("/")
        m = _SEGMENT_NAME.match(parts[-1]) if len(parts) == 3 else None
        if m is None:
            return "not named DEVICE/YYYYMMDD/START_US-SHA12.ts"
        start = int(m.group(1)) / 1_000_000
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            st = path.stat()
        except OSError as exc:
            return f"unreadable: {exc}"
        if not digest.startswith(m.group(2)):
            return f"content (sha256 {digest[:12]}) does not match its name: torn or altered"
        try:
            if relative_path(device_id, start, digest) != rel:
                return "its day directory does not match its start"
        except (OverflowError, OSError, ValueError):
            return "start out of range"
        duration = media_duration(path)
        if duration is None or not 0 < duration <= _MAX_SEGMENT_S:
            return "not readable as MPEG-TS media (no timed packets)"
        try:
            with self.sessions() as s:
                if s.get(Device, device_id) is None:
                    return f"no device {device_id} in the store"
                if s.scalars(
                    select(Segment.id).where(Segment.device_id == device_id, Segment.start_at == start)
                ).first() is not None:
                    return "another segment is indexed at this device and start"
                s.add(Segment(device_id=device_id, start_at=start, end_at=start + duration, bytes=st.st_size,
                              path=rel, sha256=digest, received_at=st.st_mtime, agent_id=None))
                s.commit()
        except SQLAlchemyError as exc:
            return f"index write failed: {exc}"
        log.info("re-indexed %s (%.3f s from %s)", rel, duration, dt.datetime.fromtimestamp(start, dt.UTC).isoformat())
        return None

    def _quarantine(self, rel: str, path: Path, why: str) -> None:
        """Move a file aside (never delete it) and note why in ``.quarantine/reasons.log``."""
        q = self.root / QUARANTINE
        dest = q / rel
        n = 1
        while dest.exists():
            dest = q / f"{rel}.{n}"
            n += 1
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            with open(q / "reasons.log", "a", encoding="utf-8") as f:
                f.write(f"{dt.datetime.now(dt.UTC).isoformat()}\t{rel}\t{why}\n")
        except OSError as exc:
            log.error("cannot quarantine %s (%s): %s; left in place", rel, why, exc)
            return
        log.warning("segment file %s quarantined: %s", rel, why)


def media_duration(path: Path) -> float | None:
    """Seconds spanned by the packets of a segment's first video stream (else its first stream), or None."""
    try:
        with av.open(str(path), format="mpegts") as c:
            streams = c.streams.video or c.streams
            if not streams:
                return None
            st = streams[0]
            lo = hi = None
            step = 0.0
            n = 0
            for pkt in c.demux(st):
                if pkt.pts is None or pkt.time_base is None:
                    continue
                tb = pkt.time_base
                a = float(pkt.pts * tb)
                b = float((pkt.pts + (pkt.duration or 0)) * tb)
                lo = a if lo is None else min(lo, a)
                hi = b if hi is None else max(hi, b)
                step = max(step, float((pkt.duration or 0) * tb))
                n += 1
            if lo is None or hi is None or n == 0:
                return None
            if step == 0 and n > 1:  # no packet durations: one more frame at the average interval
                hi += (hi - lo) / (n - 1)
            return hi - lo if hi > lo else None
    except (OSError, av.FFmpegError):
        return None
