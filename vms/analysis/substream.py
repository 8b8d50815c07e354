"""Which stream of a camera the analysis reads, and the motion its main segments get from the other.

A 1080p camera's keyframes are what bounds the analysis: on a textured view they carry most of the
bit rate and take tens of milliseconds each to decode, whatever the checks cost after. Its sub stream
(子码流: 640x360 or 704x576) shows the same picture, and the checks read a 320-pixel-wide luma picture
either way, so while a camera's sub stream is live the analysis takes the sub-stream segments and
never decodes the main ones (``bench/bench_analysis.py``, ``bench/eval_real.py --sub``). A camera
whose sub stream stops (no segment for ``sub_stale_s``) is analysed from its main stream again.

Motion then comes from the sub stream too; a main segment's motion ratio, kept with the recording,
is the peak of the sub segments that cover it. The main segment often arrives before the last of
those is analysed, so it waits here until a sub segment reaching its end is analysed, or until the
sub stream has been silent for ``sub_stale_s`` (then it takes what is known).

A main segment that ends before the sub stream's live stretch began (:meth:`SubStreams.before_live`:
backlog an agent uploads after the hub or its link was down; sub segments are live only and never
spooled) has no sub segment to take its motion from. It is decoded for its motion alone
(``Work.backlog``): no verdicts, since verdicts on old footage would raise and clear the camera's
alerts between the live sub stream's, and a motion state of its own, so the live one is untouched.

A sub stream narrower than the analysis picture (``analysis.width``, 320: a QCIF sub stream) would
give the checks a smaller picture than the main stream does, so the analysis never judges from it:
the worker reports it (``Report.narrow``) and the camera stays on its main stream for ``NARROW_S``
before its sub stream is looked at again.

Pure bookkeeping, used by the hub (``vms/services/quality.py``) and the edge agent alike; the
caller holds its own lock and passes its clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

Stream = Literal["main", "sub"]
K = TypeVar("K", bound=Hashable)

#: Sub segments remembered per camera for motion (about two minutes of one-GOP segments).
_KEEP = 64
#: Main segments waiting for their motion per camera; beyond it the oldest settle with what is known.
_WAITING = 32
#: How long a camera whose sub stream is too narrow stays on its main stream before it is tried again.
NARROW_S = 600.0
#: How far short of a main segment's end the covering sub segments may stop (the two streams' keyframes
#: are timed from arrival, apart by a few frames).
_SLACK_S = 0.5


@dataclass(slots=True)
class _Camera(Generic[K]):
    seen: float = float("-inf")  # clock of the newest sub segment offered to the analysis
    began: float = float("inf")  # start (media time) of the first sub segment of the live stretch
    narrow_until: float = float("-inf")  # its sub stream is narrower than the analysis picture until then
    motion: deque[tuple[float, float, float | None]] = field(default_factory=lambda: deque(maxlen=_KEEP))
    waiting: list[tuple[K, float, float, float]] = field(default_factory=list)  # key, start, end, since


class SubStreams(Generic[K]):
    """Per camera: is its sub stream live, and which main segments wait for its motion (by key ``K``)."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._cams: dict[str, _Camera[K]] = {}

    def seen(self, device_id: str, now: float, start: float) -> None:
        """A sub segment of the camera, starting at ``start``, was offered to the analysis."""
        cam = self._cams.get(device_id)
        if cam is None:
            cam = self._cams[device_id] = _Camera()
        if now - cam.seen > self.stale_s:  # a new live stretch
            cam.began = start
        cam.seen = now

    def before_live(self, device_id: str, end: float) -> bool:
        """A main segment ending at ``end`` is older than the sub stream's live stretch: no sub segment
        can give it its motion."""
        cam = self._cams.get(device_id)
        return cam is not None and end <= cam.began + _SLACK_S

    def live(self, device_id: str, now: float) -> bool:
        """The camera's sub stream is what the analysis reads now."""
        cam = self._cams.get(device_id)
        return cam is not None and now - cam.seen <= self.stale_s and now >= cam.narrow_until

    def refused(self, device_id: str, now: float) -> bool:
        """The camera's sub stream was found too narrow lately: its segments are not worth analysing."""
        cam = self._cams.get(device_id)
        return cam is not None and now < cam.narrow_until

    def narrow(self, device_id: str, now: float) -> list[tuple[K, float | None]]:
        """The worker found the camera's sub stream narrower than the analysis picture: back to the main
        stream. Returns the main segments that waited for its motion (settled with what is known)."""
        cam = self._cams.get(device_id)
        if cam is None:
            cam = self._cams[device_id] = _Camera()
        cam.narrow_until = now + NARROW_S
        out = [(k, self._peak(cam, s, e)) for k, s, e, _ in cam.waiting]
        cam.waiting = []
        return out

    def wait_motion(self, device_id: str, key: K, start: float, end: float, now: float) -> list[tuple[K, float | None]]:
        """A main segment not analysed itself: settled at once if its sub segments are analysed already.

        Returns the main segments settled now, with their motion ratio (None: no sub segment covered them).
        """
        cam = self._cams.get(device_id)
        if cam is None:
            return [(key, None)]
        cam.waiting.append((key, start, end, now))
        return self._settle(cam, now)

    def motion(
        self, device_id: str, start: float, end: float, ratio: float | None, now: float
    ) -> list[tuple[K, float | None]]:
        """A sub segment analysed: the main segments it completes (or that waited too long), with their motion."""
        cam = self._cams.get(device_id)
        if cam is None:
            return []
        cam.motion.append((start, end, ratio))
        return self._settle(cam, now)

    def expire(self, now: float) -> list[tuple[str, K, float | None]]:
        """Main segments of cameras whose sub stream went silent, settled with what is known; forgets those cameras."""
        out: list[tuple[str, K, float | None]] = []
        for device_id, cam in list(self._cams.items()):
            if now - cam.seen > self.stale_s and now >= cam.narrow_until:
                out += [(device_id, k, self._peak(cam, s, e)) for k, s, e, _ in cam.waiting]
                del self._cams[device_id]
        return out

    def _settle(self, cam: _Camera[K], now: float) -> list[tuple[K, float | None]]:
        reached = max((e for _, e, _ in cam.motion), default=float("-inf"))
        keep: list[tuple[K, float, float, float]] = []
        out: list[tuple[K, float | None]] = []
        for item in cam.waiting:
            key, start, end, since = item
            if reached >= end - _SLACK_S or now - since > self.stale_s:
                out.append((key, self._peak(cam, start, end)))
            else:
                keep.append(item)
        while len(keep) > _WAITING:
            key, start, end, _ = keep.pop(0)
            out.append((key, self._peak(cam, start, end)))
        cam.waiting = keep
        return out

    @staticmethod
    def _peak(cam: _Camera[K], start: float, end: float) -> float | None:
        ratios = [r for s, e, r in cam.motion if r is not None and s < end and e > start]
        return max(ratios) if ratios else None


def normal_key(device_id: str, stream: Stream) -> str:
    """Where a camera's learned normal is kept: each stream has its own (grain, bytes per frame and
    sharpness differ between a 1080p stream and its 640x360 sub stream)."""
    return device_id if stream == "main" else f"{device_id}@sub"
