"""Where the hub keeps what the analysis found: defect bits, quality events, snapshots, motion.

Findings come from the hub's own pool or, for cameras whose agent analyses them
(``edge_agent/analysis.py``), from heartbeats and segment uploads; either way they are written in a
background thread (the pool's collector, or the book's own for agent reports), never on a request
path. For each raised defect the JPEG snapshot is written under ``<data_dir>/snapshots/<device>/``
and a ``quality_events`` row is committed *before* the device's defect bit is set, so the
``device_degraded`` alert the next tick opens can already link its snapshot. Each event keeps the
metric, the camera's normal and the threshold it crossed (``detail``), and so does the alert, so a
crew can judge the verdict.

Each camera's learned normal (see :mod:`vms.analysis.analyzer`) comes back with every analysed
segment and goes out with the camera's next one (``Work.normal``), so a restarted worker does not
learn it again; it is kept in ``<data_dir>/analysis-normal.json`` (written at most once a minute
and at stop, read at start), so a restarted hub does not either.

While a camera's sub stream is live, the analysis reads its sub-stream segments instead of the main
ones (:mod:`vms.analysis.substream`): each is hard-linked out of the live ring into
``<data_dir>/analysis-sub/`` (the worker removes the link; the directory is emptied at start), the
main segments are not decoded, and each main segment's motion ratio is the peak of the sub segments
that cover it, written once they are analysed. The sub stream has a normal of its own.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from vms.analysis import normals
from vms.analysis.config import CHECKS, AnalysisConfig
from vms.analysis.normals import Normal
from vms.analysis.pool import AnalysisPool
from vms.analysis.sampler import Event, Report, Work, first_keyframe_jpeg
from vms.analysis.substream import SubStreams, normal_key
from vms.archive.store import relative_path
from vms.db.models import QualityEvent, Segment
from vms.health import defect_bit

log = logging.getLogger(__name__)

NORMAL_FILE = "analysis-normal.json"
_NORMAL_SAVE_S = 60.0
#: A camera's learned normal as the analysis reports it: (metric, samples, level) per metric.

for _check in CHECKS:  # stable bit numbers, allocated once at import
    defect_bit(_check)


@dataclass
class Current:
    """A defect raised now on one device."""

    since: float
    value: float | None
    event_id: int | None
    snapshot: str | None  # relative to the data directory
    normal: float | None = None  # the camera's normal of the metric (None: judged by an absolute guard)
    threshold: float | None = None  # the limit the metric crossed


class QualityBook:
    def __init__(self, cfg: AnalysisConfig, data_dir: Path, sessions: sessionmaker[Session], recordings: Path,
                 set_quality: Callable[[str, str, bool], None], public_url: Callable[[], str],
                 read_only: bool = False) -> None:
        """``set_quality(device, check, raised)`` sets the device's defect bit in the health table."""
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.sessions = sessions
        self.recordings = recordings
        self.set_quality = set_quality
        self.public_url = public_url
        self.read_only = read_only
        self.lock = threading.Lock()
        self.current: dict[str, dict[str, Current]] = {}
        self.raised_total: dict[str, int] = dict.fromkeys(CHECKS, 0)
        self.cleared_total: dict[str, int] = dict.fromkeys(CHECKS, 0)
        self.pool = AnalysisPool(cfg, self.on_report) if cfg.enabled and not read_only else None
        self.agent_analysed: set[str] = set()  # devices whose agent runs the analysis itself
        self.agent_dropped = 0  # agent findings that did not fit the queue (re-sent by the next heartbeat)
        self._agent_q: queue.Queue[tuple[str, Event | tuple[int, float]] | None] = queue.Queue(10_000)
        self._agent_thread: threading.Thread | None = None
        self._agent_inflight: set[tuple[str, str, bool]] = set()  # queued, not yet applied: never queue twice
        self._normal_file = self.data_dir / NORMAL_FILE
        self.normals: dict[str, Normal] = {}  # device -> its normal as last reported; one small tuple each
        self._normals_saved = time.monotonic()
        self._normals_dirty = False
        self._save_lock = threading.Lock()  # the collector's periodic save and the one at stop share a file
        self.subs: SubStreams[int] = SubStreams(cfg.sub_stale_s)  # cameras analysed from their sub stream
        self._sub_dir = self.data_dir / "analysis-sub"
        self._subs_expired = 0.0
        self.sub_submitted = 0  # sub-stream segments handed to the analysis
        self.main_skipped = 0  # main-stream segments not judged: their camera's sub stream is analysed
        self.backlog_submitted = 0  # of those, backlog decoded for its motion alone
        self.sub_link_errors = 0

    def start(self) -> None:
        self._restore()
        if self.pool is not None:
            self.normals = self._load_normals()
            shutil.rmtree(self._sub_dir, ignore_errors=True)  # links left by a crash: their analysis is gone
            self._sub_dir.mkdir(parents=True, exist_ok=True)
            self.pool.start()
        if not self.read_only:
            self._agent_thread = threading.Thread(target=self._agent_loop, name="vms-agent-quality", daemon=True)
            self._agent_thread.start()

    def _restore(self) -> None:
        """The defects raised when the hub last stopped, from each (device, check)'s newest event.

        Without them a restarted hub would resolve every device_degraded alert at its first tick
        and open it again once the analysis had seen enough keyframes: two notifications per
        degraded camera per restart, for nothing. Analysers start from them too (``Work.raised``).
        """
        newest = (
            select(func.max(QualityEvent.id))
            .group_by(QualityEvent.device_id, QualityEvent.check)
            .scalar_subquery()
        )
        with self.sessions() as s:
            rows = list(s.scalars(select(QualityEvent).where(QualityEvent.id.in_(newest),
                                                              QualityEvent.state == "raised")))
        with self.lock:
            for r in rows:
                d = r.detail or {}
                self.current.setdefault(r.device_id, {})[r.check] = Current(
                    r.at, r.value, r.id, r.snapshot, _number(d.get("normal")), _number(d.get("threshold"))
                )
        for r in rows:
            self.set_quality(r.device_id, r.check, True)
        if rows:
            log.info("analysis: %d defect(s) still raised from before the restart", len(rows))

    # -- each camera's normal, across restarts -----------------------------------------------------
    def _load_normals(self) -> dict[str, Normal]:
        """The normals saved at the last stop; a file that cannot be read only means learning again."""
        out = normals.load(self._normal_file)
        if out:
            log.info("analysis: the normal of %d camera(s) kept from before the restart", len(out))
        return out

    def _keep_normal(self, device_id: str, reported: Normal) -> None:
        """Collector thread: the worker's newest normal of a camera; saved at most once a minute."""
        normal = normals.clean(reported)
        if not normal:
            return
        with self.lock:
            if self.normals.get(device_id) == normal:
                return
            self.normals[device_id] = normal
            self._normals_dirty = True
        if time.monotonic() - self._normals_saved >= _NORMAL_SAVE_S:
            self.save_normals()

    def save_normals(self) -> None:
        """Write the normals (temporary file, fsync, rename: a crash leaves the old file or the new one)."""
        with self._save_lock:
            with self.lock:
                if not self._normals_dirty:
                    return
                kept = dict(self.normals)
                self._normals_dirty = False
                self._normals_saved = time.monotonic()
            try:
                normals.save(self._normal_file, kept)
            except OSError as exc:
                with self.lock:
                    self._normals_dirty = True  # try again at the next report or at stop
                log.warning("cannot keep the cameras' normals in %s: %s", self._normal_file, exc)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()  # its collector has handed over its last report: nothing changes the normals now
            self.save_normals()
        if self._agent_thread is not None:
            self._agent_q.put(None)
            self._agent_thread.join(10)

    def segment_stored(
        self,
        device_id: str,
        start: float,
        duration: float,
        sha256: str,
        segment_id: int | None,
        motion_ratio: float | None = None,
    ) -> None:
        """Hand a stored segment to the analysis; returns at once (dropped and counted if behind).

        A camera its agent analyses is not decoded again here; the agent's motion ratio for the
        segment, if it sent one, is recorded instead. Nor is a camera whose sub stream is analysed:
        the segment's motion ratio comes from the sub segments that cover it, unless it is older than
        the sub stream's live stretch (backlog): then it is decoded for its motion alone.
        """
        if device_id in self.agent_analysed:
            if segment_id is not None and motion_ratio is not None:
                self._queue_agent(device_id, (segment_id, motion_ratio))
        elif self.pool is not None:
            now = time.monotonic()
            settled: list[tuple[int, float | None]] = []
            with self.lock:
                from_sub = self.cfg.for_device(device_id).sub_stream and self.subs.live(device_id, now)
                # Backlog is decoded for its motion alone: only with motion on and a row to write it into.
                backlog = (from_sub and segment_id is not None and self.cfg.for_device(device_id).motion.enabled
                           and self.subs.before_live(device_id, start + duration))
                if from_sub:
                    self.main_skipped += 1
                    self.backlog_submitted += backlog
                    if segment_id is not None and not backlog:
                        settled = self.subs.wait_motion(device_id, segment_id, start, start + duration, now)
                expired = self._expire(now)
            for dev, seg, ratio in expired:
                self._motion_settled(dev, [(seg, ratio)])
            if from_sub and not backlog:
                self._motion_settled(device_id, settled)
                return
            path = self.recordings / relative_path(device_id, start, sha256.lower())
            self._submit(Work(device_id, str(path), start, start + duration, segment_id, backlog=backlog))

    def sub_stored(self, device_id: str, start: float, duration: float, path: Path) -> None:
        """A sub-stream segment in the live ring: analysed instead of the camera's main segments while
        they keep coming (see :mod:`vms.analysis.substream`). Returns at once, like :meth:`segment_stored`."""
        if self.pool is None or device_id in self.agent_analysed or not self.cfg.for_device(device_id).sub_stream:
            return
        with self.lock:
            if self.subs.refused(device_id, time.monotonic()):
                return
        link = self._sub_dir / f"{device_id}-{path.name}"
        try:
            os.link(path, link)  # the ring deletes its file when it leaves the live window, maybe before the worker
        except OSError as exc:
            self.sub_link_errors += 1
            if self.sub_link_errors == 1 or self.sub_link_errors % 1000 == 0:  # one cause fails them all: say it once
                log.warning("cannot stage a sub-stream segment of %s for analysis (%d so far): %s", device_id,
                            self.sub_link_errors, exc)
            return
        with self.lock:
            self.subs.seen(device_id, time.monotonic(), start)
            self.sub_submitted += 1
        if not self._submit(Work(device_id, str(link), start, start + duration, remove_after=True, stream="sub")):
            link.unlink(missing_ok=True)

    def _submit(self, work: Work) -> bool:
        """Queue ``work`` with the checks raised now and its stream's normal: a new analyser starts from them."""
        assert self.pool is not None
        with self.lock:
            raised = tuple((c, cur.since) for c, cur in self.current.get(work.device_id, {}).items())
            normal = self.normals.get(normal_key(work.device_id, work.stream), ())
        return self.pool.submit(replace(work, raised=raised, normal=normal))

    def _motion_settled(self, device_id: str, settled: list[tuple[int, float | None]]) -> None:
        """Main segments whose motion the sub stream has told: written by the background thread."""
        for segment_id, ratio in settled:
            if ratio is not None:
                self._queue_agent(device_id, (segment_id, ratio))

    # -- findings of agents that analyse their cameras ---------------------------------------------
    def agent_report(self, device_id: str, defects: Mapping[str, float] | None, now: float) -> None:
        """Heartbeat path (cheap, no I/O): queue the defects that were raised or cleared since the last one.

        ``defects`` maps each raised check to its age on the agent; None means the agent does not
        analyse this camera (any more), so the hub's own analysis takes it (back).
        """
        if defects is None:
            if device_id in self.agent_analysed:
                with self.lock:
                    self.agent_analysed.discard(device_id)
            return
        with self.lock:
            self.agent_analysed.add(device_id)
            known = self.current.get(device_id, {})
            raised = {c: now - age for c, age in defects.items() if c in self.raised_total}
            changes = [Event(c, True, at, None) for c, at in raised.items() if c not in known]
            changes += [Event(c, False, now, None) for c in known if c not in raised]
            changes = [ev for ev in changes if (device_id, ev.check, ev.raised) not in self._agent_inflight]
            self._agent_inflight.update((device_id, ev.check, ev.raised) for ev in changes)
        for ev in changes:
            self._queue_agent(device_id, ev)

    def _queue_agent(self, device_id: str, item: Event | tuple[int, float]) -> None:
        try:
            self._agent_q.put_nowait((device_id, item))
        except queue.Full:
            self.agent_dropped += 1
            if isinstance(item, Event):
                with self.lock:
                    self._agent_inflight.discard((device_id, item.check, item.raised))

    def _agent_loop(self) -> None:
        while (got := self._agent_q.get()) is not None:
            device_id, item = got
            try:
                if isinstance(item, Event):
                    try:
                        if item.raised:
                            item = replace(item, snapshot=self._newest_snapshot(device_id))
                        self.apply(device_id, item)
                    finally:
                        with self.lock:
                            self._agent_inflight.discard((device_id, item.check, item.raised))
                else:
                    segment_id, ratio = item
                    with self.sessions() as s:
                        s.execute(update(Segment).where(Segment.id == segment_id).values(motion_ratio=ratio))
                        s.commit()
            except Exception:
                log.exception("recording the agent's analysis of %s failed", device_id)

    def _newest_snapshot(self, device_id: str) -> bytes | None:
        """A JPEG of the newest stored segment's first keyframe: what the agent flagged, as the hub has it."""
        with self.sessions() as s:
            rel = s.scalar(
                select(Segment.path)
                .where(Segment.device_id == device_id, Segment.deleting.is_(False))
                .order_by(Segment.start_at.desc())
                .limit(1)
            )
        if rel is None:
            return None
        return first_keyframe_jpeg(self.recordings / rel, self.cfg.snapshot_width)

    # -- reports from the pool ---------------------------------------------------------------------
    def on_report(self, rep: Report) -> None:
        if rep.backlog:  # old footage: its motion, nothing about the camera's state now
            if rep.error:
                log.warning("motion of %s backlog segment %s: %s", rep.device_id, rep.segment_id, rep.error)
            if rep.segment_id is not None:
                self._motion_settled(rep.device_id, [(rep.segment_id, rep.motion_ratio)])
            return
        if rep.narrow:  # nothing was judged: the camera goes back to its main stream for a while
            with self.lock:
                settled = self.subs.narrow(rep.device_id, time.monotonic())
            log.info("camera %s: its sub stream is narrower than the analysis picture; analysing its main stream",
                     rep.device_id)
            self._motion_settled(rep.device_id, settled)
            return
        if rep.error:
            log.warning("analysis of %s segment %s: %s", rep.device_id, rep.segment_id, rep.error)
        for ev in rep.events:
            self.apply(rep.device_id, ev)
        # A restarted worker forgets what it had raised: clear what it no longer reports.
        with self.lock:
            stale = [c for c in self.current.get(rep.device_id, {}) if c not in rep.raised]
        for check in stale:
            self.apply(rep.device_id, Event(check, False, rep.start, None), reason="analysis state was reset")
        if rep.normal:
            self._keep_normal(normal_key(rep.device_id, rep.stream), rep.normal)
        if rep.stream == "sub":
            self._sub_motion(rep)
        if rep.segment_id is not None and rep.motion_ratio is not None:
            with self.sessions() as s:
                s.execute(update(Segment).where(Segment.id == rep.segment_id).values(motion_ratio=rep.motion_ratio))
                s.commit()

    def _sub_motion(self, rep: Report) -> None:
        """Collector thread: a sub segment's motion goes to the main segments it covers; once a second,
        main segments of cameras whose sub stream stopped settle with what is known."""
        now = time.monotonic()
        end = rep.end if rep.end is not None else rep.start
        with self.lock:
            settled = self.subs.motion(rep.device_id, rep.start, end, rep.motion_ratio, now)
            expired = self._expire(now)
        self._motion_settled(rep.device_id, settled)
        for device_id, segment_id, ratio in expired:
            self._motion_settled(device_id, [(segment_id, ratio)])

    def _expire(self, now: float) -> list[tuple[str, int, float | None]]:
        """With the lock held: at most once a second, what cameras whose sub stream stopped left waiting."""
        if now - self._subs_expired < 1.0:
            return []
        self._subs_expired = now
        return self.subs.expire(now)

    def apply(self, device_id: str, ev: Event, reason: str = "") -> None:
        """Record one raised/cleared defect and set the device's defect bit.

        The event's ``detail`` keeps the camera's normal and the threshold next to the metric
        (``value``) whenever the check gave them (an agent's heartbeat gives neither).
        """
        with self.lock:
            known = self.current.setdefault(device_id, {})
            if ev.raised == (ev.check in known):
                return  # nothing changes (a repeated report)
        rel = self._write_snapshot(device_id, ev) if ev.raised and ev.snapshot else None
        normal, threshold = _finite(ev.normal), _finite(ev.threshold)
        detail: dict[str, Any] = {"reason": reason} if reason else {}
        if normal is not None or threshold is not None:
            detail.update(normal=normal, threshold=threshold)
        with self.sessions() as s:
            row = QualityEvent(
                device_id=device_id,
                check=ev.check,
                state="raised" if ev.raised else "cleared",
                at=ev.at,
                value=_finite(ev.value),
                snapshot=rel,
                detail=detail,
            )
            s.add(row)
            s.commit()
            event_id = row.id
        with self.lock:
            if ev.raised:
                known[ev.check] = Current(ev.at, _finite(ev.value), event_id, rel, normal, threshold)
                self.raised_total[ev.check] = self.raised_total.get(ev.check, 0) + 1
            else:
                known.pop(ev.check, None)
                self.cleared_total[ev.check] = self.cleared_total.get(ev.check, 0) + 1
        self.set_quality(device_id, ev.check, ev.raised)

    def _write_snapshot(self, device_id: str, ev: Event) -> str | None:
        rel = f"snapshots/{device_id}/{round(ev.at * 1_000_000)}-{ev.check}.jpg"
        path = self.data_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(ev.snapshot or b"")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot write snapshot %s: %s", rel, exc)
            return None
        return rel

    # -- views ---------------------------------------------------------------------------------------
    def now(self, device_id: str) -> dict[str, Current]:
        with self.lock:
            return dict(self.current.get(device_id, {}))

    def snapshot_url(self, device_id: str, event_id: int) -> str:
        return f"{self.public_url()}/api/v1/devices/{device_id}/quality/events/{event_id}/snapshot"

    def alert_detail(self, device_id: str) -> dict[str, Any]:
        """Snapshot link and figures of the defects raised now, for a ``device_degraded`` alert.

        ``quality`` maps each check to its metric; ``checks`` gives each the metric, the camera's
        normal and the threshold it crossed, so a crew can see how far from its normal the camera is.
        """
        cur = self.now(device_id)
        if not cur:
            return {}
        first = min(cur.items(), key=lambda kv: kv[1].since)
        out: dict[str, Any] = {
            "quality": {c: v.value for c, v in cur.items()},
            "checks": {c: {"value": v.value, "normal": v.normal, "threshold": v.threshold} for c, v in cur.items()},
        }
        if first[1].snapshot and first[1].event_id is not None:
            out["snapshot_url"] = self.snapshot_url(device_id, first[1].event_id)
        return out

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        g = GaugeMetricFamily(
            "vms_device_quality_defect", "1 while a quality check flags the device", labels=["device_id", "check"]
        )
        with self.lock:
            for dev, cur in self.current.items():
                for check in cur:
                    g.add_metric([dev, check], 1.0)
            raised, cleared = dict(self.raised_total), dict(self.cleared_total)
        yield g
        r = CounterMetricFamily("vms_quality_raised", "Quality defects raised", labels=["check"])
        c = CounterMetricFamily("vms_quality_cleared", "Quality defects cleared", labels=["check"])
        for check in CHECKS:
            r.add_metric([check], raised.get(check, 0))
            c.add_metric([check], cleared.get(check, 0))
        yield from (r, c)
        yield GaugeMetricFamily(
            "vms_analysis_agent_devices", "Devices whose agent runs the analysis", value=len(self.agent_analysed)
        )
        yield CounterMetricFamily(
            "vms_analysis_agent_findings_dropped",
            "Agent findings that found the hub's queue full (the next heartbeat repeats them)",
            value=self.agent_dropped,
        )
        if self.pool is not None:
            st = self.pool.stats
            for name, doc, value in (
                ("vms_analysis_segments_submitted", "Segments handed to the analysis", st.submitted),
                ("vms_analysis_segments_dropped", "Segments dropped because the analysis was behind", st.dropped),
                ("vms_analysis_segments_analysed", "Segments analysed", st.analysed),
                ("vms_analysis_segments_failed", "Segments that could not be decoded", st.failed),
                ("vms_analysis_keyframes", "Keyframes checked", st.keyframes),
                ("vms_analysis_busy_seconds", "Worker time spent decoding and analysing", st.busy_s),
                ("vms_analysis_worker_restarts", "Analysis workers restarted", st.restarts),
                ("vms_analysis_sub_segments", "Sub-stream segments handed to the analysis (cameras analysed from "
                 "their sub stream)", self.sub_submitted),
                ("vms_analysis_main_skipped", "Main-stream segments not judged: their camera's sub stream is "
                 "analysed", self.main_skipped),
                ("vms_analysis_backlog_segments", "Main-stream segments older than their camera's live sub stream, "
                 "decoded for their motion alone", self.backlog_submitted),
                ("vms_analysis_backlog_dropped", "Of those, dropped to keep half of a worker's queue for live "
                 "segments", st.backlog_dropped),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            depth = self.pool.depth()
            yield GaugeMetricFamily("vms_analysis_queue_depth", "Segments waiting for analysis", value=depth)


def _finite(v: float | None) -> float | None:
    return None if v is None or v != v or v in (float("inf"), float("-inf")) else float(v)


def _number(v: object) -> float | None:
    """A finite number read back from a JSON detail, else None."""
    return _finite(float(v)) if isinstance(v, int | float) and not isinstance(v, bool) else None


