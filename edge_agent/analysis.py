"""Frame analysis on the agent, when its config turns it on: the hub's checks, run beside the spool.

The same :class:`vms.analysis.pool.AnalysisPool` and checks the hub uses, fed with the agent's own
finished segments, so a site with a thin uplink or a busy hub can move the decoding to the edge.
What it finds travels in heartbeats: each analysed camera reports the defects raised now (with
their age, like packet ages, so a skewed agent clock cannot misdate them), and every uploaded
segment carries its motion ratio in a header when its analysis is done. The hub then analyses
nothing of those cameras itself.

A finished segment is hard-linked into ``<data_dir>/analysis/`` before it is queued, because the
uplink may send and delete the spool's copy before a worker opens it; the worker removes the link.
Like at the hub, a segment that finds its worker behind is dropped and counted, never waited for:
analysis must never slow ingest or upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from vms.analysis.config import AnalysisConfig
from vms.analysis.pool import AnalysisPool
from vms.analysis.sampler import Report, Work

from .spool import Segment

log = logging.getLogger(__name__)

_MOTION_KEEP = 4096  # motion ratios kept for segments not yet uploaded (about 4 h of one camera)


class AgentAnalysis:
    def __init__(self, cfg: AnalysisConfig, data_dir: Path) -> None:
        self.cfg = cfg
        self.dir = data_dir / "analysis"
        shutil.rmtree(self.dir, ignore_errors=True)  # links left by a crash: their segments are gone or queued
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pool = AnalysisPool(cfg, self._on_report)
        self._lock = threading.Lock()
        self._raised: dict[str, dict[str, float]] = {}  # device -> check -> raised at (monotonic)
        self._motion: OrderedDict[str, float | None] = OrderedDict()  # sha256 -> ratio
        self._pending: set[str] = set()  # sha256 of segments queued for analysis
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.link_errors = 0

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()

    # -- input: called from ingest threads after a segment enters the spool ----------------------
    def segment_added(self, seg: Segment) -> None:
        link = self.dir / seg.path.name
        try:
            os.link(seg.path, link)
        except OSError as exc:
            self.link_errors += 1
            log.warning("cannot stage %s for analysis: %s", seg.path.name, exc)
            return
        work = Work(seg.device_id, str(link), seg.start, seg.start + seg.duration, remove_after=True,
                    key=seg.sha256)
        with self._lock:
            self._pending.add(seg.sha256)
        if not self.pool.submit(work):
            link.unlink(missing_ok=True)
            self._done(seg.sha256, None)

    # -- output ------------------------------------------------------------------------------------
    def _on_report(self, rep: Report) -> None:
        """Pool collector thread: keep the device's raised checks and the segment's motion ratio."""
        if rep.error:
            log.warning("analysis of a %s segment: %s", rep.device_id, rep.error)
        now = time.monotonic()
        with self._lock:
            cur = self._raised.setdefault(rep.device_id, {})
            for ev in rep.events:
                if ev.raised:
                    log.warning("camera %s: %s raised (value %s)", rep.device_id, ev.check, ev.value)
                elif ev.check in cur:
                    log.info("camera %s: %s cleared", rep.device_id, ev.check)
            # The sampler's set of raised checks is the truth (a restarted worker starts afresh).
            self._raised[rep.device_id] = {c: cur.get(c, now) for c in rep.raised}
        if rep.key is not None:
            self._done(rep.key, rep.motion_ratio)

    def _done(self, sha256: str, ratio: float | None) -> None:
        with self._lock:
            self._pending.discard(sha256)
            self._motion[sha256] = ratio
            while len(self._motion) > _MOTION_KEEP:
                self._motion.popitem(last=False)
            waiters = self._waiters.pop(sha256, [])
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is stopping
                loop.call_soon_threadsafe(_settle, fut)

    def defects(self, device_id: str) -> dict[str, float]:
        """Checks raised now on ``device_id`` and their age in seconds (for the heartbeat)."""
        now = time.monotonic()
        with self._lock:
            return {c: round(max(0.0, now - t), 3) for c, t in self._raised.get(device_id, {}).items()}

    async def motion_for(self, sha256: str, wait_s: float) -> float | None:
        """The segment's motion ratio, waiting up to ``wait_s`` for its analysis to finish."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if sha256 in self._motion or sha256 not in self._pending:
                return self._motion.get(sha256)  # done, or never queued (e.g. spooled before a restart)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(sha256, []).append((loop, fut))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fut, wait_s)
        with self._lock:
            self._waiters.pop(sha256, None)
            return self._motion.get(sha256)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
