"""The analysis worker pool: processes on all cores, with explicit backpressure.

``submit`` never waits: each worker has a bounded queue and a segment that does not fit is
dropped and counted, so a slow analysis can never delay the relay or the store. A camera always
goes to the same worker (hash of its ID), so its state (previous keyframe, learned view, motion
background) lives in one process and its segments are analysed in order. Reports come back on
one queue and are handed to ``on_report`` in a collector thread; a worker that dies is
restarted (the cameras it held start afresh, and the caller reconciles what they had raised), and
the workers end with the process that started them, even one killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

from vms.analysis.config import AnalysisConfig
from vms.analysis.sampler import Report, SegmentSampler, Work

log = logging.getLogger(__name__)


#: How often an idle worker looks whether the process that started it is still there.
PARENT_CHECK_S = 2.0


def _worker(cfg: AnalysisConfig, inbox: Any, outbox: Any) -> None:
    """A worker process. It ends when told (None), or when the process that started it is gone: a hub
    or agent killed with SIGKILL cannot tell it, and its queue never reports the end, since this
    process holds the queue's writing end too.

    It runs in a session of its own, as clip workers do: a signal to the hub's process group (Ctrl-C
    in a terminal, ``vms demo`` stopping, a supervisor's SIGTERM) reaches the hub alone, which then
    stops its workers in order. Killed along with it, they were taken for crashed and started again
    while the hub was stopping."""
    os.setsid()
    sampler = SegmentSampler(cfg)
    parent = mp.parent_process()
    while True:
        try:
            work = inbox.get(timeout=PARENT_CHECK_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        if work is None:
            return
        try:
            rep = sampler.analyse(work)
        except Exception as exc:  # a bug must not take the worker (and its cameras' state) down
            rep = Report(work.device_id, work.segment_id, work.start, work.key, error=f"{type(exc).__name__}: {exc}")
        finally:
            if work.remove_after:  # before the report: whoever hears the segment is done finds no copy left
                with contextlib.suppress(OSError):
                    os.unlink(work.path)
        outbox.put(rep)


@dataclass
class PoolStats:
    submitted: int = 0
    dropped: int = 0
    analysed: int = 0
    failed: int = 0
    keyframes: int = 0
    frames: int = 0
    busy_s: float = 0.0
    restarts: int = 0
    backlog_dropped: int = 0  # backlog work refused to keep half of its worker's queue for live work


class AnalysisPool:
    def __init__(self, cfg: AnalysisConfig, on_report: Callable[[Report], None]) -> None:
        self.cfg = cfg
        self.on_report = on_report
        self.n = cfg.workers or os.cpu_count() or 1
        self._ctx = mp.get_context("spawn")  # the hub has threads: never fork it
        self._inboxes: list[Any] = []
        self._procs: list[SpawnProcess | None] = []
        self._outbox: Any = None
        self._collector: threading.Thread | None = None
        self._running = False
        self._spawn_lock = threading.Lock()
        self.stats = PoolStats()

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._running:
            return
        self._outbox = self._ctx.Queue()
        self._inboxes = [self._ctx.Queue(self.cfg.queue_per_worker) for _ in range(self.n)]
        self._procs = [None] * self.n  # spawned on their first segment: an idle hub costs nothing
        self._running = True
        self._collector = threading.Thread(target=self._collect, name="vms-analysis", daemon=True)
        self._collector.start()

    def _spawn(self, i: int) -> SpawnProcess:
        p = self._ctx.Process(
            target=_worker, args=(self.cfg, self._inboxes[i], self._outbox), name=f"vms-analysis-{i}", daemon=True
        )
        p.start()
        return p

    def worker_of(self, device_id: str) -> int:
        return zlib.crc32(device_id.encode()) % self.n

    def submit(self, work: Work) -> bool:
        """Queue a segment for analysis, or drop it (and count it) if its worker is behind. Backlog
        (``Work.backlog``) is queued only while its worker's queue is at most half full: a camera's
        hour of backlog must never push out live segments."""
        self.stats.submitted += 1
        if not self._running:
            self.stats.dropped += 1
            return False
        i = self.worker_of(work.device_id)
        if work.backlog:
            with contextlib.suppress(NotImplementedError):  # qsize: not on macOS, where backlog then fills the queue
                if self._inboxes[i].qsize() * 2 >= self.cfg.queue_per_worker:
                    self.stats.dropped += 1
                    self.stats.backlog_dropped += 1
                    return False
        if self._procs[i] is None:
            with self._spawn_lock:
                if self._procs[i] is None:
                    self._procs[i] = self._spawn(i)
        try:
            self._inboxes[i].put_nowait(work)
        except queue.Full:
            self.stats.dropped += 1
            return False
        return True

    def depth(self) -> int:
        """Segments waiting (approximate: what the queues report)."""
        total = 0
        for q in self._inboxes:
            try:
                total += q.qsize()
            except NotImplementedError:  # macOS
                return -1
        return total

    def _collect(self) -> None:
        while self._running:
            try:
                rep: Report = self._outbox.get(timeout=0.5)
            except queue.Empty:
                self._revive()
                continue
            except (EOFError, OSError):
                return
            st = self.stats
            st.analysed += 1
            st.failed += rep.error is not None
            st.keyframes += rep.keyframes
            st.frames += rep.frames
            st.busy_s += rep.busy_s
            try:
                self.on_report(rep)
            except Exception:
                log.exception("handling the analysis of %s failed", rep.device_id)

    def _revive(self) -> None:
        for i, p in enumerate(self._procs):
            if self._running and p is not None and not p.is_alive():
                log.error("analysis worker %d exited (code %s); restarting it", i, p.exitcode)
                self._inboxes[i] = self._ctx.Queue(self.cfg.queue_per_worker)
                self._procs[i] = self._spawn(i)
                self.stats.restarts += 1

    def stop(self, timeout: float = 10.0) -> None:
        if not self._running:
            return
        self._running = False
        for q in self._inboxes:
            with contextlib.suppress(queue.Full):
                q.put(None, timeout=1)
        for p in self._procs:
            if p is None:
                continue
            p.join(timeout)
            if p.is_alive():
                p.terminate()
                p.join(2)
        if self._collector is not None:
            self._collector.join(timeout)
        for q in (*self._inboxes, self._outbox):
            q.close()
            q.cancel_join_thread()
        # Let go of the queues now: their semaphores are unlinked when they are collected. Left to the
        # interpreter's exit, which a hub ended by its signal never reaches (uvicorn raises SIGTERM again
        # once it has shut down), they were reported leaked at every stop, and stayed in /dev/shm when
        # the resource tracker was killed too.
        self._inboxes, self._outbox = [], None
