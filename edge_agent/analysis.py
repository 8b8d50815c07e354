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

The checks raised now are kept in ``<data_dir>/analysis-raised.json`` (written when they change):
a restarted agent reports them again at once and its new analysers start from them, so a restart
neither clears the hub's defects (resolving their alerts) nor raises them again seconds later.
Each camera's learned normal (see :mod:`vms.analysis.analyzer`) comes back in every report and is kept
in ``<data_dir>/analysis-normal.json`` (written at most once a minute and at stop), so a restarted
agent judges its cameras against what they showed before instead of learning them again.

A camera whose sub stream is live (its segments keep entering the live-only spool) is analysed from
it, as at the hub (:mod:`vms.analysis.substream`): its main segments are not decoded, and each one's
motion ratio, sent with its upload, is the peak of the sub segments that cover it (the upload waits
for it as it waited for a main segment's analysis). Sub segments are analysed while the hub is away
too, as main ones were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from vms.analysis import normals
from vms.analysis.config import CHECKS, AnalysisConfig
from vms.analysis.normals import Normal
from vms.analysis.pool import AnalysisPool
from vms.analysis.sampler import Report, Work
from vms.analysis.substream import Stream, SubStreams, normal_key

from .spool import Segment

log = logging.getLogger(__name__)

_MOTION_KEEP = 4096  # motion ratios kept for segments not yet uploaded (about 4 h of one camera)
STATE_FILE = "analysis-raised.json"
NORMAL_FILE = "analysis-normal.json"
_NORMAL_SAVE_S = 60.0


class AgentAnalysis:
    def __init__(self, cfg: AnalysisConfig, data_dir: Path) -> None:
        self.cfg = cfg
        self.dir = data_dir / "analysis"
        shutil.rmtree(self.dir, ignore_errors=True)  # links left by a crash: their segments are gone or queued
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pool = AnalysisPool(cfg, self._on_report)
        self._lock = threading.Lock()
        self._state = data_dir / STATE_FILE
        self._raised: dict[str, dict[str, float]] = self._load()  # device -> check -> raised at (monotonic)
        self._normal_file = data_dir / NORMAL_FILE
        self._normals: dict[str, Normal] = normals.load(self._normal_file)  # device -> its learned normal
        self._normals_saved = time.monotonic()
        self._motion: OrderedDict[str, float | None] = OrderedDict()  # sha256 -> ratio
        self._pending: set[str] = set()  # sha256 of segments queued for analysis
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.link_errors = 0
        self.subs: SubStreams[str] = SubStreams(cfg.sub_stale_s)  # cameras analysed from their sub stream
        self._subs_expired = 0.0
        self.main_skipped = 0  # main segments not decoded: their camera's sub stream is analysed

    def start(self) -> None:
        self.pool.start()

    # -- what is raised, across restarts -----------------------------------------------------------
    def _load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self._state.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s (defects raised before the restart are raised again)", self._state, exc)
            return {}
        wall, mono = time.time(), time.monotonic()
        out: dict[str, dict[str, float]] = {}
        for device_id, checks in (data.items() if isinstance(data, dict) else ()):
            if isinstance(checks, dict):
                out[device_id] = {c: mono - max(0.0, wall - float(t)) for c, t in checks.items()
                                  if c in CHECKS and isinstance(t, int | float)}
        return out

    def _save(self) -> None:
        """Called with the lock held, when a device's raised checks changed (rare)."""
        wall, mono = time.time(), time.monotonic()
        data = {d: {c: round(wall - (mono - t), 3) for c, t in checks.items()}
                for d, checks in self._raised.items() if checks}
        tmp = self._state.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._state)
        except OSError as exc:
            log.warning("cannot keep the raised checks in %s: %s", self._state, exc)

    def _save_normals(self) -> None:
        """Called with the lock held: at most once a minute, and at stop."""
        self._normals_saved = time.monotonic()
        try:
            normals.save(self._normal_file, self._normals)
        except OSError as exc:
            log.warning("cannot keep the cameras' normals in %s: %s", self._normal_file, exc)

    def stop(self) -> None:
        self.pool.stop()
        with self._lock:
            self._save_normals()

    # -- input: called from ingest threads after a segment enters the spool ----------------------
    def segment_added(self, seg: Segment) -> None:
        """A main-stream segment entered the spool: analysed, unless the camera's sub stream is."""
        now = time.monotonic()
        with self._lock:
            self._pending.add(seg.sha256)
            from_sub = self.cfg.for_device(seg.device_id).sub_stream and self.subs.live(seg.device_id, now)
            settled = []
            if from_sub:
                self.main_skipped += 1
                settled = self.subs.wait_motion(seg.device_id, seg.sha256, seg.start, seg.start + seg.duration, now)
            expired = self._expire(now)
        for sha256, ratio in settled + [(k, r) for _, k, r in expired]:
            self._done(sha256, ratio)
        if not from_sub and not self._stage(seg, "main"):
            self._done(seg.sha256, None)

    def sub_segment_added(self, seg: Segment) -> None:
        """A sub-stream segment entered the live-only spool: analysed instead of the camera's main segments."""
        if not self.cfg.for_device(seg.device_id).sub_stream:
            return
        with self._lock:
            if self.subs.refused(seg.device_id, time.monotonic()):
                return
            self.subs.seen(seg.device_id, time.monotonic(), seg.start)
        self._stage(seg, "sub")

    def _stage(self, seg: Segment, stream: Stream) -> bool:
        """Link ``seg`` for a worker and queue it; False if it could not be (dropped, counted)."""
        link = self.dir / seg.path.name
        try:
            os.link(seg.path, link)
        except OSError as exc:
            self.link_errors += 1
            log.warning("cannot stage %s for analysis: %s", seg.path.name, exc)
            return False
        with self._lock:
            raised = tuple((c, seg.start) for c in self._raised.get(seg.device_id, {}))
            normal = self._normals.get(normal_key(seg.device_id, stream), ())
        work = Work(seg.device_id, str(link), seg.start, seg.start + seg.duration, remove_after=True,
                    key=seg.sha256 if stream == "main" else None, raised=raised, normal=normal, stream=stream)
        if not self.pool.submit(work):
            link.unlink(missing_ok=True)
            return False
        return True

    def _expire(self, now: float) -> list[tuple[str, str, float | None]]:
        """With the lock held: at most once a second, what cameras whose sub stream stopped left waiting."""
        if now - self._subs_expired < 1.0:
            return []
        self._subs_expired = now
        return self.subs.expire(now)

    # -- output ------------------------------------------------------------------------------------
    def _on_report(self, rep: Report) -> None:
        """Pool collector thread: keep the device's raised checks and the segment's motion ratio."""
        if rep.narrow:  # nothing was judged: the camera goes back to its main stream for a while
            with self._lock:
                back = self.subs.narrow(rep.device_id, time.monotonic())
            log.info("camera %s: its sub stream is narrower than the analysis picture; analysing its main stream",
                     rep.device_id)
            for sha256, ratio in back:
                self._done(sha256, ratio)
            return
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
            # The sampler's set of raised checks is the truth (a new analyser starts from ours).
            self._raised[rep.device_id] = {c: cur.get(c, now) for c in rep.raised}
            if self._raised[rep.device_id].keys() != cur.keys():
                self._save()
            if rep.normal:
                self._normals[normal_key(rep.device_id, rep.stream)] = rep.normal
                if now - self._normals_saved >= _NORMAL_SAVE_S:
                    self._save_normals()
            settled: list[tuple[str, float | None]] = []
            if rep.stream == "sub":
                end = rep.end if rep.end is not None else rep.start
                settled = self.subs.motion(rep.device_id, rep.start, end, rep.motion_ratio, now)
                settled += [(k, r) for _, k, r in self._expire(now)]
        if rep.key is not None:
            self._done(rep.key, rep.motion_ratio)
        for sha256, ratio in settled:
            self._done(sha256, ratio)

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
