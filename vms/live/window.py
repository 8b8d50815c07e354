"""One camera's live window: the newest relayed segments, numbered for HLS.

The agent already relays keyframe-aligned MPEG-TS segments, which is exactly what an HLS media
playlist lists, so live HLS needs no remuxing: the hub lists the newest N files. What needs care
is numbering. HLS requires that a segment keeps its media sequence number across playlist
reloads and that numbers in one playlist are consecutive, so numbers are assigned here, once,
when a segment joins the window. They start from a base derived from the segment's start time
(tenths of a second), so after a hub restart the numbers still move forward.

A segment joins only if it starts after the newest one: backlog segments that an agent delivers
after an outage belong to the archive, not to the live view.

A camera has one window per stream: ``main`` (fed from the segment index) and, when the agent
relays one, ``sub`` (fed from the hub's small live-only ring, see ``ring.py``).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import quote

import av

#: Start of a segment more than this far from the end of the previous one is a discontinuity.
GAP_TOLERANCE_S = 0.25
#: First PTS off by more than this from where the previous segment ended: the stream restarted.
PTS_TOLERANCE_S = 0.5
_PTS_WRAP = 1 << 33  # MPEG-TS timestamps are 33-bit
_TS_HZ = 90_000
#: Packets read by :func:`probe` to see whether decode order differs from display order.
_REORDER_PROBE_PACKETS = 12
_REORDER_MIN_S = 0.002

STREAMS = ("main", "sub")


@dataclass(frozen=True)
class SegmentRef:
    """A stored segment as the index knows it; ``path`` is absolute."""

    id: int
    start: float
    end: float
    path: Path
    received_at: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Format:
    """What a player must re-initialise on: codec, picture size, and where timestamps start."""

    codec: str
    width: int
    height: int
    first_pts: int | None  # 90 kHz
    bframes: bool = False  # packets come out of display order: browsers' WebRTC cannot show it smoothly


@dataclass(frozen=True)
class Entry:
    seq: int
    disc_seq: int  # discontinuities up to and including this segment
    discontinuity: bool  # a player must reset its decoder and timeline before this segment
    seg: SegmentRef
    fmt: Format | None


def probe(path: Path) -> Format | None:
    """Codec, size, first PTS and B-frames of a segment file, or None if it cannot be read.

    B-frames show as packets whose decode timestamp differs from their presentation timestamp;
    the first GOP's opening packets are enough to see it, with no decoding.
    """
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return None
            st = c.streams.video[0]
            first = None
            reorder = False
            for n, pkt in enumerate(c.demux(st)):
                if pkt.pts is None:
                    continue
                tb = pkt.time_base or st.time_base or Fraction(1, _TS_HZ)
                if first is None:
                    first = round(pkt.pts * tb * _TS_HZ)
                # A frame or more apart; a tick or two is a muxer's nudge, not reordering.
                reorder = reorder or (pkt.dts is not None and (pkt.pts - pkt.dts) * tb > _REORDER_MIN_S)
                if reorder or n >= _REORDER_PROBE_PACKETS:
                    break
            cc = st.codec_context
            return Format(cc.name, cc.width, cc.height, first, reorder)
    except (OSError, av.FFmpegError):
        return None


def _continues(prev: Entry, seg: SegmentRef, fmt: Format | None) -> bool:
    if abs(seg.start - prev.seg.end) > GAP_TOLERANCE_S:
        return False
    a = prev.fmt
    if a is None or fmt is None:
        return a is None and fmt is None
    if (a.codec, a.width, a.height) != (fmt.codec, fmt.width, fmt.height):
        return False
    if a.first_pts is None or fmt.first_pts is None:
        return True
    expected = a.first_pts + round(prev.seg.duration * _TS_HZ)
    off = (fmt.first_pts - expected + _PTS_WRAP // 2) % _PTS_WRAP - _PTS_WRAP // 2
    return abs(off) <= PTS_TOLERANCE_S * _TS_HZ


class LiveWindow:
    """The newest segments of one device; appended by the hub, read by playlists and WebRTC."""

    def __init__(self, size: int, keep: int | None = None) -> None:
        self.size = size
        self.entries: deque[Entry] = deque(maxlen=max(size, keep or 2 * size))
        self.target = 1  # EXT-X-TARGETDURATION only grows: players rely on it not changing
        self.lock = threading.Lock()

    @property
    def newest(self) -> Entry | None:
        return self.entries[-1] if self.entries else None

    def append(self, seg: SegmentRef, fmt: Format | None) -> Entry | None:
        """Add the next live segment; returns its entry, or None if it is not newer (backlog)."""
        prev = self.newest
        if prev is None:
            seq = math.floor(seg.start * 10)
            e = Entry(seq, seq, False, seg, fmt)
        else:
            if seg.start <= prev.seg.start:
                return None
            disc = not _continues(prev, seg, fmt)
            e = Entry(prev.seq + 1, prev.disc_seq + disc, disc, seg, fmt)
        self.entries.append(e)
        self.target = max(self.target, math.floor(seg.duration + 0.5))
        return e

    def playlist_entries(self) -> list[Entry]:
        return list(self.entries)[-self.size :]

    def prune(self, received_before: float) -> list[Entry]:
        """Drop the entries that arrived before ``received_before``; returns them (their files may go)."""
        out = []
        while self.entries and self.entries[0].seg.received_at < received_before:
            out.append(self.entries.popleft())
        return out

    def find(self, segment_id: int) -> Entry | None:
        """A segment still in the window or recently slid out of it (players may lag a little)."""
        return next((e for e in self.entries if e.seg.id == segment_id), None)


def _pdt(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_playlist(entries: Sequence[Entry], target: int, token: str | None = None, stream: str = "main") -> str:
    """An HLS media playlist (RFC 8216) of ``entries``; ``token`` (the media token the playlist was fetched
    with, never a person's token) and a ``sub`` stream go into segment URIs.

    The first entry never carries EXT-X-DISCONTINUITY; its count is in EXT-X-DISCONTINUITY-SEQUENCE,
    so every segment keeps its discontinuity number as the window slides.
    """
    if not entries:
        raise ValueError("a live playlist needs at least one segment")
    params = ([f"stream={stream}"] if stream != "main" else []) + ([f"token={quote(token, safe='')}"] if token else [])
    query = "?" + "&".join(params) if params else ""
    first = entries[0]
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES",
        f"#EXT-X-MEDIA-SEQUENCE:{first.seq}",
        f"#EXT-X-DISCONTINUITY-SEQUENCE:{first.disc_seq}",
    ]
    for e in entries:
        if e.discontinuity and e is not first:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(e.seg.start)}")
        lines.append(f"#EXTINF:{e.seg.duration:.3f},")
        lines.append(f"segments/{e.seg.id}.ts{query}")
    return "\n".join(lines) + "\n"
