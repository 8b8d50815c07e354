"""Segment ingest: a relayed segment into the archive, and what follows from it.

A stored main-stream segment makes its device count as uploading, wakes live viewers and is
offered to the analysis; a sub-stream segment only feeds live view (never indexed or analysed).
"""

from __future__ import annotations

from collections.abc import Callable

from vms.archive.store import Outcome, Result, SegmentStore
from vms.live import LiveRelay


class SegmentIngest:
    def __init__(
        self,
        segments: SegmentStore,
        live: LiveRelay,
        observe_upload: Callable[[str, float], None],
        analyse: Callable[[str, float, float, str, int | None, float | None], None],
        clock: Callable[[], float],
        max_clock_skew_s: float,
    ) -> None:
        """``observe_upload(device, content_end)`` tells health; ``analyse(device, start, duration,
        sha256, segment_id, motion_ratio)`` offers the segment to the analysis."""
        self.segments = segments
        self.live = live
        self.observe_upload = observe_upload
        self.analyse = analyse
        self.clock = clock
        self.max_skew = max_clock_skew_s

    def store(self, agent: str, device_id: str, start: float, duration: float, data: bytes, sha256: str,
              sent_at: float | None, motion_ratio: float | None = None) -> Outcome:
        """Store a relayed segment; ``motion_ratio`` comes from an agent that analyses the camera itself."""
        now = self.clock()
        start = self.hub_time(start, sent_at, now)
        outcome = self.segments.ingest(device_id, start, duration, data, sha256, agent, now)
        if outcome.result is Result.STORED:
            self.observe_upload(device_id, start + duration)
            self.live.segment_stored(device_id)
            self.analyse(device_id, start, duration, sha256, outcome.segment_id, motion_ratio)
        return outcome

    def store_sub(self, device_id: str, start: float, duration: float, data: bytes, sha256: str,
                  sent_at: float | None) -> Outcome:
        """A sub-stream segment: live view only; not indexed, recorded or analysed, and no health signal."""
        return self.live.store_sub(device_id, self.hub_time(start, sent_at, self.clock()), duration, data, sha256)

    def hub_time(self, start: float, sent_at: float | None, now: float) -> float:
        """A segment's start on the hub's time line: moved by the skew when the agent's clock is off."""
        if sent_at is not None and abs(now - sent_at) > self.max_skew:
            return start + now - sent_at
        return start
