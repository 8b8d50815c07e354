"""The hub's live relay: one live window per watched camera, fed by segment arrivals.

The hub tells the relay when a segment is stored (from a worker thread); the relay reads the new
rows from the index, adds them to the camera's window and wakes whoever waits for news: HLS
clients doing a blocking playlist reload and the camera's WebRTC packet source. Cameras nobody
watches cost nothing but a dictionary lookup per segment.

aiortc is imported only when the first WebRTC viewer arrives, so CLI commands that build a hub
for reports do not pay for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms.config import LiveConfig
from vms.db.models import Segment
from vms.live.window import Entry, LiveWindow, SegmentRef, probe, render_playlist

if TYPE_CHECKING:
    from vms.live.webrtc import Viewers

log = logging.getLogger(__name__)


class NoLiveMedia(Exception):
    """The camera is known but nothing it sent recently can be shown."""


@dataclass
class _Device:
    window: LiveWindow
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    version: int = 0  # segments stored since the relay started watching this device


class LiveRelay:
    def __init__(
        self,
        cfg: LiveConfig,
        recordings: Path,
        sessions: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
        skew_allowance_s: float = 30.0,
    ) -> None:
        """``skew_allowance_s``: how far an agent clock may be off before the hub re-times its media."""
        self.cfg = cfg
        self.recordings = recordings
        self.sessions = sessions
        self.clock = clock
        self.skew_allowance_s = skew_allowance_s
        self._devices: dict[str, _Device] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._viewers: Viewers | None = None

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the server's event loop, where waiters and WebRTC sessions live."""
        self._loop = loop

    def segment_stored(self, device_id: str) -> None:
        """Called by the hub (any thread) after a segment of ``device_id`` is indexed."""
        if device_id in self._devices and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, device_id)

    def _wake(self, device_id: str) -> None:
        d = self._devices.get(device_id)
        if d is None:
            return
        d.version += 1
        waiters, d.waiters = d.waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def version(self, device_id: str) -> int:
        """Take before reading the window; pass to :meth:`wait_news` so no arrival is missed."""
        return self._device(device_id).version

    async def wait_news(self, device_id: str, timeout: float, since: int | None = None) -> None:
        """Return when a segment of ``device_id`` is stored (after version ``since``), or after ``timeout`` s."""
        d = self._device(device_id)
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
    def _device(self, device_id: str) -> _Device:
        with self._lock:
            d = self._devices.get(device_id)
            if d is None:
                d = self._devices[device_id] = _Device(LiveWindow(self.cfg.hls_window_segments))
            return d

    def sync(self, device_id: str) -> LiveWindow:
        """Bring the window up to date with the index (blocking: call from a worker thread)."""
        w = self._device(device_id).window
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

    def live_entries(self, device_id: str) -> tuple[list[Entry], int]:
        """The playlist's entries and target duration; raises NoLiveMedia if the camera is stale."""
        w = self.sync(device_id)
        with w.lock:
            entries, target = w.playlist_entries(), w.target
        if not entries:
            raise NoLiveMedia(f"no live media for {device_id}: no segment has been relayed yet")
        newest = entries[-1].seg
        now = self.clock()
        age = now - newest.received_at
        if age > self.cfg.stale_after_s or now - newest.end > self.cfg.stale_after_s + self.skew_allowance_s:
            raise NoLiveMedia(
                f"no live media for {device_id}: its newest segment arrived {age:.0f} s ago "
                f"(live means within {self.cfg.stale_after_s:g} s)"
            )
        # Segments before a gap longer than the window are old news: start after the last gap.
        span = target * len(entries) * 2
        fresh = [e for e in entries if newest.end - e.seg.start <= span]
        return fresh, target

    def playlist(self, device_id: str, token: str | None = None) -> str:
        entries, target = self.live_entries(device_id)
        return render_playlist(entries, target, token)

    def newest_seq(self, device_id: str) -> int | None:
        e = self._device(device_id).window.newest
        return e.seq if e else None

    def segment_path(self, device_id: str, segment_id: int) -> Path | None:
        """The file of a segment in the camera's live window; None if it is not (or no longer) live."""
        w = self._device(device_id).window
        with w.lock:
            e = w.find(segment_id)
        return e.seg.path if e is not None else None

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
