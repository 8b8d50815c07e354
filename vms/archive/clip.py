"""Clips: a device's recorded MPEG-TS segments, stream-copied into one fragmented MP4.

Segments are keyframe-aligned MPEG-TS files, and MPEG-TS concatenates at the byte level, so all
segments of a clip are fed to *one* demuxer through a reader that verifies each file against its
index row (size and SHA-256) before handing over its bytes. Opening a demuxer per file costs
~40 ms of stream probing per segment (that is what makes ``ffmpeg -f concat`` slow); one demuxer
over the verified byte stream costs nothing per segment. Each packet is mapped back to its segment
by byte position, and its timestamp to wall-clock time from that segment's index row, so the
clip's timeline is the recording's: gaps stay gaps (reported, not hidden) and pts 0 is the
``origin`` instant written into the manifest and the MP4's creation time.

The output is fragmented MP4 (a fragment per GOP): playable while it is still being written,
which is what lets the first byte leave before the last segment is read.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms.db.models import Segment
from vms.errors import DomainError, Invalid, NoSpace, NotFound
from vms.kernel.timeutil import iso

#: Uncovered stretches shorter than this are timestamp jitter between segments, not gaps.
GAP_TOLERANCE_S = 0.5
#: The longest range served directly by ``clip.mp4``; longer ranges are export jobs.
MAX_CLIP_SECONDS = 3600.0
#: The longest range an export job may cover.
MAX_EXPORT_SECONDS = 86400.0
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
OUT_TB = Fraction(1, 90000)
_WRAP = 1 << 33  # MPEG-TS timestamps are 33-bit


class ClipError(DomainError):
    """A clip that cannot be made; the kind (vms/errors.py) says why, the message says what."""


class ClipNotFound(ClipError, NotFound):
    """Nothing to cut: an unknown device, no recordings in the range, or none of them playable."""


class ClipInvalid(ClipError, Invalid):
    """The range asked for is impossible: it ends before it starts, or is longer than allowed."""


class ClipNoSpace(ClipError, NoSpace):
    """The disk cannot hold the clip (refused up front, or filled up while writing)."""


class ClipFailed(RuntimeError):
    """A build the hub accepted broke (an I/O or demuxer fault): not a refusal, so no domain kind."""


@dataclass(frozen=True)
class Piece:
    """One indexed segment of the clip."""

    id: int
    path: str
    start: float
    end: float
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    start: float
    end: float
    path: str
    reason: str


@dataclass
class ClipPlan:
    device_id: str
    start: float
    end: float
    pieces: list[Piece]

    @property
    def estimated_bytes(self) -> int:
        return sum(p.bytes for p in self.pieces)

    def gaps(self) -> list[tuple[float, float]]:
        return find_gaps([(p.start, p.end) for p in self.pieces], self.start, self.end)


@dataclass
class ClipResult:
    device_id: str
    start: float
    end: float
    origin: float
    first_at: float
    last_at: float
    frames: int
    bytes: int
    sha256: str
    gaps: list[tuple[float, float]]
    skipped: list[Skipped] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """The JSON sidecar: what the clip covers, where it has holes, and its checksum."""
        return {
            "device_id": self.device_id,
            "requested": {"start": iso(self.start), "end": iso(self.end)},
            "origin": iso(self.origin),
            "origin_unix": self.origin,
            "first_frame_at": iso(self.first_at),
            "last_frame_at": iso(self.last_at),
            "frames": self.frames,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "gaps": gaps_json(self.gaps),
            "skipped_segments": [{**asdict(s), "start": iso(s.start), "end": iso(s.end)} for s in self.skipped],
        }


def gaps_json(gaps: list[tuple[float, float]]) -> list[dict[str, Any]]:
    return [{"start": iso(a), "end": iso(b), "seconds": round(b - a, 3)} for a, b in gaps]


def find_gaps(
    intervals: list[tuple[float, float]], start: float, end: float, tol: float = GAP_TOLERANCE_S
) -> list[tuple[float, float]]:
    """Stretches of [start, end) covered by none of ``intervals`` (sorted by start), longer than ``tol``."""
    gaps: list[tuple[float, float]] = []
    cursor = start
    for a, b in intervals:
        if a - cursor > tol:
            gaps.append((cursor, min(a, end)))
        cursor = max(cursor, b)
        if cursor >= end:
            break
    if end - cursor > tol:
        gaps.append((cursor, end))
    return gaps


def plan_clip(sessions: sessionmaker[Session], device_id: str, start: float, end: float) -> ClipPlan:
    """The indexed segments overlapping [start, end), oldest first."""
    with sessions() as s:
        rows = s.execute(
            select(Segment.id, Segment.path, Segment.start_at, Segment.end_at, Segment.bytes, Segment.sha256)
            .where(
                Segment.device_id == device_id,
                Segment.deleting.is_(False),
                Segment.end_at > start,
                Segment.start_at < end,
            )
            .order_by(Segment.start_at)
        ).all()
    return ClipPlan(device_id, start, end, [Piece(*r) for r in rows])


def safe_path(root: Path, rel: str) -> Path | None:
    """``root/rel`` if it stays inside ``root`` (an index row is data, not trusted code)."""
    p = (root / rel).resolve()
    return p if p.is_relative_to(root.resolve()) else None


def precheck(plan: ClipPlan, root: Path) -> list[Skipped]:
    """Missing or truncated files, found by ``stat`` alone (cheap enough to run before answering)."""
    bad: list[Skipped] = []
    for p in plan.pieces:
        reason = _stat_problem(root, p)
        if reason:
            bad.append(Skipped(p.start, p.end, p.path, reason))
    return bad


def _stat_problem(root: Path, p: Piece) -> str | None:
    path = safe_path(root, p.path)
    if path is None:
        return "index path leaves the recordings directory"
    try:
        size = path.stat().st_size
    except OSError:
        return "file missing"
    if size != p.bytes:
        return f"file truncated or changed: {size} bytes on disk, {p.bytes} indexed"
    return None


class _VerifiedSegments:
    """A read-only byte stream of the plan's segments, each checked against its index row first."""

    def __init__(self, plan: ClipPlan, root: Path) -> None:
        self.pieces = plan.pieces
        self.root = root
        self.next = 0
        self.buf = b""
        self.off = 0
        self.pos = 0
        self.starts: list[int] = []  # stream offset where each accepted piece begins
        self.accepted: list[Piece] = []
        self.skipped: list[Skipped] = []

    def load_next(self) -> bool:
        while self.next < len(self.pieces):
            p = self.pieces[self.next]
            self.next += 1
            reason = _stat_problem(self.root, p)
            data = b""
            if reason is None:
                path = safe_path(self.root, p.path)
                assert path is not None
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != p.sha256:
                    reason = "content does not match its SHA-256 (corrupted on disk)"
            if reason:
                self.skipped.append(Skipped(p.start, p.end, p.path, reason))
                continue
            self.starts.append(self.pos)
            self.accepted.append(p)
            self.buf, self.off = data, 0
            return True
        return False

    def read(self, n: int) -> bytes:
        while self.off >= len(self.buf):
            if not self.load_next():
                return b""
        chunk = self.buf[self.off : self.off + n]
        self.off += len(chunk)
        self.pos += len(chunk)
        return chunk

    def piece_at(self, pos: int) -> Piece:
        k = bisect.bisect_right(self.starts, pos) - 1 if pos >= 0 else len(self.starts) - 1
        return self.accepted[max(k, 0)]


class _HashingSink:
    """The MP4 muxer's output: written to ``f``, hashed, and counted as it goes."""

    def __init__(self, f: Any, on_write: Callable[[int], None] | None) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0
        self.on_write = on_write

    def write(self, b: bytes) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        if self.on_write is not None:
            self.on_write(self.n)
        return len(b)


Progress = Callable[[int, float], None]


def build_clip(plan: ClipPlan, root: Path, out_path: Path, progress: Progress | None = None) -> ClipResult:
    """Write the clip of ``plan`` to ``out_path`` (removed again on any failure); see the module doc.

    Starts at the last keyframe at or before ``plan.start`` and stops at the first packet decoded
    at or after ``plan.end``, so every frame before ``end`` is decodable. ``progress`` gets
    (bytes written, fraction of the range done). Raises :class:`ClipNotFound` when no segment
    is usable, :class:`ClipNoSpace` when the disk fills up.
    """
    reader = _VerifiedSegments(plan, root)
    if not reader.load_next():  # the first usable segment, or a clear refusal
        reasons = "; ".join(f"{iso(s.start)} {s.reason}" for s in reader.skipped[:5])
        raise ClipNotFound(f"no playable recordings in the range ({len(reader.skipped)} damaged: {reasons})")
    f: Any = None
    try:
        f = open(out_path, "wb", buffering=0)  # noqa: SIM115 - closed below, also on errors
        state = {"fraction": 0.0}
        sink = _HashingSink(f, (lambda n: progress(n, state["fraction"])) if progress else None)
        result = _remux(plan, reader, sink, state)
        f.close()
        return result
    except OSError as exc:
        _discard(f, out_path)
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise ClipNoSpace(f"disk full while writing the clip: {exc.strerror}") from None
        raise
    except BaseException:
        _discard(f, out_path)
        raise


def _remux(plan: ClipPlan, reader: _VerifiedSegments, sink: _HashingSink, state: dict[str, float]) -> ClipResult:
    src = av.open(reader, "r", format="mpegts")
    out: Any = None
    try:
        st = src.streams.video[0]
        tb = st.time_base or Fraction(1, 90000)
        refs: dict[int, int] = {}  # piece id -> pts of its first packet
        pending: list[tuple[av.Packet, float, float]] = []  # the GOP that contains plan.start
        started = False
        origin = first_at = last_at = 0.0
        last_dts: int | None = None
        frames = 0

        def wall(piece: Piece, ts: int) -> float:
            d = ts - refs[piece.id]
            if d < -(_WRAP >> 1):
                d += _WRAP
            return piece.start + float(d * tb)

        for pkt in src.demux(st):
            if pkt.dts is None or pkt.pts is None:
                continue
            piece = reader.piece_at(-1 if pkt.pos is None else pkt.pos)
            refs.setdefault(piece.id, int(pkt.pts))
            w_pts, w_dts = wall(piece, int(pkt.pts)), wall(piece, int(pkt.dts))
            if w_dts >= plan.end and started:
                break
            if not started:
                if pkt.is_keyframe and w_pts <= plan.start:
                    pending = [(pkt, w_pts, w_dts)]
                    continue
                if not pkt.is_keyframe:
                    if pending:
                        pending.append((pkt, w_pts, w_dts))
                    continue
                if w_pts >= plan.end:
                    break
                started = True
                batch = [*pending, (pkt, w_pts, w_dts)]
                origin = first_at = batch[0][1]
                out = av.open(sink, "w", format="mp4", options={"movflags": MOVFLAGS})
                out.metadata["creation_time"] = iso(origin)
                out.metadata["comment"] = f"device {plan.device_id}"
                ost = out.add_stream_from_template(st)
                ost.time_base = OUT_TB
            else:
                batch = [(pkt, w_pts, w_dts)]
            for p, wp, wd in batch:
                pts, dts = round((wp - origin) / OUT_TB), round((wd - origin) / OUT_TB)
                if last_dts is not None and dts <= last_dts:
                    dts = last_dts + 1  # segment boundaries placed by wall clock may overlap slightly
                dur = round(float((p.duration or 0) * tb) / OUT_TB)
                p.pts, p.dts, p.duration, p.time_base = max(pts, dts), dts, dur, OUT_TB
                # A verified segment is intact; the flag only marks the continuity-counter reset
                # where one segment's bytes meet the next.
                p.is_corrupt = False
                p.stream = ost
                out.mux(p)
                last_dts = dts
                last_at = max(last_at, wp)
                frames += 1
            state["fraction"] = min(max((w_dts - plan.start) / max(plan.end - plan.start, 1e-9), 0.0), 1.0)
        if out is None:
            raise ClipNotFound("no keyframe in the range: nothing playable to cut")
        out.close()
        out = None
    finally:
        if out is not None:
            with contextlib.suppress(OSError, av.FFmpegError):
                out.close()
        src.close()
    used = [(p.start, p.end) for p in reader.accepted]
    return ClipResult(
        device_id=plan.device_id,
        start=plan.start,
        end=plan.end,
        origin=origin,
        first_at=first_at,
        last_at=last_at,
        frames=frames,
        bytes=sink.n,
        sha256=sink.h.hexdigest(),
        gaps=find_gaps(sorted(used), plan.start, plan.end),
        skipped=reader.skipped,
    )


def _discard(f: Any, path: Path) -> None:
    if f is not None and not f.closed:
        with contextlib.suppress(OSError):
            f.close()
    path.unlink(missing_ok=True)
