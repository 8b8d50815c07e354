"""Segment store: verify, write atomically, index.

A file is written under a temporary name, fsynced, renamed into place and its directory fsynced
before its index row is committed, so the index never points at a half-written file. If the
index write fails, the file is removed again and the agent (which still has the segment in its
spool) is told to retry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vms.config import ArchiveConfig
from vms.db.models import Segment
from vms.kernel.fsutil import fsync_dir

log = logging.getLogger(__name__)


class Result(Enum):
    """What became of an uploaded segment. The API answers each with a status (``vms/api/status.py``)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    BAD_CHECKSUM = "bad_checksum"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    BAD_RANGE = "bad_range"
    DISK_FULL = "disk_full"
    STORE_ERROR = "store_error"


@dataclass(frozen=True)
class Outcome:
    result: Result
    message: str
    segment_id: int | None = None


def relative_path(device_id: str, start: float, sha256: str) -> str:
    """``DEVICE/YYYYMMDD/START_US-SHA12.ts``: distinct content never shares a file name."""
    day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%d")
    return f"{device_id}/{day}/{round(start * 1_000_000)}-{sha256[:12]}.ts"


class SegmentStore:
    def __init__(self, root: Path, cfg: ArchiveConfig, sessions: sessionmaker[Session]) -> None:
        self.root = root
        self.cfg = cfg
        self.sessions = sessions
        root.mkdir(parents=True, exist_ok=True)
        self.stored_total = 0
        self.stored_bytes_total = 0
        self.refused_total = 0

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def ingest(
        self, device_id: str, start: float, duration: float, data: bytes, sha256: str, agent_id: str | None, now: float
    ) -> Outcome:
        if not 0 < duration <= self.cfg.max_segment_seconds:
            return Outcome(Result.BAD_RANGE, f"duration {duration} s outside (0, {self.cfg.max_segment_seconds}]")
        if len(data) > self.cfg.max_segment_bytes:
            return Outcome(Result.TOO_LARGE, f"{len(data)} bytes > max_segment_bytes {self.cfg.max_segment_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            return Outcome(Result.BAD_CHECKSUM, f"body sha256 {digest} does not match X-VMS-SHA256 {sha256}")
        with self.sessions() as s:
            existing = s.scalars(
                select(Segment).where(Segment.device_id == device_id, Segment.start_at == start)
            ).first()
            if existing is not None:
                if existing.sha256 == digest:
                    return Outcome(Result.DUPLICATE, "already stored", existing.id)
                return Outcome(Result.CONFLICT, f"a different segment is stored for {device_id} at {start}")
        if self.free_bytes() - len(data) < self.cfg.min_free_bytes:
            self.refused_total += 1
            return Outcome(Result.DISK_FULL, f"archive disk has less than {self.cfg.min_free_bytes} bytes free")
        rel = relative_path(device_id, start, digest)
        final = self.root / rel
        tmp = final.with_name(final.name + ".part")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self.refused_total += 1
            log.error("cannot write segment %s: %s", rel, exc)
            result = Result.DISK_FULL if exc.errno in (28, 122) else Result.STORE_ERROR  # ENOSPC, EDQUOT
            return Outcome(result, f"cannot write segment: {exc.strerror or exc}")
        try:
            with self.sessions() as s:
                row = Segment(
                    device_id=device_id,
                    start_at=start,
                    end_at=start + duration,
                    bytes=len(data),
                    path=rel,
                    sha256=digest,
                    received_at=now,
                    agent_id=agent_id,
                )
                s.add(row)
                s.commit()
                seg_id = row.id
        except IntegrityError:
            # A concurrent upload of the same segment won the race; judge against what it stored.
            with self.sessions() as s:
                other = s.scalars(
                    select(Segment).where(Segment.device_id == device_id, Segment.start_at == start)
                ).first()
            if other is not None and other.sha256 == digest:
                return Outcome(Result.DUPLICATE, "already stored", other.id)
            final.unlink(missing_ok=True)
            return Outcome(Result.CONFLICT, f"a different segment is stored for {device_id} at {start}")
        except Exception as exc:
            final.unlink(missing_ok=True)
            log.error("cannot index segment %s: %s", rel, exc)
            return Outcome(Result.STORE_ERROR, "index write failed; retry")
        self.stored_total += 1
        self.stored_bytes_total += len(data)
        return Outcome(Result.STORED, "stored", seg_id)
