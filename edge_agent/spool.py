"""The on-disk store-and-forward queue of finished segments.

A segment is in the queue exactly when a file with a well-formed final name exists in the queue
directory; the name carries all metadata (device, start, duration, sha256), so one atomic rename
both writes the metadata and enqueues, and a restart rebuilds the queue by listing the directory.
Unfinished writes live in ``.tmp/``; at start-up the readable prefix of each is salvaged into the
queue (see ``salvage.py``) and the rest dropped and counted. Segments the hub will never take are
kept in ``rejected/`` for a human; they count against the quota and go first when it is exceeded.

A *live-only* spool (``live_only=True``, the cameras' sub streams) is no store-and-forward queue:
a segment not sent while fresh (``live_window_s``) is deleted and counted in ``live_dropped``,
never kept as backlog, and segments found at start-up are stale and go the same way.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Container
from pathlib import Path

from vms.kernel.fsutil import fsync_dir as fsync_dir
from vms.kernel.protocol import SpoolStats
from vms.media.segment import Segment as Segment

log = logging.getLogger(__name__)

class Spool:
    """Queue directory + in-memory index; thread-safe (ingest threads add, the uplink takes)."""

    def __init__(self, root: Path, quota_bytes: int, live_window_s: float = 12.0, live_only: bool = False) -> None:
        self.root = Path(root)
        self.live_only = live_only
        self.live_dropped = 0  # live-only: segments deleted unsent (stale, or refused by the hub)
        self._live_logged_at = float("-inf")
        self.tmp_dir = self.root / ".tmp"
        self.rejected_dir = self.root / "rejected"
        self.quota_bytes = quota_bytes
        self.live_window_s = live_window_s
        self._lock = threading.Lock()
        self._index: dict[str, tuple[Segment, float]] = {}  # name -> (segment, added monotonic)
        self._bytes = 0
        self.write_errors = 0
        self.rejected = 0
        self.cleaned_tmp = 0  # temp files handled at start-up: salvaged + dropped
        self.salvaged_tmp = 0
        self.dropped_tmp = 0
        self.dropped_rejected = 0
        self._rejected: dict[str, tuple[float, int]] = {}  # name -> (mtime, size) in rejected/
        self._rejected_bytes = 0
        self.on_added: Callable[[Segment], None] | None = None  # e.g. the agent's analysis; must not block
        for d in (self.root, self.tmp_dir, self.rejected_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"
        self.dropped = self._read_dropped()
        self._rescan()

    # --- start-up -------------------------------------------------------------------------------

    def _read_dropped(self) -> int:
        try:
            return int(json.loads(self._state_path.read_text())["dropped_segments"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _write_state(self) -> None:
        tmp = self.tmp_dir / "state.json.tmp"
        with open(tmp, "w") as f:
            json.dump({"dropped_segments": self.dropped}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)

    def _rescan(self) -> None:
        parts: list[Path] = []
        for p in self.tmp_dir.iterdir():
            # A crash mid-write leaves only these; their segment never entered the queue.
            if p.is_file() and p.name.endswith(".part"):
                parts.append(p)
            elif p.is_file():
                p.unlink(missing_ok=True)  # state file or salvage output cut short by a crash
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        if parts:
            from .salvage import salvage

            for p in sorted(parts):
                seg = salvage(p, self.root)
                if seg is None:
                    self.dropped_tmp += 1
                else:
                    self.salvaged_tmp += 1
                p.unlink(missing_ok=True)
                self.cleaned_tmp += 1
            if self.salvaged_tmp:
                log.warning("spool: salvaged the readable start of %d segment(s) cut short by a crash",
                            self.salvaged_tmp)
            if self.dropped_tmp:
                log.warning("spool: dropped %d unfinished segment file(s) left by a crash (nothing "
                            "decodable in them)", self.dropped_tmp)
        for p in self.rejected_dir.iterdir():
            with contextlib.suppress(OSError):
                if p.is_file():
                    st = p.stat()
                    self._rejected[p.name] = (st.st_mtime, st.st_size)
                    self._rejected_bytes += st.st_size
        for p in self.root.iterdir():
            if not p.is_file() or p.name == self._state_path.name:
                continue
            seg = Segment.from_path(p)
            if seg is None:
                log.warning("spool: moving unrecognised file %s to rejected/", p.name)
                self._move_to_rejected(p)
                continue
            self._index[seg.name] = (seg, float("-inf"))  # everything found at start is backlog
            self._bytes += seg.size
        self._enforce_quota()

    # --- queue ----------------------------------------------------------------------------------

    def tmp_path(self, device_id: str, start: float | None = None) -> Path:
        """A unique temp name; ``start`` (Unix seconds) is kept in it so a crash can be salvaged."""
        stamp = f"{round(start * 1e6):d}." if start is not None and start >= 0 else ""
        return self.tmp_dir / f"{device_id}.{stamp}{time.monotonic_ns()}.{threading.get_ident()}.part"

    def added(self, seg: Segment) -> None:
        """Called after the atomic rename that put ``seg`` in the queue directory."""
        with self._lock:
            if seg.name in self._index:
                return
            self._index[seg.name] = (seg, time.monotonic())
            self._bytes += seg.size
            self._enforce_quota()
        if self.live_only:
            self._drop_stale(())  # bounded even while uploads are paused
        if self.on_added is not None:
            self.on_added(seg)

    def _move_to_rejected(self, path: Path) -> bool:
        """Move a file into ``rejected/`` and account for it (caller holds the lock or is alone)."""
        dest = self.rejected_dir / path.name
        try:
            size = path.stat().st_size
            os.replace(path, dest)
        except FileNotFoundError:
            return False
        old = self._rejected.pop(path.name, None)
        if old is not None:
            self._rejected_bytes -= old[1]
        self._rejected[path.name] = (time.time(), size)
        self._rejected_bytes += size
        return True

    def _enforce_quota(self) -> None:
        # Rejected segments can never be delivered: they give way first, oldest first.
        while self._bytes + self._rejected_bytes > self.quota_bytes and self._rejected:
            name = min(self._rejected, key=lambda n: self._rejected[n][0])
            _, size = self._rejected.pop(name)
            self._rejected_bytes -= size
            (self.rejected_dir / name).unlink(missing_ok=True)
            self.dropped_rejected += 1
            log.warning("spool quota %d bytes exceeded: deleted rejected segment %s (%d deleted in total)",
                        self.quota_bytes, name, self.dropped_rejected)
        dropped_now = 0
        while self._bytes > self.quota_bytes and len(self._index) > 1:
            name = min(self._index, key=lambda n: self._index[n][0].start)
            seg, _ = self._index.pop(name)
            self._bytes -= seg.size
            seg.path.unlink(missing_ok=True)
            self.dropped += 1
            dropped_now += 1
            log.warning("spool quota %d bytes exceeded: dropped oldest segment of %s starting %.3f "
                        "(%d dropped in total)", self.quota_bytes, seg.device_id, seg.start, self.dropped)
        if dropped_now:
            try:
                self._write_state()
            except OSError as exc:
                log.error("spool: cannot record drop count: %s", exc)

    def next_batch(
        self, limit: int, exclude: Container[str] = (), skip_devices: Container[str] = ()
    ) -> list[Segment]:
        """Up to ``limit`` segments: live ones (newest arrivals) first, then the backlog oldest-first.

        When both exist, at least one slot goes to the backlog so it keeps draining.
        A live-only spool has no backlog: see :meth:`_fresh_batch`.
        """
        if self.live_only:
            return self._fresh_batch(limit, exclude, skip_devices)
        now = time.monotonic()
        with self._lock:
            live: list[Segment] = []
            backlog: list[Segment] = []
            for name, (seg, added) in self._index.items():
                if name in exclude or seg.device_id in skip_devices:
                    continue
                (live if now - added <= self.live_window_s else backlog).append(seg)
        key = lambda s: (s.start, s.device_id)  # noqa: E731
        backlog_n = min(len(backlog), max(limit - len(live), 1 if limit > 1 else 0))
        live_n = min(len(live), limit - backlog_n)
        if live_n < limit - backlog_n:
            backlog_n = min(len(backlog), limit - live_n)
        return heapq.nsmallest(live_n, live, key=key) + heapq.nsmallest(backlog_n, backlog, key=key)

    def _fresh_batch(self, limit: int, exclude: Container[str], skip_devices: Container[str]) -> list[Segment]:
        """Live-only: the oldest fresh segments, after deleting (and counting) the stale ones."""
        self._drop_stale(exclude)
        with self._lock:
            fresh = [seg for name, (seg, _) in self._index.items()
                     if name not in exclude and seg.device_id not in skip_devices]
        return heapq.nsmallest(limit, fresh, key=lambda s: (s.start, s.device_id))

    def _drop_stale(self, exclude: Container[str]) -> None:
        """Live-only: delete and count the segments older than the live window (except ``exclude``)."""
        now = time.monotonic()
        with self._lock:
            stale = [seg for name, (seg, added) in self._index.items()
                     if now - added > self.live_window_s and name not in exclude]
        for seg in stale:
            self.drop(seg)
        if stale and now - self._live_logged_at >= 10.0:  # one line per outage burst, not per segment
            self._live_logged_at = now
            log.warning("live-only spool %s: dropped segments not sent while fresh (%d in total)",
                        self.root.name, self.live_dropped)

    def drop(self, seg: Segment) -> None:
        """Live-only: delete a segment that will not be sent, and count it."""
        with self._lock:
            if self._index.pop(seg.name, None) is None:
                return
            self._bytes -= seg.size
            self.live_dropped += 1
        seg.path.unlink(missing_ok=True)

    def ack(self, seg: Segment) -> None:
        """The hub has the segment: delete it."""
        with self._lock:
            if self._index.pop(seg.name, None) is not None:
                self._bytes -= seg.size
        seg.path.unlink(missing_ok=True)

    def reject(self, seg: Segment, reason: str) -> None:
        """Keep a segment the hub will never take in ``rejected/`` for a human to look at."""
        with self._lock:
            if self._index.pop(seg.name, None) is not None:
                self._bytes -= seg.size
            self.rejected += 1
            if not self._move_to_rejected(seg.path):
                return
            self._enforce_quota()
        log.error("segment %s rejected: %s (kept in %s)", seg.name, reason, self.rejected_dir)

    def contains(self, seg: Segment) -> bool:
        with self._lock:
            return seg.name in self._index

    def segments(self) -> list[Segment]:
        with self._lock:
            return sorted((s for s, _ in self._index.values()), key=lambda s: (s.start, s.device_id))

    def note_write_error(self) -> None:
        with self._lock:
            self.write_errors += 1

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(queued_segments=len(self._index), queued_bytes=max(self._bytes, 0),
                              dropped_segments=self.dropped)
