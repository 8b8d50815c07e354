"""Cut a camera's packets into keyframe-aligned MPEG-TS segments (stream copy, never decode).

A segment is written under a temporary name, closed, hashed, fdatasynced, and then renamed into
the spool directory under a name that carries its metadata, so a crash at any instant leaves
either a complete, self-describing segment in the queue or a temp file that start-up salvages.

Camera streams are messier than files: an access unit may arrive split into several packets with
one PTS (slices with parameter sets in between), the first packets after connecting may lack a
DTS, and DTS may repeat; the MPEG-TS muxer insists on strictly increasing DTS <= PTS. So split
access units are merged, missing DTS filled in and repeated DTS nudged forward.

``feed`` runs for every packet of every camera, so it handles the common case (a frame inside an
open segment, timestamps in order) inline with as little Python as it can; anything else
(keyframes, missing or jumping timestamps, no open segment, a cut due) takes ``_process``, which
decides every case. The stream figures (fps, bit rate, keyframe interval) are measured here too,
from keyframe to keyframe, since this is where each access unit is looked at anyway.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av

from vms.kernel.fsutil import fsync_dir, sync_and_hash

from .segment import Segment

log = logging.getLogger(__name__)

#: A DTS jump larger than this (seconds, either way) is a discontinuity, not jitter.
MAX_DTS_JUMP_S = 10.0
#: Packets arriving this much later than the wall-clock anchor predicts mean the anchor is stale.
MAX_CLOCK_DRIFT_S = 2.0
#: A segment is cut without a keyframe once it is this many times ``segment_seconds`` long, and
#: recording starts without one after waiting this long: a camera that stopped sending keyframes
#: (or uses intra refresh) must not hold its video back from the hub indefinitely.
FORCE_CUT_FACTOR = 3.0
#: FPS and bit rate are averaged over keyframe-to-keyframe windows at least this long.
RATE_WINDOW_S = 2.0
#: Lower than any timestamp: with no segment open, every packet takes the full decision path.
_NO_BOUND = -(1 << 63)


class SegmentSink(Protocol):
    """Where finished segments go: the agent's spool, or the hub's archive for media it receives."""

    root: Path

    def tmp_path(self, device_id: str, start: float) -> Path: ...
    def note_write_error(self) -> None: ...
    def added(self, seg: Segment) -> None: ...


def parameter_sets(data: bytes, codec: str) -> frozenset[bytes]:
    """The in-band sequence parameter sets (H.264 SPS; H.265 VPS/SPS) before the first slice.

    They change exactly when resolution or profile change, so comparing them at keyframes detects
    a mid-stream format change without decoding.
    """
    hevc = codec in ("hevc", "h265")
    found: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        start = i + 3
        b = data[start]
        ntype = (b >> 1) & 0x3F if hevc else b & 0x1F
        if (hevc and ntype < 32) or (not hevc and 1 <= ntype <= 5):
            break  # first slice: parameter sets come before it (and the slice is not scanned)
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        if (hevc and ntype in (32, 33)) or (not hevc and ntype == 7):
            found.append(data[start:end].rstrip(b"\x00"))
        i = nxt
    return frozenset(found)


def _strip_leading_parameter_sets(data: bytes) -> bytes:
    """Drop H.264 SPS/PPS/AUD NAL units that precede the first slice of a continuation packet.

    Some servers repeat the parameter sets before every slice of an IDR picture; left inside one
    access unit they make demuxers split the picture in two.
    """
    pos = 0
    while data.startswith(b"\x00\x00\x01", pos) or data.startswith(b"\x00\x00\x00\x01", pos):
        start = pos + (3 if data.startswith(b"\x00\x00\x01", pos) else 4)
        if start >= len(data) or (data[start] & 0x1F) not in (7, 8, 9):
            break
        nxt = data.find(b"\x00\x00\x01", start)
        if nxt < 0:
            break
        if nxt > 0 and data[nxt - 1] == 0:
            nxt -= 1
        pos = nxt
    return data[pos:]


class Segmenter:
    """Per-camera segment writer; called only from that camera's ingest thread."""

    def __init__(
        self,
        device_id: str,
        spool: SegmentSink,
        segment_seconds: float = 4.0,
        clock: Callable[[], float] = time.time,
        anchor: float | None = None,
    ) -> None:
        """``anchor``: the wall-clock time of the first access unit, for recorded media played back
        (a device's recording, fetched at any speed); None for live media, whose capture time is
        estimated from when its packets arrive."""
        self.device_id = device_id
        self._anchor = anchor
        self.spool = spool
        self.segment_seconds = segment_seconds
        self.clock = clock
        self.segments_written = 0
        self.write_errors = 0
        self.dropped_packets = 0
        self.forced_cuts = 0
        self.last_segment: Segment | None = None
        # Stream figures, kept across reconnects until measured again.
        self.fps = 0.0
        self.bitrate_bps = 0.0
        self.keyframe_interval_s: float | None = None
        self._frames = 0  # access units seen, and their bytes: the rates' counters
        self._bytes = 0
        self._in_stream: Any = None
        self._codec = ""
        self._pending: av.Packet | None = None  # held back by one packet, for merging
        self._pending_pts: int | None = None
        self._out: Any = None
        self._out_stream: Any = None
        self._mux: Any = None  # the open output's mux_one
        self._tmp: Path | None = None
        self._cut_pts = _NO_BOUND  # from this PTS on, a packet needs a cut decision
        self._reset_timing()

    def _reset_timing(self) -> None:
        # Wall clock minus stream time, minimised over packets: the least-delayed packet is the
        # best estimate of capture time (packets buffered while probing arrive late, in a burst).
        # When packets arrive MAX_CLOCK_DRIFT_S later than it predicts, the estimate is stale and
        # starts over; that is checked on the packets _process sees (every keyframe at least).
        self._offset = math.inf  # unset
        self._last_dts: int | None = None
        self._sps: frozenset[bytes] = frozenset()
        self._seg_start_pts = 0
        self._seg_end_pts = 0
        self._frame_ticks = 0
        self._wait_since_pts: int | None = None  # first packet seen while waiting for a keyframe
        self._key_pts: int | None = None  # the last keyframe's PTS
        self._win_pts: int | None = None  # the rate window: first keyframe, counters before it
        self._win_frames = 0
        self._win_bytes = 0
        self._set_time_base(Fraction(1, 90000))

    def _set_time_base(self, tb: Fraction) -> None:
        """Per-packet checks compare ticks, so the limits are kept in ticks of the stream's clock."""
        self._tb = tb
        self._tbf = float(tb)
        self._max_jump = MAX_DTS_JUMP_S / self._tbf
        self._force_ticks = round(FORCE_CUT_FACTOR * self.segment_seconds / self._tbf)

    # --- public ---------------------------------------------------------------------------------

    def feed(self, packet: av.Packet, stream: Any) -> None:
        """Take one demuxed packet of ``stream`` (the camera's video stream)."""
        if stream is not self._in_stream:
            self.close()
            self._in_stream = stream
            self._codec = stream.codec_context.name
            self._set_time_base(Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000))
        pts = packet.pts
        pkt, ppts = self._pending, self._pending_pts
        self._pending, self._pending_pts = packet, pts
        if pkt is None or ppts is None or pts == ppts:
            self._held(pkt, ppts, packet)
            return
        # `pkt` is a whole access unit. The common case inline; everything else in _process.
        dts = pkt.dts
        last = self._last_dts
        if (
            dts is None or last is None or ppts >= self._cut_pts or pkt.is_keyframe
            or not last < dts <= ppts or dts - last > self._max_jump
        ):
            self._process(pkt)
            return
        self._frames += 1
        self._bytes += pkt.size
        if self._anchor is None:
            off = self.clock() - ppts * self._tbf
            if off < self._offset:
                self._offset = off
        self._last_dts = dts
        end = ppts + self._frame_ticks
        if end > self._seg_end_pts:
            self._seg_end_pts = end
        pkt.stream = self._out_stream
        try:
            self._mux(pkt)
        except (OSError, av.FFmpegError) as exc:
            self._write_failed(exc)

    def close(self) -> Segment | None:
        """Finish the open segment (on shutdown, reconnect or stream change); returns it."""
        if self._pending is not None:
            # Held back since it arrived: timed by when it came, not by now (a stalled camera is
            # closed seconds later, and its last segment would be dated that much late).
            self._process(self._pending, retime=False)
            self._pending = self._pending_pts = None
        seg = self._finish(self._seg_end_pts) if self._out is not None else None
        self._in_stream = None
        self._reset_timing()
        return seg

    # --- packets --------------------------------------------------------------------------------

    def _held(self, pkt: av.Packet | None, ppts: int | None, packet: av.Packet) -> None:
        """``feed``'s rare cases: the first packet, a split access unit, a packet without PTS."""
        if pkt is None:
            return
        if (ppts is not None and packet.pts == ppts) or (ppts is None and pkt.dts is None):
            merged = self._merge(pkt, packet)
            self._pending, self._pending_pts = merged, merged.pts
            return
        self._process(pkt)

    @staticmethod
    def _merge(a: av.Packet, b: av.Packet) -> av.Packet:
        m = av.Packet(bytes(a) + _strip_leading_parameter_sets(bytes(b)))
        m.pts = b.pts if a.pts is None else a.pts
        m.dts = a.dts if a.dts is not None else b.dts
        m.time_base = a.time_base or b.time_base
        m.duration = max(a.duration or 0, b.duration or 0)
        m.is_keyframe = a.is_keyframe or b.is_keyframe
        return m

    def _process(self, pkt: av.Packet, retime: bool = True) -> None:
        """Every case of one access unit: timestamps, keyframes, cuts, then the write; ``retime``
        False for a packet that is not arriving now (its arrival says nothing of the clock)."""
        self._frames += 1
        self._bytes += pkt.size
        if pkt.pts is None:
            if pkt.dts is None:
                self.dropped_packets += 1
                return
            pkt.pts = pkt.dts
        pts = int(pkt.pts)
        if self._anchor is None and retime:
            off = self.clock() - pts * self._tbf
            if off < self._offset or off - self._offset > MAX_CLOCK_DRIFT_S:
                self._offset = off
        elif self._anchor is None:
            off = self._offset
        else:  # recorded media: its first access unit is at the anchor, the rest follow its clock
            if self._offset == math.inf:
                self._offset = self._anchor - pts * self._tbf
            off = self._offset
        if self._last_dts is not None and pkt.dts is not None:
            jump = int(pkt.dts) - self._last_dts
            if not -self._max_jump <= jump <= self._max_jump:
                log.info("camera %s: timestamp discontinuity of %.1f s, starting a new segment",
                         self.device_id, jump * self._tbf)
                if self._out is not None:
                    self._finish(self._seg_end_pts)
                tb = self._tb
                self._reset_timing()
                self._set_time_base(tb)
                self._offset = off
        if pkt.is_keyframe:
            self._measure(pts, pkt.size, keyframe=True)
            sps = parameter_sets(bytes(pkt), self._codec)
            changed = bool(sps) and bool(self._sps) and sps != self._sps
            if sps:
                self._sps = sps
            if self._out is not None and (
                changed or (pts - self._seg_start_pts) * self._tbf >= self.segment_seconds
            ):
                if changed:
                    log.info("camera %s: stream format changed, starting a new segment", self.device_id)
                self._finish(pts)
            if self._out is None:
                self._open(pts)
        elif self._out is not None:
            if pts >= self._cut_pts:
                self._measure(pts, pkt.size, keyframe=False)
                self._force_cut(pts, "no keyframe for %.1f s: cutting the segment without one")
        else:
            if self._wait_since_pts is None:
                self._wait_since_pts = pts
            elif pts - self._wait_since_pts >= self._force_ticks:
                self._measure(pts, pkt.size, keyframe=False)
                self._force_cut(pts, "no keyframe for %.1f s: recording starts without one")
        if self._out is None:
            self.dropped_packets += 1  # waiting for a keyframe
            return
        dts = pkt.dts
        if dts is None:
            dts = pts if self._last_dts is None else self._last_dts + 1
        elif self._last_dts is not None and dts <= self._last_dts:
            dts = self._last_dts + 1
        if dts > pts:
            self.dropped_packets += 1
            return
        pkt.dts = dts
        self._last_dts = int(dts)
        dur = int(pkt.duration or 0)
        if dur > 0:
            self._frame_ticks = dur
        self._seg_end_pts = max(self._seg_end_pts, pts + (dur or self._frame_ticks))
        try:
            pkt.stream = self._out_stream
            self._out.mux(pkt)
        except (OSError, av.FFmpegError) as exc:
            self._write_failed(exc)

    def _measure(self, pts: int, size: int, keyframe: bool) -> None:
        """Keyframe interval, fps and bit rate, on the camera's clock (a burst of packets buffered
        while connecting does not inflate them), at keyframes and at forced cuts (a camera without
        keyframes). The counters already include this access unit: the window ends before it."""
        if keyframe:
            if self._key_pts is not None and pts > self._key_pts:
                self.keyframe_interval_s = round((pts - self._key_pts) * self._tbf, 3)
            self._key_pts = pts
        frames, nbytes = self._frames - 1, self._bytes - size
        span = -1.0 if self._win_pts is None else (pts - self._win_pts) * self._tbf
        if span >= RATE_WINDOW_S:
            self.fps = (frames - self._win_frames) / span
            self.bitrate_bps = (nbytes - self._win_bytes) * 8 / span
        if span < 0 or span >= RATE_WINDOW_S:
            self._win_pts, self._win_frames, self._win_bytes = pts, frames, nbytes

    def _force_cut(self, pts: int, why: str) -> None:
        self.forced_cuts += 1
        if self.forced_cuts == 1 or self.forced_cuts % 100 == 0:
            log.warning("camera %s: " + why + " (%d forced cut(s) so far)", self.device_id,
                        FORCE_CUT_FACTOR * self.segment_seconds, self.forced_cuts)
        if self._out is not None:
            self._finish(pts)
        self._open(pts)

    # --- files ----------------------------------------------------------------------------------

    def _open(self, pts: int) -> None:
        self._wait_since_pts = None
        start = self._offset + pts * self._tbf  # _process set the offset before any open
        tmp = self.spool.tmp_path(self.device_id, start=start)
        try:
            self._out = av.open(str(tmp), "w", format="mpegts")
            self._out_stream = self._out.add_stream_from_template(self._in_stream)
        except (OSError, av.FFmpegError) as exc:
            self._tmp = tmp
            self._write_failed(exc)
            return
        self._tmp = tmp
        self._mux = self._out.mux_one
        self._seg_start_pts = pts
        self._seg_end_pts = pts
        self._cut_pts = pts + self._force_ticks

    def _write_failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        self.spool.note_write_error()
        log.error("camera %s: cannot write segment to the spool (%s); dropping it and trying again "
                  "at the next keyframe", self.device_id, exc)
        self._discard()

    def _detach(self) -> tuple[Any, Path | None]:
        """Forget the open output (every later packet takes the full path until the next open)."""
        out, tmp = self._out, self._tmp
        self._out = self._out_stream = self._mux = self._tmp = None
        self._cut_pts = _NO_BOUND
        return out, tmp

    def _discard(self) -> None:
        out, tmp = self._detach()
        if out is not None:
            with contextlib.suppress(OSError, av.FFmpegError):
                out.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    def _finish(self, end_pts: int) -> Segment | None:
        out, tmp = self._detach()
        assert out is not None and tmp is not None
        try:
            out.close()
            sha256, size = sync_and_hash(tmp)  # data and size durable; fsync_dir covers the rename
            duration = max((end_pts - self._seg_start_pts) * self._tbf, 0.0)
            start = self._offset + self._seg_start_pts * self._tbf
            final = self.spool.root / Segment.file_name(self.device_id, start, duration, sha256)
            os.replace(tmp, final)
            fsync_dir(self.spool.root)
        except (OSError, av.FFmpegError) as exc:
            self._tmp = tmp
            self._write_failed(exc)
            return None
        seg = Segment(path=final, device_id=self.device_id, start=round(start * 1e6) / 1e6,
                      duration=round(duration * 1e6) / 1e6, sha256=sha256, size=size)
        self.segments_written += 1
        self.last_segment = seg
        self.spool.added(seg)
        return seg
