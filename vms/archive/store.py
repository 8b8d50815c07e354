"""Segment store: verify, write atomically, index.

A body arrives in a temporary file of its own (``.incoming/``, a unique name per upload, hashed as
it is written, so an upload is never held in memory and two uploads never share a file). It is
fsynced, renamed into place and its directory fsynced before its index row is committed, and that
commit is durable (``synchronous=FULL``, see ``vms/db``) before the agent hears "stored" and
deletes its copy. If the index write fails, the file is removed again and the agent (which still
has the segment in its spool) is told to retry.

A segment is the same as one stored when its device and (hub) start match, or when its device,
content (sha256) and start *as the agent sent it* match: the hub's clock-skew correction moves a
retry's start by a slightly different amount each time, and such a retry is answered
``duplicate``, never stored twice. Identical bytes at another agent start are another segment (a
simulator's looped clip after a reconnect): they are stored, never answered "duplicate", which
would make the agent delete footage the hub does not have.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

from prometheus_client import Histogram
from sqlalchemy import Engine, Executable, bindparam, insert, literal_column, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vms.config import ArchiveConfig
from vms.db.models import Segment
from vms.kernel.fsutil import fsync_dir

log = logging.getLogger(__name__)

#: Upload bodies being received, under the recordings directory (one file system: renames are atomic).
INCOMING = ".incoming"
#: Files start-up repair could not index (torn, unreadable, conflicting), kept for a person to look at.
QUARANTINE = ".quarantine"
_STRIPES = 64

# The index's statements, built once: a segment costs two round trips to the store (the duplicate
# check, the insert) as plain Core statements on a pooled connection. Building ORM objects and
# queries per segment cost several times the store's own work (``bench/bench_archive.py``).
_T = Segment.__table__
_BY_START = (
    select(_T.c.id, _T.c.sha256, literal_column("1").label("leg"))
    .where(_T.c.device_id == bindparam("d"), _T.c.start_at == bindparam("s"))
)
#: Rows that make an upload a duplicate or a conflict: the same upload (device, content, agent
#: start; ``leg`` 0) and whatever is stored at its start (``leg`` 1). Two index searches: SQLite
#: plans an ``OR`` of the two as a scan of all the device's segments.
_SAME_OR_AT_START = union_all(
    select(_T.c.id, _T.c.sha256, literal_column("0").label("leg")).where(
        _T.c.device_id == bindparam("d"), _T.c.sha256 == bindparam("h"), _T.c.agent_start == bindparam("a")
    ),
    _BY_START,
)
_INSERT = insert(Segment)


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

    @classmethod
    def write_failed(cls, exc: OSError) -> Outcome:
        """A body that could not be written: a full disk (or quota) says so, anything else is a store error."""
        result = Result.DISK_FULL if exc.errno in (28, 122) else Result.STORE_ERROR  # ENOSPC, EDQUOT
        return cls(result, f"cannot write segment: {exc.strerror or exc}")


def relative_path(device_id: str, start: float, sha256: str) -> str:
    """``DEVICE/YYYYMMDD/START_US-SHA12.ts``: distinct content never shares a file name."""
    day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%d")
    return f"{device_id}/{day}/{round(start * 1_000_000)}-{sha256[:12]}.ts"


class Incoming:
    """An upload's body on its way to disk: a temporary file of its own, hashed as it is written.

    Either handed to :meth:`SegmentStore.ingest_file` (which moves it into place or removes it) or
    :meth:`discard`-ed; never both needed, both harmless.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="up-", suffix=".part", dir=directory)
        self.path = Path(name)
        self._f: IO[bytes] | None = os.fdopen(fd, "wb")
        self._h = hashlib.sha256()
        self.size = 0
        self.moved = False

    def write(self, data: bytes) -> None:
        """Append a piece of the body (blocking: call from a worker thread for large pieces)."""
        assert self._f is not None, "incoming segment already closed"
        self._f.write(data)
        self._h.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()

    def close(self, sync: bool) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            if sync:
                f.flush()
                os.fsync(f.fileno())
        finally:
            f.close()

    def move_to(self, final: Path) -> None:
        """Make the body durable and rename it to ``final`` (same file system). Raises OSError."""
        self.close(sync=True)
        os.replace(self.path, final)
        self.moved = True

    def discard(self) -> None:
        """Remove the temporary file (nothing once it was moved into place)."""
        try:
            self.close(sync=False)
        finally:
            if not self.moved:
                self.path.unlink(missing_ok=True)


class Adopted(Incoming):
    """A finished segment file the hub wrote itself (GB/T 28181 media, ``vms/gb28181/media.py``):
    hashed and synced by the segmenter already, on the archive's disk. ``discard`` leaves it in
    place: its writer decides what a refusal means, so a full disk or a store error loses nothing."""

    def __init__(self, path: Path, sha256: str, size: int) -> None:
        self.path = path
        self._f = None
        self._sha256 = sha256
        self.size = size
        self.moved = False

    @property
    def sha256(self) -> str:
        return self._sha256

    def discard(self) -> None:
        pass


class SegmentStore:
    def __init__(self, root: Path, cfg: ArchiveConfig, sessions: sessionmaker[Session]) -> None:
        self.root = root
        self.cfg = cfg
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("the segment store needs sessions bound to an engine")
        self.engine: Engine = bind  # the index is written without ORM objects (see _INSERT)
        root.mkdir(parents=True, exist_ok=True)
        self.incoming_dir = root / INCOMING
        self.stored_total = 0
        self.stored_bytes_total = 0
        self.refused_total = 0
        #: How long the durable steps of storing a segment take: ``file`` (the body fsynced, renamed into
        #: place, its directory fsynced) and ``index`` (the row committed). They are most of an upload's
        #: time at the hub and show first when the disk is slow or shared (clip files, another service).
        self.step_seconds = Histogram(
            "vms_segment_store_seconds", "Duration of a durable step of storing a segment (file, index)",
            ["step"], registry=None, buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )
        self._file_s, self._index_s = self.step_seconds.labels("file"), self.step_seconds.labels("index")
        # Uploads of one content wait for each other: the second finds the first's row (a duplicate).
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def receive(self) -> Incoming:
        """A fresh temporary file for one upload's body (its name is unique)."""
        return Incoming(self.incoming_dir)

    def ingest(
        self, device_id: str, start: float, duration: float, data: bytes, sha256: str, agent_id: str | None, now: float
    ) -> Outcome:
        """Store a body held in memory (tests, tools); uploads stream through :meth:`ingest_file`."""
        body: Incoming | None = None
        try:
            body = self.receive()
            body.write(data)
        except OSError as exc:
            if body is not None:
                body.discard()
            self.refused_total += 1
            return Outcome.write_failed(exc)
        return self.ingest_file(device_id, start, duration, body, sha256, agent_id, now)

    def ingest_file(
        self,
        device_id: str,
        start: float,
        duration: float,
        body: Incoming,
        sha256: str,
        agent_id: str | None,
        now: float,
        agent_start: float | None = None,
    ) -> Outcome:
        """Verify and store a received body; ``body`` is moved into place or removed, whatever the outcome.

        ``agent_start``: the start as the agent sent it, before the skew correction moved it to
        ``start``; a stored segment of this device with the same sha256 and agent start is this one.
        """
        try:
            return self._ingest_file(device_id, start, duration, body, sha256, agent_id, now, agent_start)
        finally:
            body.discard()  # a no-op once the file was renamed into place

    def _ingest_file(
        self,
        device_id: str,
        start: float,
        duration: float,
        body: Incoming,
        sha256: str,
        agent_id: str | None,
        now: float,
        agent_start: float | None,
    ) -> Outcome:
        if not 0 < duration <= self.cfg.max_segment_seconds:
            return Outcome(Result.BAD_RANGE, f"duration {duration} s outside (0, {self.cfg.max_segment_seconds}]")
        size = body.size
        if size > self.cfg.max_segment_bytes:
            return Outcome(Result.TOO_LARGE, f"{size} bytes > max_segment_bytes {self.cfg.max_segment_bytes}")
        digest = body.sha256
        if digest != sha256.lower():
            return Outcome(Result.BAD_CHECKSUM, f"body sha256 {digest} does not match X-VMS-SHA256 {sha256}")
        with self._stripes[int(digest[:8], 16) % _STRIPES]:
            if (known := self._known(device_id, start, digest, agent_start)) is not None:
                return known
            if self.free_bytes() < self.cfg.min_free_bytes:  # the body is on this disk already
                self.refused_total += 1
                return Outcome(Result.DISK_FULL, f"archive disk has less than {self.cfg.min_free_bytes} bytes free")
            rel = relative_path(device_id, start, digest)
            final = self.root / rel
            try:
                t0 = time.perf_counter()
                final.parent.mkdir(parents=True, exist_ok=True)
                body.move_to(final)
                fsync_dir(final.parent)
                self._file_s.observe(time.perf_counter() - t0)
            except OSError as exc:
                self.refused_total += 1
                log.error("cannot write segment %s: %s", rel, exc)
                return Outcome.write_failed(exc)
            return self._index(final, rel, device_id, start, duration, size, digest, agent_id, now, agent_start)

    def _known(self, device_id: str, start: float, digest: str, agent_start: float | None) -> Outcome | None:
        """``duplicate`` or ``conflict`` if the store has this segment or another at its start, else None
        (one query)."""
        stmt: Executable = _BY_START
        params: dict[str, object] = {"d": device_id, "s": start}
        if agent_start is not None:
            stmt, params = _SAME_OR_AT_START, {**params, "h": digest, "a": agent_start}
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, params).all()
        same = next((r for r in rows if r.leg == 0), None)
        at_start = next((r for r in rows if r.leg == 1), None)  # one at most (unique index)
        if same is not None:
            return Outcome(Result.DUPLICATE, "already stored", same.id)
        if at_start is None:
            return None
        if at_start.sha256 == digest:
            return Outcome(Result.DUPLICATE, "already stored", at_start.id)
        return Outcome(Result.CONFLICT, f"a different segment is stored for {device_id} at {start}")

    def _index(
        self, final: Path, rel: str, device_id: str, start: float, duration: float, size: int, digest: str,
        agent_id: str | None, now: float, agent_start: float | None,
    ) -> Outcome:
        row = {"device_id": device_id, "start_at": start, "end_at": start + duration, "bytes": size, "path": rel,
               "sha256": digest, "received_at": now, "agent_id": agent_id, "agent_start": agent_start,
               "deleting": False}
        try:
            t0 = time.perf_counter()
            with self.engine.begin() as conn:  # committed, durable, before the caller answers "stored"
                key = conn.execute(_INSERT, row).inserted_primary_key
            self._index_s.observe(time.perf_counter() - t0)
            seg_id = int(key[0]) if key is not None and key[0] is not None else None
        except IntegrityError:
            # A concurrent upload of the same segment (another process) won the race; judge against what it stored.
            with self.engine.connect() as conn:
                other = conn.execute(_BY_START, {"d": device_id, "s": start}).first()
            if other is not None and other.sha256 == digest:
                return Outcome(Result.DUPLICATE, "already stored", other.id)
            final.unlink(missing_ok=True)
            return Outcome(Result.CONFLICT, f"a different segment is stored for {device_id} at {start}")
        except Exception as exc:
            final.unlink(missing_ok=True)
            log.error("cannot index segment %s: %s", rel, exc)
            return Outcome(Result.STORE_ERROR, "index write failed; retry")
        self.stored_total += 1
        self.stored_bytes_total += size
        return Outcome(Result.STORED, "stored", seg_id)
