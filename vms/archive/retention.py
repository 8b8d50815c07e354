"""Retention: delete footage past its keep days or over its byte quota, oldest first, never held footage.

Deletion keeps the index and the disk consistent through crashes: a batch of rows is first marked
``deleting`` (committed), then the files are unlinked, then the rows deleted. Readers ignore marked
rows, and :func:`repair` (run at start-up) finishes any marked batch and removes index rows whose
file is gone and files that no row names (uploads cut off between rename and commit; the agent
still has those in its spool and sends them again).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.clip import safe_path
from vms.config import RetentionConfig, RetentionPolicy
from vms.db.models import Device, LegalHold, Segment

log = logging.getLogger(__name__)

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
    files_without_row: int = 0


def active_holds(s: Session, device_id: str | None = None) -> Holds:
    q = select(LegalHold.device_id, LegalHold.start_at, LegalHold.end_at).where(LegalHold.released_at.is_(None))
    if device_id is not None:
        q = q.where(LegalHold.device_id == device_id)
    out: Holds = {}
    for d, a, b in s.execute(q):
        out.setdefault(d, []).append((a, b))
    return out


def _held(holds: Holds, device_id: str, start: float, end: float) -> bool:
    return any(end > a and start < b for a, b in holds.get(device_id, ()))


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
            holds = active_holds(s)
            devices = list(s.scalars(select(Device.id)))
        for d in devices:
            policy, source = self.policy_of(d)
            cutoff = now - policy.keep_days * 86400.0
            self._delete_where(rep, "age", holds, [d], Segment.end_at <= cutoff, Segment.start_at < cutoff)
            # A center's quota caps the center's total (below); a device's or the default caps each device.
            if policy.quota_bytes is not None and not source.startswith("center:"):
                self._enforce_quota(rep, holds, [d], policy.quota_bytes, "device_quota")
        for cid, pol in self.cfg.centers.items():
            if pol.quota_bytes is not None:
                self._enforce_quota(rep, holds, self.center_members(cid), pol.quota_bytes, "center_quota")
        if self.free_bytes() < self.cfg.emergency_free_bytes:
            rep.emergency = True
            self._emergency(rep, holds)
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

    def _delete_where(self, rep: PassReport, reason: str, holds: Holds, devices: list[str], *where: Any) -> None:
        after: tuple[float, int] | None = None
        while devices:
            with self.sessions() as s:
                rows = self._candidates(s, devices, *where, after=after)
            if not rows:
                return
            after = (rows[-1].start_at, rows[-1].id)
            doomed = self._unheld(rep, holds, rows)
            self.delete_rows(doomed)
            rep.count(reason, doomed)

    def _enforce_quota(self, rep: PassReport, holds: Holds, devices: list[str], quota: int, reason: str) -> None:
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
            for r in self._unheld(rep, holds, rows):
                if used <= quota:
                    break
                doomed.append(r)
                used -= r.bytes
            self.delete_rows(doomed)
            rep.count(reason, doomed)

    def _emergency(self, rep: PassReport, holds: Holds) -> None:
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
            doomed = self._unheld(rep, holds, rows)
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
            self.delete_rows(step)
            rep.count("emergency", step)

    @staticmethod
    def _unheld(rep: PassReport, holds: Holds, rows: list[Any]) -> list[Any]:
        keep = [r for r in rows if not _held(holds, r.device_id, r.start_at, r.end_at)]
        rep.held_skipped += len(rows) - len(keep)
        return keep

    def delete_rows(self, rows: Iterable[Any]) -> None:
        """Mark, unlink, delete: each step committed before the next (see the module doc)."""
        rows = list(rows)
        if not rows:
            return
        ids_ = [r.id for r in rows]
        with self.sessions() as s:
            s.execute(update(Segment).where(Segment.id.in_(ids_)).values(deleting=True))
            s.commit()
        self._unlink(r.path for r in rows)
        with self.sessions() as s:
            s.execute(delete(Segment).where(Segment.id.in_(ids_)))
            s.commit()

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
        for dev_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
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
            for rel, p in on_disk.items():
                if rel not in indexed:
                    p.unlink(missing_ok=True)
                    rep.files_without_row += 1
        with self.sessions() as s:  # rows of devices whose whole directory is gone
            dirs = {p.name for p in self.root.iterdir() if p.is_dir()}
            orphans = [d for d in s.scalars(select(Segment.device_id).distinct()) if d not in dirs]
            for d in orphans:
                n = s.execute(delete(Segment).where(Segment.device_id == d)).rowcount  # type: ignore[attr-defined]
                rep.rows_without_file += int(n or 0)
            s.commit()
        if rep.finished_deletions or rep.rows_without_file or rep.files_without_row:
            log.warning(
                "archive repaired: %d interrupted deletions finished, %d rows without file removed, "
                "%d files without row removed",
                rep.finished_deletions,
                rep.rows_without_file,
                rep.files_without_row,
            )
        return rep
