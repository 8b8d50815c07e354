"""Clip builds as jobs: every clip (direct or a long export) is built into ``exports/<id>.mp4``.

The file is written under ``<id>.mp4.part`` and renamed when complete, with its JSON manifest
beside it; the ``export_jobs`` row records progress, size, checksum and gaps, and names the file
only once it is complete, so a failed or interrupted build (disk full, hub restart) never leaves
a half-written clip that looks finished. A direct download streams the ``.part`` file while it
grows (:class:`LiveExport`); a Range request or a later download reads the finished file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.clip import ClipError, ClipFailed, ClipNoSpace, ClipPlan, ClipResult, build_clip, gaps_json
from vms.db.models import ExportJob
from vms.kernel.timeutil import iso

log = logging.getLogger(__name__)

#: Why a build ended without a clip: a refusal (a domain error) or a fault of the hub's.
BuildError = ClipError | ClipFailed

#: Progress is written to the store at most this often.
PROGRESS_EVERY_S = 1.0


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
        self._cond = threading.Condition()

    def advance(self, n: int) -> None:
        with self._cond:
            self.written = n
            self._cond.notify_all()

    def finish(self, result: ClipResult | None, error: BuildError | None) -> None:
        """End the build; a result's file is renamed into place under the same lock readers open with."""
        with self._cond:
            if result is not None:
                os.replace(self.part, self.final)
            self.result, self.error, self.finished = result, error, True
            self._cond.notify_all()

    def wait(self, beyond: int, timeout: float) -> tuple[int, bool]:
        """Block until more than ``beyond`` bytes are written or the build ends; (written, finished)."""
        with self._cond:
            self._cond.wait_for(lambda: self.written > beyond or self.finished, timeout)
            return self.written, self.finished

    def open_reader(self) -> IO[bytes]:
        """The file being written (or, if the build is already over, the finished file)."""
        with self._cond:
            return open(self.final if self.finished else self.part, "rb")


class Exports:
    def __init__(self, directory: Path, recordings: Path, sessions: sessionmaker[Session], clock: Callable[[], float]):
        self.dir = directory
        self.recordings = recordings
        self.sessions = sessions
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vms-export")
        self._live: dict[str, LiveExport] = {}
        self._lock = threading.Lock()

    def path_of(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.mp4"

    def manifest_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def start(
        self, plan: ClipPlan, requested_by: str, reason: str, case_number: str, *, background: bool
    ) -> LiveExport:
        """Create the job row and start building: in the export worker (queued) or right away."""
        job_id = secrets.token_hex(16)
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
            self._pool.submit(self._run, plan, live)
        else:
            threading.Thread(target=self._run, args=(plan, live), name=f"vms-clip-{job_id[:6]}", daemon=True).start()
        return live

    def live(self, job_id: str) -> LiveExport | None:
        with self._lock:
            return self._live.get(job_id)

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
            result = build_clip(plan, self.recordings, live.part, progress)
            self.manifest_path(live.id).write_text(
                json.dumps({"export_id": live.id, **result.manifest()}, ensure_ascii=False, indent=2), encoding="utf-8"
            )
            live.finish(result, None)
        except ClipError as exc:
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
        self._forget_later(live.id)

    def _fail(self, live: LiveExport, err: BuildError) -> None:
        live.part.unlink(missing_ok=True)
        self.manifest_path(live.id).unlink(missing_ok=True)
        self._update(live.id, status="failed", error=str(err), path=None, finished_at=self.clock())
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
        self._pool.shutdown(wait=False, cancel_futures=True)
