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

The hub builds clips in worker processes (:class:`ClipWorkers`, :func:`worker_main`) at a lower CPU
priority: demuxing and muxing hold the interpreter lock for every packet, and in the hub's own
threads they delayed its event loop (heartbeats, uploads) by hundreds of milliseconds. A worker
writes the file itself and tells its progress through a pipe; the hub only follows it.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from select import POLLIN, poll
from typing import IO, TYPE_CHECKING, Any

import av

from vms.errors import DomainError, Invalid, NoSpace, NotFound
from vms.kernel.timeutil import iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

#: Uncovered stretches shorter than this are timestamp jitter between segments, not gaps.
GAP_TOLERANCE_S = 0.5
#: The longest range served directly by ``clip.mp4``; longer ranges are export jobs.
MAX_CLIP_SECONDS = 3600.0
#: The longest range an export job may cover.
MAX_EXPORT_SECONDS = 86400.0
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
OUT_TB = Fraction(1, 90000)
_WRAP = 1 << 33  # MPEG-TS timestamps are 33-bit
#: A clip worker's CPU niceness: the hub's own work (heartbeats, uploads, live view) comes first,
#: clips take what is left, and all of it when the hub is idle.
WORKER_NICE = 10
#: A worker tells its progress at most this often (and at its first byte): enough for readers that
#: follow the file, few enough wake-ups for the hub.
PROGRESS_MESSAGE_S = 0.05
#: How often the hub looks, while a worker builds, whether the build was cancelled.
CANCEL_CHECK_S = 0.25
#: A cancelled worker that has not stopped after this long is killed (stuck in a read, say).
CANCEL_KILL_S = 5.0

log = logging.getLogger(__name__)


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


class ClipCancelled(ClipFailed):
    """The build of a direct clip stopped because its client went away: nobody would read the rest."""


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

    def to_json(self) -> dict[str, Any]:
        """The plan for a worker process: pieces as plain rows (a day's export has 40,000 of them, and
        :func:`dataclasses.asdict` would deep-copy each in the hub's thread)."""
        rows = [[p.id, p.path, p.start, p.end, p.bytes, p.sha256] for p in self.pieces]
        return {"device_id": self.device_id, "start": self.start, "end": self.end, "pieces": rows}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClipPlan:
        """The plan :meth:`to_json` made."""
        return cls(d["device_id"], d["start"], d["end"], [Piece(*p) for p in d["pieces"]])

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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClipResult:
        """The result as :func:`dataclasses.asdict` gave it (sent back by a worker process)."""
        return cls(**{**d, "gaps": [(a, b) for a, b in d["gaps"]], "skipped": [Skipped(**k) for k in d["skipped"]]})

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
    # Imported here: a clip worker process never plans, and starts faster without the store's modules.
    from sqlalchemy import select

    from vms.db.models import Segment

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


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (not in :mod:`os`), or None where the C library lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
#: Bytes of clip output after which their writeback to disk is started (see :class:`_HashingSink`).
WRITEBACK_BYTES = 4 << 20


class _HashingSink:
    """The MP4 muxer's output: written to ``f``, hashed, and counted as it goes.

    Every ``WRITEBACK_BYTES`` the writeback of what was written is started, without waiting for it.
    A clip file is a cache that is never synced; left to the kernel, tens of megabytes per clip stay
    dirty and are written back at once, and on ext4 (``data=ordered``) a segment upload's fsync then
    waits for them: with 20 clip downloads, upload p95 was 60 ms instead of 21 ms
    (``bench/bench_faults.py --parts clips``)."""

    def __init__(self, f: Any, on_write: Callable[[int], None] | None) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0
        self.flushed = 0
        self.on_write = on_write

    def write(self, b: bytes) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        if self.n - self.flushed >= WRITEBACK_BYTES and _sync_file_range is not None:
            _sync_file_range(self.f.fileno(), self.flushed, self.n - self.flushed, _SYNC_FILE_RANGE_WRITE)
            self.flushed = self.n
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


# -- building in a worker process -----------------------------------------------------------------
#: The directory holding the ``vms`` package, so that a worker imports the hub's own code.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_CODE = "from vms.archive.clip import worker_main; worker_main()"
#: How a worker names a build that ended without a clip, and what the hub raises for it.
_REFUSALS: dict[str, type[ClipError]] = {"not_found": ClipNotFound, "invalid": ClipInvalid, "no_space": ClipNoSpace}


def _error_reply(job: int, exc: BaseException) -> dict[str, Any]:
    """A worker's report of a build that ended without a clip: the kind, so that the hub raises the same."""
    kind = next((k for k, cls in _REFUSALS.items() if isinstance(exc, cls)), None)
    if kind is not None:
        return {"job": job, "error": kind, "message": str(exc)}
    if isinstance(exc, ClipCancelled):
        return {"job": job, "error": "cancelled", "message": str(exc)}
    if isinstance(exc, OSError):
        return {"job": job, "error": "os", "errno": exc.errno, "message": exc.strerror or str(exc)}
    log.error("clip build failed", exc_info=exc)  # the worker's stderr is the hub's log
    return {"job": job, "error": "failed", "message": f"{type(exc).__name__}: {exc}"}


def _raise_reply(msg: dict[str, Any]) -> None:
    """The hub's side of :func:`_error_reply`."""
    kind, message = msg["error"], str(msg["message"])
    if kind in _REFUSALS:
        raise _REFUSALS[kind](message)
    if kind == "os":
        raise OSError(msg.get("errno") or 0, message)
    if kind == "cancelled":
        raise ClipCancelled(message)
    raise ClipFailed(f"clip failed: {message}")


def _lower_priority() -> None:
    """Run at ``WORKER_NICE``. Where the kernel groups processes by session for CPU shares (autogroups),
    a nice value counts only inside the group: the worker, started in a session of its own, lowers its
    group's niceness too, so that its CPU is not taken from the hub's share."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
        f.write(str(WORKER_NICE))


def worker_main() -> None:
    """A clip worker process: builds the jobs the hub sends, one at a time, at ``WORKER_NICE``.

    JSON lines. On stdin: ``{"job": n, "plan": ..., "root": ..., "out": ...}`` and ``{"cancel": n}``.
    On stdout: ``{"job": n, "written": bytes, "fraction": f}`` (progress, at most every
    ``PROGRESS_MESSAGE_S``), then ``{"job": n, "result": ...}`` or ``{"job": n, "error": kind, ...}``.
    A closed stdin means that the hub stopped or died: the worker ends at once, nobody would read on.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the hub, which stops us
    _lower_priority()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s clip worker %(process)d %(name)s: %(message)s")
    replies = os.fdopen(os.dup(1), "wb")  # the messages only: whatever a library prints goes to stderr
    os.dup2(2, 1)
    jobs: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    cancelled = [-1]  # the newest job the hub cancelled

    def listen() -> None:
        for line in sys.stdin.buffer:
            msg = json.loads(line)
            if "cancel" in msg:
                cancelled[0] = max(cancelled[0], int(msg["cancel"]))
            else:
                jobs.put(msg)
        os._exit(0)

    def send(msg: dict[str, Any]) -> None:
        replies.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        replies.flush()

    threading.Thread(target=listen, name="clip-listen", daemon=True).start()
    while True:
        job = jobs.get()
        n = int(job["job"])
        told = [0.0]

        def progress(written: int, fraction: float, n: int = n, told: list[float] = told) -> None:
            if cancelled[0] >= n:
                raise ClipCancelled(f"cancelled after {written} bytes")
            now = time.monotonic()
            if now - told[0] >= PROGRESS_MESSAGE_S:
                told[0] = now
                send({"job": n, "written": written, "fraction": fraction})

        try:
            result = build_clip(ClipPlan.from_json(job["plan"]), Path(job["root"]), Path(job["out"]), progress)
            reply = {"job": n, "result": asdict(result)}
        except Exception as exc:
            reply = _error_reply(n, exc)
        send(reply)


class _Worker:
    """One worker process and the hub's ends of its pipes."""

    def __init__(self) -> None:
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _SOURCE_ROOT + (os.pathsep + path if path else "")}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise ClipFailed(f"clip failed: cannot start a worker process ({exc})") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.poller = poll()
        self.poller.register(self.stdout.fileno(), POLLIN)
        self.buf = b""
        self.idle = True  # no job of ours is running in it (its last one answered)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, msg: dict[str, Any]) -> None:
        self.stdin.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        self.stdin.flush()

    def receive(self, timeout: float) -> list[dict[str, Any]] | None:
        """The messages that arrived within ``timeout`` s ([] if none); None once the process has ended."""
        if not self.poller.poll(timeout * 1000):
            return []
        chunk = os.read(self.stdout.fileno(), 1 << 16)
        if not chunk:
            return None
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        return [json.loads(line) for line in lines]

    def kill(self) -> None:
        """End the process now; the thread following its build then reads the end of its pipe."""
        self.idle = False
        with contextlib.suppress(OSError):
            self.proc.kill()

    def stop(self) -> None:
        """End the process and close the pipes (only by the thread that owns it: a build it runs leaves its
        partial file to the caller)."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for f in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                f.close()


class ClipWorkers:
    """At most ``size`` worker processes building clips: started when first needed, kept for the next.

    The hub's thread that asks for a build only follows it (it waits on the worker's pipe, the
    interpreter lock free), so clips cost the hub's event loop nothing but their readers' wake-ups.
    """

    def __init__(self, size: int) -> None:
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._jobs = 0
        self._closed = False

    def build(
        self,
        plan: ClipPlan,
        root: Path,
        out_path: Path,
        progress: Progress | None = None,
        cancelled: Callable[[], str | None] | None = None,
    ) -> ClipResult:
        """:func:`build_clip` in a worker process, raising what it raises. ``progress`` is called in the
        caller's thread; ``cancelled()`` is asked every ``CANCEL_CHECK_S`` and at each progress message:
        a reason stops the build (:class:`ClipCancelled`, the partial file removed by the worker, or left
        to the caller if the worker had to be killed). Waits for a free worker if all ``size`` are busy."""
        with self._free:
            worker, job = self._take()
            try:
                return self._follow(worker, job, plan, root, out_path, progress, cancelled)
            finally:
                self._give_back(worker)

    def _take(self) -> tuple[_Worker, int]:
        with self._lock:
            if self._closed:
                raise ClipFailed("the hub is stopping: no new clips")
            self._jobs += 1
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    worker.idle = False
                    return worker, self._jobs
                self._all.discard(worker)
                worker.stop()
            worker = _Worker()
            worker.idle = False
            self._all.add(worker)
            return worker, self._jobs

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if worker.idle and worker.alive() and not self._closed:
                self._idle.append(worker)
                return
            self._all.discard(worker)
        worker.stop()

    def _follow(
        self,
        worker: _Worker,
        job: int,
        plan: ClipPlan,
        root: Path,
        out_path: Path,
        progress: Progress | None,
        cancelled: Callable[[], str | None] | None,
    ) -> ClipResult:
        try:
            worker.send({"job": job, "plan": plan.to_json(), "root": str(root), "out": str(out_path)})
        except OSError as exc:
            raise ClipFailed(f"clip failed: its worker process cannot be reached ({exc})") from None
        written, asked, why = 0, 0.0, ""
        while True:
            messages = worker.receive(CANCEL_CHECK_S)
            if messages is None:
                code = worker.proc.wait()
                if asked:
                    raise ClipCancelled(f"cancelled after {written} bytes: {why}")
                if self._closed:
                    raise ClipFailed("the hub stopped during the build")
                raise ClipFailed(f"clip failed: its worker process ended (exit code {code})")
            for m in messages:
                if m.get("job") != job:
                    continue
                if "written" in m:
                    written = int(m["written"])
                    if progress is not None and not asked:
                        progress(written, float(m["fraction"]))
                    continue
                worker.idle = True  # its answer came: the worker is free for the next build
                if "result" in m:
                    result = ClipResult.from_json(m["result"])
                    if progress is not None:
                        progress(result.bytes, 1.0)
                    return result
                if asked:
                    raise ClipCancelled(f"cancelled after {written} bytes: {why}")
                _raise_reply(m)
            if not asked:
                reason = cancelled() if cancelled is not None else None
                if reason is not None:
                    asked, why = time.monotonic(), reason
                    with contextlib.suppress(OSError):
                        worker.send({"cancel": job})
            elif time.monotonic() - asked > CANCEL_KILL_S:
                worker.stop()
                raise ClipCancelled(f"cancelled after {written} bytes: {why} (its worker process was stopped)")

    def close(self) -> None:
        """Stop every worker: the builds they run fail (:class:`ClipFailed`), new ones are refused."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = [w for w in self._all if w not in idle]
            self._all = set()
        for w in idle:
            w.stop()
        for w in busy:
            w.kill()  # its build's thread sees the pipe end and closes it
