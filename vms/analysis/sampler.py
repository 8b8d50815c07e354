"""Decode and sample recorded segments: keyframes for quality, a reduced frame rate for motion.

Decode economy, the point of this module:
- quality checks read keyframes only: non-key packets are not even sent to the decoder and
  ``skip_frame = "NONKEY"`` guards the rest (1080p25 GOP 2 s: ~61 keyframes/s per core instead
  of ~310 frames/s for a full decode, i.e. ~120 cameras instead of ~12);
- a segment is opened with its probe told not to decode (:data:`PROBE`): the probe that fills in the
  stream's parameters would otherwise decode its first keyframe once more (and up to seven frames of
  an H.264 stream that does not state its reordering, as Baseline sub streams often do), which on a
  textured 1080p camera is half the cost of the segment (``bench/bench_analysis.py``);
- a camera with a live sub stream is analysed from it instead (``Work.stream``, see
  :mod:`vms.analysis.substream`): its keyframes decode several times faster than the main's;
- motion needs consecutive frames, so it fully decodes only main streams no taller than
  ``motion.max_height`` (and sub streams with ``motion.decode_sub``), with ``skip_frame = "NONREF"``
  dropping non-reference frames, and analyses ``motion.fps`` of them a second; other streams get
  a coarse motion figure from their keyframes;
- pictures are the decoder's Y plane as a numpy view, scaled once with ``INTER_LINEAR``; no colour
  conversion except for the JPEG snapshot of a raised defect;
- the bytes of the inter frames that follow a keyframe are counted from the demuxed packets, never
  decoded: what the encoder spends between keyframes tells a live quiet scene (its grain costs
  bytes) from a frozen one (a held picture costs almost nothing). So a keyframe is judged once its
  GOP has been read: at the next keyframe or at the end of the segment.

Nothing here knows about the hub: an edge agent can run :class:`SegmentSampler` on its own spool.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
import numpy.typing as npt

from vms.analysis.analyzer import DeviceAnalyzer, Picture
from vms.analysis.checks import analysis_picture, inter_level
from vms.analysis.config import AnalysisConfig
from vms.analysis.substream import Stream

log = logging.getLogger(__name__)
U8 = npt.NDArray[np.uint8]
_PLANAR_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"})


#: Options of ``av.open``: the stream probe reads the parameters from the headers and decodes nothing.
#: Only the probe's own decoder takes them; the stream's codec context is opened afresh.
PROBE = {"skip_frame": "all"}


def plane_view(frame: av.VideoFrame, index: int) -> U8:
    """Plane ``index`` of a planar 8-bit frame as a numpy view (no copy, row stride kept)."""
    p = frame.planes[index]
    buf = np.frombuffer(memoryview(p), np.uint8, count=p.line_size * p.height)
    return buf.reshape(p.height, p.line_size)[:, : p.width]


def _planar(frame: av.VideoFrame) -> av.VideoFrame:
    return frame if frame.format.name in _PLANAR_8BIT else frame.reformat(format="yuv420p")


def chroma_means(frame: av.VideoFrame) -> tuple[float, float]:
    if len(frame.planes) < 3:
        return 128.0, 128.0
    return float(cv2.mean(plane_view(frame, 1))[0]), float(cv2.mean(plane_view(frame, 2))[0])


def snapshot_jpeg(frame: av.VideoFrame, width: int, quality: int = 80) -> bytes:
    """A colour JPEG of ``frame`` at most ``width`` wide (only made when a defect is raised)."""
    w = min(width, frame.width)
    h = max(2, round(frame.height * w / frame.width) // 2 * 2)
    bgr = frame.reformat(width=w, height=h, format="bgr24").to_ndarray()
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return bytes(buf) if ok else b""


def first_keyframe_jpeg(path: str | os.PathLike[str], width: int) -> bytes | None:
    """A JPEG of the first keyframe in a segment file (None if it has none or cannot be read)."""
    try:
        with av.open(os.fspath(path), options=PROBE) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = "NONKEY"
            for frame in container.decode(stream):
                return snapshot_jpeg(frame, width) or None
    except (av.FFmpegError, OSError) as exc:
        log.warning("cannot make a snapshot of %s: %s", path, exc)
    return None


@dataclass(frozen=True, slots=True)
class Work:
    """A stored segment to analyse."""

    device_id: str
    path: str
    start: float
    end: float
    segment_id: int | None = None
    key: str | None = None  # the caller's name for the segment, returned in the report
    remove_after: bool = False  # ``path`` is a staged copy the worker deletes when done
    #: The checks its owner holds raised for the camera, with since when: an analyser made anew (a
    #: restarted hub or worker) starts from them instead of clearing and raising them again.
    raised: tuple[tuple[str, float], ...] = ()
    #: The camera's learned normal of this stream as last reported (``Report.normal``): a new analyser starts from it.
    normal: tuple[tuple[str, int, float], ...] = ()
    #: ``sub``: the camera's sub stream, analysed instead of its main one while live.
    stream: Stream = "main"
    #: Footage older than the live stream being analysed (see :mod:`vms.analysis.substream`): its
    #: motion only, with a motion state of its own; no verdicts, and the camera's state is untouched.
    backlog: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """A check raised or cleared: the metric, the camera's normal and the limit it crossed, and a snapshot."""

    check: str
    raised: bool
    at: float
    value: float | None
    snapshot: bytes | None = None
    normal: float | None = None
    threshold: float | None = None


@dataclass(slots=True)
class Report:
    """What one segment showed; sent back to whoever runs the pool."""

    device_id: str
    segment_id: int | None
    start: float
    key: str | None = None
    events: list[Event] = field(default_factory=list)
    raised: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    #: The camera's normal after this segment (metric, samples, level): the owner keeps it for ``Work.normal``.
    normal: tuple[tuple[str, int, float], ...] = ()
    motion_ratio: float | None = None
    keyframes: int = 0
    frames: int = 0
    error: str | None = None
    busy_s: float = 0.0
    end: float | None = None
    stream: Stream = "main"
    #: A sub stream narrower than the analysis picture: not judged; its camera belongs on its main stream.
    narrow: bool = False
    #: ``Work.backlog``: only ``motion_ratio`` says anything (no events, nothing raised, no normal).
    backlog: bool = False


class SegmentSampler:
    """Analyses segments of many cameras, keeping each camera's state between its segments."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        self.devices: dict[str, DeviceAnalyzer] = {}
        self.backlog: dict[str, DeviceAnalyzer] = {}  # per camera, the motion state of its backlog footage

    def analyser(
        self,
        device_id: str,
        raised: tuple[tuple[str, float], ...] = (),
        normal: tuple[tuple[str, int, float], ...] = (),
        stream: Stream = "main",
    ) -> DeviceAnalyzer:
        """The camera's analyser; made anew when the stream it reads changes, since its pictures, learned
        view and normal belong to one stream; it starts from the checks its owner holds raised."""
        an = self.devices.get(device_id)
        if an is None or an.stream != stream:
            an = self.devices[device_id] = DeviceAnalyzer(self.cfg.for_device(device_id), stream=stream)
            an.resume(dict(raised), {m: (n, v) for m, n, v in normal})
        return an

    def analyse(self, work: Work) -> Report:
        t0 = time.perf_counter()
        rep = Report(work.device_id, work.segment_id, work.start, work.key, end=work.end, stream=work.stream,
                     backlog=work.backlog)
        an: DeviceAnalyzer | None = None
        try:
            with av.open(work.path, options=PROBE) as container:
                if not container.streams.video:
                    raise ValueError("segment has no video stream")
                stream = container.streams.video[0]
                if work.stream == "sub" and 0 < (stream.codec_context.width or 0) < self.cfg.width:
                    rep.narrow = True  # its pictures would be smaller than the main's: the camera's state stays
                    rep.busy_s = time.perf_counter() - t0
                    return rep
                an = self._backlog_analyser(work.device_id) if work.backlog else self.analyser(
                    work.device_id, work.raised, work.normal, work.stream)
                self._decode(container, stream, work, an, rep, judge=not work.backlog)
        except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
            rep.error = f"{type(exc).__name__}: {exc}"
        if work.backlog:  # its motion ratio alone: nothing judged, nothing of the camera's state reported
            rep.busy_s = time.perf_counter() - t0
            return rep
        if an is None:
            an = self.analyser(work.device_id, work.raised, work.normal, work.stream)
        if rep.keyframes == 0:
            rep.events.extend(
                Event(c.check, c.raised, c.at, c.value, None, c.normal, c.threshold) for c in an.feed(None, work.start)
            )
        rep.raised = an.raised
        rep.values = dict(an.values)
        rep.normal = tuple((m, n, v) for m, (n, v) in an.normal.state().items())
        rep.busy_s = time.perf_counter() - t0
        return rep

    def _backlog_analyser(self, device_id: str) -> DeviceAnalyzer:
        """:attr:`Work.backlog`: an analyser of the camera's old footage, whose motion state alone is used,
        apart from the one of its live stream."""
        an = self.backlog.get(device_id)
        if an is None:
            an = self.backlog[device_id] = DeviceAnalyzer(self.cfg.for_device(device_id))
        return an

    def _decode(
        self, container: av.container.InputContainer, stream: av.VideoStream, work: Work, an: DeviceAnalyzer,
        rep: Report, judge: bool = True,
    ) -> None:
        cfg = self.cfg
        cc = stream.codec_context
        height = cc.height or 0
        full = (an.motion is not None and 0 < height <= cfg.motion.max_height
                and (work.stream == "main" or cfg.motion.decode_sub))
        cc.skip_frame = "NONREF" if full else "NONKEY"
        step = 1.0 / cfg.motion.fps
        first: float | None = None
        next_motion = -1.0
        peak: float | None = None
        # Each keyframe packet's size and the sizes of the inter frames after it (by its pts), and the
        # decoded keyframes waiting for their GOP to end: (pts, time, frame, its picture if made already).
        gops: dict[int | None, tuple[int, list[int]]] = {}
        last_key: int | None = None
        waiting: list[tuple[int | None, float, av.VideoFrame, Picture | None]] = []
        gop: list[int] | None = None  # the current GOP's sizes: most packets only add to it
        for packet in container.demux(stream):
            size = packet.size
            if size == 0 and packet.pts is None:
                frames = cc.decode(None)  # end of stream: flush
            elif packet.is_keyframe:
                last_key = packet.pts
                gop = []
                gops[last_key] = (size, gop)
                frames = cc.decode(packet)
            else:
                if gop is not None:
                    gop.append(size)
                if not full:
                    continue
                frames = cc.decode(packet)
            for frame in frames:
                rep.frames += 1
                rel = 0.0 if frame.time is None else float(frame.time)
                if first is None:
                    first = rel
                t = work.start + max(0.0, rel - first)
                key = frame.key_frame
                step_motion = an.motion is not None and (key if not full else t >= next_motion)
                if not (key or step_motion):
                    continue  # decoded only as a reference for the frames we sample
                frame = _planar(frame)
                if key:
                    rep.keyframes += 1
                if not full:  # keyframes only: picture, chroma and motion are made when the keyframe is judged
                    waiting.append((frame.pts, t, frame, None))
                    continue
                g = analysis_picture(plane_view(frame, 0), cfg.width)
                if key and judge:
                    waiting.append((frame.pts, t, frame, Picture(t, g, *chroma_means(frame))))
                if step_motion and an.motion is not None:
                    next_motion = t + step - 1e-3
                    peak = _higher(peak, an.motion.step(g).ratio)
            while waiting and waiting[0][0] != last_key:
                peak = _higher(peak, self._judge(an, rep, waiting.pop(0), gops, judge))  # its GOP is complete
        for item in waiting:
            peak = _higher(peak, self._judge(an, rep, item, gops, judge))
        rep.motion_ratio = peak

    def _judge(
        self,
        an: DeviceAnalyzer,
        rep: Report,
        item: tuple[int | None, float, av.VideoFrame, Picture | None],
        gops: dict[int | None, tuple[int, list[int]]],
        judge: bool = True,
    ) -> float | None:
        """Feed a keyframe with what its GOP cost; a raised defect carries a snapshot of that keyframe.

        A keyframe decoded alone (no full decode for motion) gets its picture, chroma and coarse motion
        step here, right before its checks: between two decodes every step starts with cold caches,
        and one burst of work pays that once. Returns the motion ratio of that step (None: none made).
        Without ``judge``, the motion step only.
        """
        pts, t, frame, pic = item
        ratio = None
        if pic is None:
            g = analysis_picture(plane_view(frame, 0), self.cfg.width)
            if an.motion is not None:
                ratio = an.motion.step(g).ratio  # keyframes are judged in order: motion sees them in order
            if not judge:
                return ratio
            pic = Picture(t, g, *chroma_means(frame))
        elif not judge:
            return ratio
        key, sizes = gops.pop(pts, (None, []))
        pic.inter_bytes = inter_level(sizes)
        pic.key_bytes = None if key is None else float(key)
        changes = an.feed(pic, pic.t)
        jpeg = snapshot_jpeg(frame, self.cfg.snapshot_width) if any(c.raised for c in changes) else None
        rep.events.extend(
            Event(c.check, c.raised, c.at, c.value, jpeg if c.raised else None, c.normal, c.threshold) for c in changes
        )
        return ratio


def _higher(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
