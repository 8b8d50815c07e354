"""A small in-process event bus: threads publish, asyncio subscribers receive.

The hub's tick thread publishes what changed (device IDs, alert IDs); the push endpoint
subscribes from the event loop. Each subscriber has a bounded queue: a subscriber that falls
behind is marked ``overflowed`` and dropped instead of growing memory, and reconnects.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str
    data: Any
    at: float = field(default_factory=time.time)  # when it was published (wall clock)


@dataclass(eq=False)
class Subscription:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    overflowed: bool = field(default=False)

    def _put(self, ev: Event) -> None:
        """Runs in the subscriber's loop."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            # Make room for one marker; nothing more is queued, the reader resynchronises.
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(Event("overflow", None))

    async def get(self) -> Event:
        return await self.queue.get()


class EventBus:
    """Thread-safe fan-out; ``publish`` never blocks and never raises for a dead subscriber."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self.published = 0

    def subscribe(self, maxsize: int = 256) -> Subscription:
        """Call from inside the event loop that will read the subscription."""
        sub = Subscription(asyncio.get_running_loop(), asyncio.Queue(maxsize))
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, data: Any = None) -> None:
        ev = Event(kind, data)
        with self._lock:
            subs = list(self._subs)
            self.published += 1
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._put, ev)
            except RuntimeError:  # its loop is closed
                self.unsubscribe(sub)
