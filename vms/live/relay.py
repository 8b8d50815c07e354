"""The hub's live relay: one live window per watched camera and stream, fed by segment arrivals.

Main stream: the hub tells the relay when a segment is stored (from a worker thread); the relay
reads the new rows from the index, adds them to the camera's window and wakes whoever waits for
news: HLS clients doing a blocking playlist reload and the camera's WebRTC packet source. Cameras
nobody watches cost nothing but a dictionary lookup per segment.

Sub stream: segments arrive through :meth:`LiveRelay.store_sub`, go into the small live-only ring
(``ring.py``) and straight into the camera's ``sub`` window; they never reach the index.

aiortc is imported only when the first WebRTC viewer arrives, so CLI commands that build a hub
for reports do not pay for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.store import Outcome, Result
from vms.config import LiveConfig
from vms.db.models import Segment
from vms.errors import Conflict
from vms.live.ring import SubRing
from vms.live.window import Entry, LiveWindow, SegmentRef, probe, render_playlist

if TYPE_CHECKING:
    from vms.live.webrtc import Viewers

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (device ID, stream)


class NoLiveMedia(Conflict):
    """The camera is known but nothing it sent recently can be shown."""


@dataclass
class _Device:
    window: LiveWindow
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    version: int = 0  # segments stored since the relay started watching this device and stream
    on_demand: bool = False  # its media comes only while watched (``LiveRelay.demand``)


class LiveRelay:
    def __init__(
        self,
        cfg: LiveConfig,
        recordings: Path,
        sessions: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
        skew_allowance_s: float = 30.0,
        ring_dir: Path | None = None,
    ) -> None:
        """``skew_allowance_s``: how far an agent clock may be off before the hub re-times its media.

        ``ring_dir``: where sub-stream segments are kept while live (default: beside ``recordings``).
        """
        self.cfg = cfg
        self.recordings = recordings
        self.sessions = sessions
        self.clock = clock
        self.skew_allowance_s = skew_allowance_s
        self.ring = SubRing(ring_dir or recordings.parent / "live-sub")
        self._devices: dict[Key, _Device] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._viewers: Viewers | None = None
        self._pruned_at = 0.0
        #: ``demand(device_id)``: a viewer reads this camera's main window now; True when its media comes
        #: only while someone watches (a lower platform's camera, streamed through the cascade on demand).
        self.demand: Callable[[str], bool] = lambda _d: False

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving process's event loop, where waiters and WebRTC sessions live.

        Only the serving hub attaches, so only it empties the sub ring (a report run beside it must not).
        """
        self._loop = loop
        self.ring.reset()

    def segment_stored(self, device_id: str) -> None:
        """Called by the hub (any thread) after a main-stream segment of ``device_id`` is indexed."""
        self._notify((device_id, "main"))

    def _notify(self, key: Key) -> None:
        if key in self._devices and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, key)

    def _wake(self, key: Key) -> None:
        d = self._devices.get(key)
        if d is None:
            return
        d.version += 1
        waiters, d.waiters = d.waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def version(self, device_id: str, stream: str = "main") -> int:
        """Take before reading the window; pass to :meth:`wait_news` so no arrival is missed."""
        return self._device(device_id, stream).version

    async def wait_news(self, device_id: str, timeout: float, since: int | None = None, stream: str = "main") -> None:
        """Return when a segment of the stream arrives (after version ``since``), or after ``timeout`` s."""
        d = self._device(device_id, stream)
        if since is not None and d.version != since:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        d.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in d.waiters:
                d.waiters.remove(fut)

    # -- windows --------------------------------------------------------------------------------
    def _device(self, device_id: str, stream: str = "main") -> _Device:
        with self._lock:
            d = self._devices.get((device_id, stream))
            if d is None:
                d = self._devices[(device_id, stream)] = _Device(LiveWindow(self.cfg.hls_window_segments))
            return d

    def sync(self, device_id: str, stream: str = "main") -> LiveWindow:
        """Bring the window up to date (blocking: call from a worker thread).

        The main window reads new rows from the index; the sub window is filled as segments arrive.
        """
        d = self._device(device_id, stream)
        w = d.window
        if stream != "main":
            return w
        d.on_demand = self.demand(device_id)
        with w.lock:
            newest = w.newest
            q = select(Segment.id, Segment.start_at, Segment.end_at, Segment.path, Segment.received_at).where(
                Segment.device_id == device_id, Segment.deleting.is_(False)
            )
            if newest is not None:
                q = q.where(Segment.start_at > newest.seg.start)
            with self.sessions() as s:
                rows = s.execute(q.order_by(Segment.start_at.desc()).limit(w.size)).all()
            for r in reversed(rows):
                seg = SegmentRef(r[0], r[1], r[2], self.recordings / r[3], r[4])
                w.append(seg, probe(seg.path))
        return w

    def live_entries(self, device_id: str, stream: str = "main") -> tuple[list[Entry], int]:
        """The playlist's entries and target duration; raises NoLiveMedia if the stream is stale."""
        w = self.sync(device_id, stream)
        with w.lock:
            entries, target = w.playlist_entries(), w.target
        what = device_id if stream == "main" else f"the sub stream of {device_id}"
        if not entries:
            raise NoLiveMedia(f"no live media for {what}: no segment has been relayed yet")
        newest = entries[-1].seg
        now = self.clock()
        age = now - newest.received_at
        if age > self.cfg.stale_after_s or now - newest.end > self.cfg.stale_after_s + self.skew_allowance_s:
            raise NoLiveMedia(
                f"no live media for {what}: its newest segment arrived {age:.0f} s ago "
                f"(live means within {self.cfg.stale_after_s:g} s)"
            )
        # Segments before a gap longer than the window are old news: start after the last gap.
        span = target * len(entries) * 2
        fresh = [e for e in entries if newest.end - e.seg.start <= span]
        return fresh, target

    def on_demand(self, device_id: str, stream: str = "main") -> bool:
        """Whether the camera's media was asked for by the last read of its window (it may take a few
        seconds to arrive: a viewer waits for it instead of being told there is none)."""
        return self._device(device_id, stream).on_demand

    def playlist(self, device_id: str, token: str | None = None, stream: str = "main") -> str:
        entries, target = self.live_entries(device_id, stream)
        return render_playlist(entries, target, token, stream)

    def newest_seq(self, device_id: str, stream: str = "main") -> int | None:
        e = self._device(device_id, stream).window.newest
        return e.seq if e else None

    def segment_path(self, device_id: str, segment_id: int, stream: str = "main") -> Path | None:
        """The file of a segment in the stream's live window; None if it is not (or no longer) live."""
        w = self._device(device_id, stream).window
        with w.lock:
            e = w.find(segment_id)
        return e.seg.path if e is not None else None

    # -- sub stream -----------------------------------------------------------------------------
    def store_sub(self, device_id: str, start: float, duration: float, data: bytes, sha256: str) -> Outcome:
        """Take a sub-stream segment (blocking: call from a worker thread): verify, ring, window."""
        if len(data) > self.cfg.sub_max_segment_bytes:
            return Outcome(
                Result.TOO_LARGE, f"{len(data)} bytes > live.sub_max_segment_bytes {self.cfg.sub_max_segment_bytes}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            return Outcome(Result.BAD_CHECKSUM, f"body sha256 {digest} does not match X-VMS-SHA256 {sha256}")
        now = self.clock()
        w = self._device(device_id, "sub").window
        with w.lock:
            newest = w.newest
            if newest is not None and start <= newest.seg.start:
                same = next((e for e in w.entries if e.seg.start == start), None)
                if same is not None:
                    return Outcome(Result.DUPLICATE, "already in the sub stream's live window", same.seg.id)
                return Outcome(
                    Result.CONFLICT,
                    f"starts before the newest sub-stream segment of {device_id}: sub segments are live only "
                    "and are never kept for later",
                )
            try:
                seg_id, path = self.ring.write(device_id, data)
            except OSError as exc:
                log.error("live ring: cannot write a sub segment of %s: %s", device_id, exc)
                result = Result.DISK_FULL if exc.errno in (28, 122) else Result.STORE_ERROR  # ENOSPC, EDQUOT
                return Outcome(result, f"cannot write sub segment: {exc.strerror or exc}")
            full = w.entries.maxlen is not None and len(w.entries) == w.entries.maxlen
            evicted = w.entries[0] if full else None
            w.append(SegmentRef(seg_id, start, start + duration, path, now), probe(path))
        if evicted is not None:
            self.ring.remove(evicted.seg.path)
        self._prune_sub(now)
        self._notify((device_id, "sub"))
        return Outcome(Result.STORED, "kept in the live window (sub stream: not recorded)", seg_id)

    def _prune_sub(self, now: float) -> None:
        """Delete sub segments that aged out of every live playlist (at most once a second)."""
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        horizon = now - 2 * self.cfg.stale_after_s
        with self._lock:
            windows = [d.window for (_, stream), d in self._devices.items() if stream == "sub"]
        for w in windows:
            with w.lock:
                gone = w.prune(horizon)
            for e in gone:
                self.ring.remove(e.seg.path)

    # -- WebRTC ---------------------------------------------------------------------------------
    @property
    def viewers(self) -> Viewers:
        if self._viewers is None:
            from vms.live.webrtc import Viewers

            self._viewers = Viewers(self)
        return self._viewers

    def viewer_count(self, device_id: str | None = None) -> int:
        return 0 if self._viewers is None else self._viewers.count(device_id)

    def stalls_total(self) -> int:
        return 0 if self._viewers is None else self._viewers.stalls()

    async def close(self) -> None:
        """Close every WebRTC session (server shutdown)."""
        if self._viewers is not None:
            await self._viewers.close_all()
