"""Clip builds as jobs: every clip (direct or a long export) is built into ``exports/<id>.mp4``.

The file is written under ``<id>.mp4.part`` and renamed when complete, with its JSON manifest
beside it; the ``export_jobs`` row records progress, size, checksum and gaps, and names the file
only once it is complete, so a failed or interrupted build (disk full, hub restart) never leaves
a half-written clip that looks finished. A direct download streams the ``.part`` file while it
grows (:class:`LiveExport`); a Range request or a later download reads the finished file.

Clips are built in worker processes at a lower CPU priority (``vms/archive/clip.py``
:class:`ClipWorkers`, at most ``archive.max_clips`` + 1): the demuxer and muxer hold the interpreter
lock for every packet, which in the hub's own threads delayed heartbeats and uploads. The hub keeps
threads of its own for clips, never those of ingest or live view: one per direct clip that follows
its worker (at most ``archive.max_clips`` downloads at once, ``archive.max_clips_per_user`` per user,
429 beyond), one for export jobs (at most ``archive.max_queued_exports`` waiting or building), and a
pool of ``archive.max_clips`` threads for the blocking file and store calls of the clip routes
(:meth:`Exports.run`). A reader waits for the builder on its event loop, holding no thread
(:meth:`LiveExport.progress`), and a direct clip whose client went away is cancelled. All downloads
together are sent at most ``archive.clip_send_mbit_s`` fast (:class:`SendPace`).
Every manifest carries the audit log's newest signed checkpoint (``vms/audit.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.clip import ClipError, ClipFailed, ClipNoSpace, ClipPlan, ClipResult, ClipWorkers, gaps_json
from vms.config import ArchiveConfig
from vms.db.models import ExportJob
from vms.errors import Busy
from vms.kernel.timeutil import iso

log = logging.getLogger(__name__)

#: Why a build ended without a clip: a refusal (a domain error) or a fault of the hub's.
BuildError = ClipError | ClipFailed

#: Progress is written to the store at most this often.
PROGRESS_EVERY_S = 1.0
#: Seconds a caller refused for too many clips is asked to wait.
CLIPS_RETRY_AFTER_S = 5.0
#: Seconds a caller refused for a full export queue is asked to wait.
QUEUE_RETRY_AFTER_S = 30.0

P = ParamSpec("P")
T = TypeVar("T")


class LiveExport:
    """A build in progress, for readers that follow the file as it grows."""

    def __init__(self, job_id: str, part: Path, final: Path) -> None:
        self.id = job_id
        self.part = part
        self.final = final
        self.written = 0
        self.finished = False
        self.result: ClipResult | None = None
        self.error: BuildError | None = None
        self.cancelled: str | None = None
        self.renamed = False
        self._lock = threading.Lock()
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def _wake(self) -> None:
        """Wake the readers waiting on their event loops (called by the builder with ``_lock`` held);
        each waiter is woken once and registers again, so a builder's many writes cost one wake-up."""
        watchers, self._watchers = self._watchers, []
        for loop, ev in watchers:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(ev.set)

    def advance(self, n: int) -> None:
        with self._lock:
            self.written = n
            self._wake()

    def publish(self) -> None:
        """Rename the complete file into place, under the same lock readers open with."""
        with self._lock:
            os.replace(self.part, self.final)
            self.renamed = True

    def finish(self, result: ClipResult | None, error: BuildError | None) -> None:
        """End the build (a result's file :meth:`publish`-ed and its job row done first, so a reader told
        that the build is over finds the row done too)."""
        with self._lock:
            self.result, self.error, self.finished = result, error, True
            self._wake()

    def cancel(self, why: str) -> None:
        """Ask the builder to stop (its worker is told within ``CANCEL_CHECK_S`` and stops at its next
        write); nothing if the build is over."""
        with self._lock:
            if not self.finished:
                self.cancelled = why

    async def progress(self, beyond: int, timeout: float) -> tuple[int, bool]:
        """Wait, on the event loop and holding no thread, until more than ``beyond`` bytes are written
        or the build ends, at most ``timeout`` s; (written, finished)."""
        ev = asyncio.Event()
        watcher = (asyncio.get_running_loop(), ev)
        with self._lock:
            if self.written > beyond or self.finished:
                return self.written, self.finished
            self._watchers.append(watcher)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout)
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        with self._lock:
            return self.written, self.finished

    def open_reader(self) -> IO[bytes]:
        """The file being written (or, if the build is already over, the finished file)."""
        with self._lock:
            return open(self.final if self.renamed else self.part, "rb")


class ClipSlot:
    """One of the clip downloads served at once; :meth:`release` (idempotent) when the response ends."""

    def __init__(self, slots: ClipSlots, user: str) -> None:
        self._slots, self.user, self._held = slots, user, True

    def release(self) -> None:
        with self._slots.lock:
            if not self._held:
                return
            self._held = False
            left = self._slots.by_user[self.user] - 1
            if left:
                self._slots.by_user[self.user] = left
            else:
                del self._slots.by_user[self.user]


class ClipSlots:
    """At most ``total`` clip downloads at once, ``per_user`` of them per user; never blocks."""

    def __init__(self, total: int, per_user: int) -> None:
        self.total, self.per_user = total, per_user
        self.lock = threading.Lock()
        self.by_user: dict[str, int] = {}

    def take(self, user: str) -> ClipSlot:
        """A slot for ``user``, or :class:`Busy` saying which limit was reached."""
        with self.lock:
            mine, busy = self.by_user.get(user, 0), sum(self.by_user.values())
            why = None
            if mine >= self.per_user:
                why = (f"{user} has {mine} clip downloads in progress (archive.max_clips_per_user "
                       f"{self.per_user}): finish or cancel one first")
            elif busy >= self.total:
                why = f"{busy} clip downloads are in progress (archive.max_clips {self.total}): retry shortly"
            if why is not None:
                raise Busy(why, CLIPS_RETRY_AFTER_S)
            self.by_user[user] = mine + 1
            return ClipSlot(self, user)


class SendPace:
    """One sending rate shared by all clip downloads: each piece waits for its turn before it is sent,
    so together they never send faster than ``mbit_s`` (0: no limit). Turns are handed out in order of
    asking, so downloads share the rate evenly; an idle pace lets the next piece go at once."""

    def __init__(self, mbit_s: float) -> None:
        self.bytes_per_s = mbit_s * 1e6 / 8
        self._next = 0.0  # loop time at which the next piece may go
        self.waited_s = 0.0  # the time pieces spent waiting for their turn, all together

    async def turn(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent."""
        if self.bytes_per_s <= 0:
            return
        now = asyncio.get_running_loop().time()
        at = max(self._next, now)
        self._next = at + n / self.bytes_per_s
        if at > now:
            self.waited_s += at - now
            await asyncio.sleep(at - now)


class Exports:
    def __init__(
        self,
        directory: Path,
        recordings: Path,
        sessions: sessionmaker[Session],
        clock: Callable[[], float],
        cfg: ArchiveConfig,
        checkpoint: Callable[[], dict[str, Any] | None],
    ) -> None:
        """``checkpoint()`` signs the audit log as it stands and returns that checkpoint (None when the
        log is not anchored), for the manifest."""
        self.dir = directory
        self.recordings = recordings
        self.sessions = sessions
        self.clock = clock
        self.checkpoint = checkpoint
        self.max_queued = cfg.max_queued_exports
        directory.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vms-export")
        self._io = ThreadPoolExecutor(max_workers=cfg.max_clips, thread_name_prefix="vms-clip-io")
        self._builders = ClipWorkers(cfg.max_clips + 1)  # the direct clips and the export being built
        self.slots = ClipSlots(cfg.max_clips, cfg.max_clips_per_user)
        self.pace = SendPace(cfg.clip_send_mbit_s)
        self._queued = 0
        self._live: dict[str, LiveExport] = {}
        self._lock = threading.Lock()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` in the clips' own threads (not the event loop's default pool that live view and the
        rest share): clip file reads, pre-checks and audit writes go here."""
        return await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn`` in the clips' threads without waiting for it: an audit row written while a response is
        being torn down (closing writes the rows still queued)."""
        self._io.submit(fn, *args)

    def path_of(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.mp4"

    def manifest_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def reserve(self) -> None:
        """A place in the export queue, or :class:`Busy` when ``archive.max_queued_exports`` jobs are
        waiting or building (given back when the job ends)."""
        with self._lock:
            if self._queued >= self.max_queued:
                raise Busy(
                    f"the export queue is full: {self._queued} exports are waiting or building "
                    f"(archive.max_queued_exports {self.max_queued}); retry when one is done",
                    QUEUE_RETRY_AFTER_S,
                )
            self._queued += 1

    def unreserve(self) -> None:
        with self._lock:
            self._queued -= 1

    def start(
        self, job_id: str, plan: ClipPlan, requested_by: str, reason: str, case_number: str, *, background: bool
    ) -> LiveExport:
        """Create the job row and start building: in the export worker (queued: the caller has
        :meth:`reserve`-d its place) or right away."""
        with self.sessions() as s:
            s.add(
                ExportJob(
                    id=job_id,
                    device_id=plan.device_id,
                    start_at=plan.start,
                    end_at=plan.end,
                    requested_by=requested_by,
                    reason=reason,
                    case_number=case_number,
                    status="queued" if background else "running",
                    progress=0.0,
                    gaps=gaps_json(plan.gaps()),
                    created_at=self.clock(),
                )
            )
            s.commit()
        final = self.path_of(job_id)
        live = LiveExport(job_id, final.with_name(final.name + ".part"), final)
        with self._lock:
            self._live[job_id] = live
        if background:
            self._pool.submit(self._queued_run, plan, live)
        else:
            threading.Thread(target=self._run, args=(plan, live), name=f"vms-clip-{job_id[:6]}", daemon=True).start()
        return live

    def live(self, job_id: str) -> LiveExport | None:
        with self._lock:
            return self._live.get(job_id)

    def _queued_run(self, plan: ClipPlan, live: LiveExport) -> None:
        try:
            self._run(plan, live)
        finally:
            self.unreserve()

    def _run(self, plan: ClipPlan, live: LiveExport) -> None:
        self._update(live.id, status="running")
        last = [0.0]

        def progress(n: int, fraction: float) -> None:
            live.advance(n)
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self._update(live.id, progress=round(fraction, 4), bytes=n)

        try:
            result = self._builders.build(plan, self.recordings, live.part, progress, lambda: live.cancelled)
            manifest = {"export_id": live.id, **result.manifest(), "audit_checkpoint": self.checkpoint()}
            self.manifest_path(live.id).write_text(
                json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8"
            )
            live.publish()
        except (ClipError, ClipFailed) as exc:
            self._fail(live, exc)
            return
        except OSError as exc:
            message = f"cannot write the clip: {exc.strerror or exc}"
            self._fail(live, ClipNoSpace(message) if exc.errno in (28, 122) else ClipFailed(message))  # ENOSPC, EDQUOT
            return
        except Exception as exc:
            log.exception("export %s failed", live.id)
            self._fail(live, ClipFailed(f"clip failed: {exc}"))
            return
        gaps = gaps_json(result.gaps)
        for sk in result.skipped:
            gaps.append(
                {
                    "start": iso(sk.start),
                    "end": iso(sk.end),
                    "seconds": round(sk.end - sk.start, 3),
                    "skipped": sk.reason,
                }
            )
        try:
            self._update(
                live.id,
                status="done",
                progress=1.0,
                path=live.final.name,
                bytes=result.bytes,
                sha256=result.sha256,
                gaps=gaps,
                finished_at=self.clock(),
            )
        finally:
            live.finish(result, None)
        self._forget_later(live.id)

    def _fail(self, live: LiveExport, err: BuildError) -> None:
        live.part.unlink(missing_ok=True)
        self.manifest_path(live.id).unlink(missing_ok=True)
        try:
            self._update(live.id, status="failed", error=str(err), path=None, finished_at=self.clock())
        finally:
            live.finish(None, err)
        self._forget_later(live.id)

    def _forget_later(self, job_id: str) -> None:
        # Readers that hold the LiveExport keep it; new readers go through the job row.
        with self._lock:
            self._live.pop(job_id, None)

    def _update(self, job_id: str, **values: Any) -> None:
        with self.sessions() as s:
            row = s.get(ExportJob, job_id)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)
                s.commit()

    def recover(self) -> int:
        """At start-up: builds cut off by a restart are failed, their partial files removed."""
        with self.sessions() as s:
            rows = list(s.scalars(select(ExportJob).where(ExportJob.status.in_(("queued", "running")))))
            for r in rows:
                r.status, r.error, r.path, r.finished_at = (
                    "failed",
                    "hub restarted during the build",
                    None,
                    self.clock(),
                )
            s.commit()
        for p in self.dir.glob("*.part"):
            p.unlink(missing_ok=True)
        return len(rows)

    def expire(self, now: float, keep_days: float) -> int:
        """Remove finished clip files older than ``keep_days``; their rows stay (status ``expired``)."""
        cutoff = now - keep_days * 86400.0
        with self.sessions() as s:
            rows = list(s.scalars(select(ExportJob).where(ExportJob.status == "done", ExportJob.finished_at < cutoff)))
            for r in rows:
                self.path_of(r.id).unlink(missing_ok=True)
                self.manifest_path(r.id).unlink(missing_ok=True)
                r.status, r.path = "expired", None
            s.commit()
        return len(rows)

    def close(self) -> None:
        """Queued exports are dropped (failed at the next start), builds stop; audit rows still queued are
        written."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._builders.close()
        self._io.shutdown(wait=True)
