"""Segment ingest: a relayed segment into the archive, and what follows from it.

A stored main-stream segment makes its device count as uploading, wakes live viewers and is
offered to the analysis; a sub-stream segment feeds live view and is offered to the analysis too
(never indexed or recorded): while a camera's sub stream is live the analysis reads it instead of
the main stream, whose keyframes cost several times more to decode (``vms/analysis/substream.py``).

A segment that would start further in the future than the clock-skew bound (after the skew
correction) is refused (``bad_range``): it would become a camera's "newest" segment, freeze its
live view and escape retention. Each agent has a bounded number of uploads in progress at once
(``archive.max_uploads_per_agent``); the API answers the rest "busy, retry".

The upload route's blocking steps (claim, temporary file, writes, the durable store) run in the
ingest's own threads (:meth:`SegmentIngest.run`, ``archive.ingest_threads``), not in the event loop's
default pool, so clip downloads or anything else there can never delay a segment upload.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from vms.archive.store import Adopted, Incoming, Outcome, Result, SegmentStore
from vms.live import LiveRelay
from vms.media.segment import Segment

P = ParamSpec("P")
T = TypeVar("T")


class SegmentIngest:
    def __init__(
        self,
        segments: SegmentStore,
        live: LiveRelay,
        observe_upload: Callable[[str, float], None],
        analyse: Callable[[str, float, float, str, int | None, float | None], None],
        clock: Callable[[], float],
        max_clock_skew_s: float,
        analyse_sub: Callable[[str, float, float, Path], None] | None = None,
    ) -> None:
        """``observe_upload(device, content_end)`` tells health; ``analyse(device, start, duration,
        sha256, segment_id, motion_ratio)`` offers the segment to the analysis, ``analyse_sub(device,
        start, duration, path)`` a sub-stream segment kept at ``path`` in the live ring."""
        self.segments = segments
        self.live = live
        self.observe_upload = observe_upload
        self.analyse = analyse
        self.analyse_sub = analyse_sub
        self.clock = clock
        self.max_skew = max_clock_skew_s
        self._uploads: dict[str, int] = {}
        self._uploads_lock = threading.Lock()
        self.busy_total = 0
        self._pool = ThreadPoolExecutor(segments.cfg.ingest_threads, thread_name_prefix="vms-ingest")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` in the ingest's own threads (see the module doc)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Uploads being stored finish first."""
        self._pool.shutdown(wait=True)

    @contextmanager
    def upload_slot(self, agent: str) -> Iterator[bool]:
        """One of the agent's ``archive.max_uploads_per_agent`` upload slots: True while held, False if
        all are taken (nothing held then). Never blocks."""
        limit = self.segments.cfg.max_uploads_per_agent
        with self._uploads_lock:
            n = self._uploads.get(agent, 0)
            ok = n < limit
            if ok:
                self._uploads[agent] = n + 1
            else:
                self.busy_total += 1
        try:
            yield ok
        finally:
            if ok:
                with self._uploads_lock:
                    left = self._uploads[agent] - 1
                    if left:
                        self._uploads[agent] = left
                    else:
                        del self._uploads[agent]

    def receive(self) -> Incoming:
        """A temporary file of its own for one upload's body, on the archive's disk (blocking)."""
        return self.segments.receive()

    def store(self, agent: str, device_id: str, start: float, duration: float, data: bytes, sha256: str,
              sent_at: float | None, motion_ratio: float | None = None) -> Outcome:
        """Store a relayed segment held in memory; see :meth:`store_file`."""
        body: Incoming | None = None
        try:
            body = self.segments.receive()
            body.write(data)
        except OSError as exc:
            if body is not None:
                body.discard()
            return Outcome.write_failed(exc)
        return self.store_file(agent, device_id, start, duration, body, sha256, sent_at, motion_ratio)

    def store_file(self, agent: str, device_id: str, start: float, duration: float, body: Incoming, sha256: str,
                   sent_at: float | None, motion_ratio: float | None = None) -> Outcome:
        """Store a relayed segment received into ``body`` (moved into the archive or removed);
        ``motion_ratio`` comes from an agent that analyses the camera itself.

        The skew correction may move a retry's start by a slightly different amount than the first
        try's, so a retry is known by its device, content (sha256) and start as the agent sent it.
        """
        now = self.clock()
        agent_start = start
        start = self.hub_time(start, sent_at, now)
        if (refused := self.too_new(device_id, start, duration, now)) is not None:
            body.discard()
            return refused
        outcome = self.segments.ingest_file(device_id, start, duration, body, sha256, agent, now,
                                            agent_start=agent_start)
        if outcome.result is Result.STORED:
            self.observe_upload(device_id, start + duration)
            self.live.segment_stored(device_id)
            self.analyse(device_id, start, duration, sha256, outcome.segment_id, motion_ratio)
        return outcome

    def store_own(self, source: str, seg: Segment) -> Outcome:
        """A segment the hub cut itself from media it received (GB/T 28181), on the archive's disk:
        stored as a relayed one is, its file moved into place; on any other outcome the file stays
        where it is for the caller to retry or set aside. Its start is hub time already."""
        body = Adopted(seg.path, seg.sha256, seg.size)
        return self.store_file(source, seg.device_id, seg.start, seg.duration, body, seg.sha256, None)

    def store_sub(self, device_id: str, start: float, duration: float, data: bytes, sha256: str,
                  sent_at: float | None) -> Outcome:
        """A sub-stream segment: live view and the analysis; not indexed or recorded, and no health signal."""
        now = self.clock()
        start = self.hub_time(start, sent_at, now)
        if (refused := self.too_new(device_id, start, duration, now)) is not None:
            return refused
        outcome = self.live.store_sub(device_id, start, duration, data, sha256)
        if outcome.result is Result.STORED and outcome.segment_id is not None and self.analyse_sub is not None:
            self.analyse_sub(device_id, start, duration, self.live.ring.path(device_id, outcome.segment_id))
        return outcome

    def hub_time(self, start: float, sent_at: float | None, now: float) -> float:
        """A segment's start on the hub's time line: moved by the skew when the agent's clock is off."""
        if sent_at is not None and abs(now - sent_at) > self.max_skew:
            return start + now - sent_at
        return start

    def too_new(self, device_id: str, start: float, duration: float, now: float) -> Outcome | None:
        """``bad_range`` for a segment ending beyond the skew bound from now (hub time), else None."""
        ahead = start + duration - now
        if ahead > self.max_skew:
            return Outcome(
                Result.BAD_RANGE,
                f"segment of {device_id} ends {ahead:.1f} s in the future (hub clock), beyond the "
                f"{self.max_skew:g} s clock-skew bound (health.max_clock_skew_s): check the agent's clock",
            )
        return None
