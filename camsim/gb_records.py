"""What a simulated GB/T 28181 channel has recorded (an NVR's disk, an IPC's SD card). Pure, no I/O.

A channel records from a start time on, except while recording is stopped; what it recorded is a
list of wall-clock intervals in whole seconds (as recorders stamp their files). Asked for a range, it
lists files (``RecordInfo`` items) and the parts a playback sends. Files are cut on the minute, as
NVRs write them, so the hub sees a list of short files as it does in the field, not one item per
asked range; the file being written ends at the next whole second, so a recording a moment old is
listed too.
"""

from __future__ import annotations

import math
import threading

from vms.gb28181.manscdp import local_time as local_time  # re-exported: the simulator's callers use it here
from vms.gb28181.manscdp import parse_local_time

#: Length of one recorded file; files start on multiples of it (wall clock).
RECORD_FILE_S = 60

def parse_local(text: str) -> float:
    """A time as the standard writes it (local time unless it names a zone) in Unix seconds; ValueError."""
    t = parse_local_time(text)
    if t is None:
        raise ValueError(f"not a time: {text[:40]!r}")
    return t


class Recording:
    """One channel's recorded intervals; thread-safe (faults and queries come from different threads)."""

    def __init__(self, since: float | None) -> None:
        """``since``: when recording began; None for a channel without storage (never records)."""
        self._lock = threading.Lock()
        self._intervals: list[tuple[float, float]] = [] if since is None else [(math.floor(since), math.inf)]
        self.capable = since is not None

    @property
    def recording(self) -> bool:
        with self._lock:
            return bool(self._intervals) and self._intervals[-1][1] == math.inf

    def stop(self, at: float) -> None:
        """Recording stops at ``at``, its last file closed on the second after (nothing if it is not recording)."""
        with self._lock:
            if self._intervals and self._intervals[-1][1] == math.inf:
                first = self._intervals[-1][0]
                self._intervals[-1] = (first, max(math.ceil(at), first + 1))

    def resume(self, at: float) -> None:
        """Recording goes on from ``at`` (nothing if it is recording, or the channel cannot record); within the
        second it stopped, the last interval simply goes on."""
        with self._lock:
            if not self.capable or self._intervals[-1][1] == math.inf:
                return
            first = math.floor(at)
            if first <= self._intervals[-1][1]:
                self._intervals[-1] = (self._intervals[-1][0], math.inf)
            else:
                self._intervals.append((first, math.inf))

    def spans(self, start: float, end: float, now: float) -> list[tuple[float, float]]:
        """The recorded parts of ``[start, end)`` (up to ``now``: the future is not recorded yet)."""
        end = min(end, now)
        with self._lock:
            cut = [(max(a, start), min(b, end)) for a, b in self._intervals]
        return [(a, b) for a, b in cut if b > a]

    def files(self, start: float, end: float, now: float) -> list[tuple[int, int]]:
        """The recorded files overlapping ``[start, end)`` clipped to it (to whole seconds), each at most
        :data:`RECORD_FILE_S` long."""
        out: list[tuple[int, int]] = []
        for a, b in self.spans(start, end, now):
            first, last = math.floor(a), math.ceil(b)
            while first < last:
                cut = min(last, (first // RECORD_FILE_S + 1) * RECORD_FILE_S)
                out.append((first, cut))
                first = cut
        return out
