"""Device health: state from what arrives, with hysteresis, and the history of every change.

State lives in columns (numpy arrays indexed by device) so that one tick evaluates 100,000
devices with a handful of vector operations; only devices whose state changed reach Python
code. A device's state is three flags:

- ``online``: its signal is seen (agent heartbeat reports fresh packets, or media arrives);
- ``uploading``: its live media reaches the hub (segments arriving within ``upload_timeout_s``);
- ``intact``: online with no defect (low frame rate now, quality checks later).

The headline state is ``offline`` / ``degraded`` / ``uploading`` / ``online``. Every change closes
one interval and opens the next, so any rate can be recomputed for any window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vms.config import HealthConfig

ONLINE = 1
UPLOADING = 2
INTACT = 4

#: Defect bits. Quality checks register theirs with :func:`defect_bit`.
DEFECTS: dict[str, int] = {"low_fps": 1}

F64 = npt.NDArray[np.float64]


def defect_bit(name: str) -> int:
    """The bit for a named defect, allocating one the first time a check uses it."""
    if name not in DEFECTS:
        if len(DEFECTS) >= 32:
            raise ValueError("at most 32 defect kinds")
        DEFECTS[name] = 1 << len(DEFECTS)
    return DEFECTS[name]


def defect_names(bits: int) -> list[str]:
    return [name for name, bit in DEFECTS.items() if bits & bit]


def state_name(flags: int | None) -> str:
    if flags is None:
        return "unknown"
    if not flags & ONLINE:
        return "offline"
    if not flags & INTACT:
        return "degraded"
    if flags & UPLOADING:
        return "uploading"
    return "online"


def flags_of(online: bool, uploading: bool, intact: bool) -> int:
    return (ONLINE if online else 0) | (UPLOADING if uploading else 0) | (INTACT if intact else 0)


@dataclass(frozen=True, slots=True)
class Transition:
    """A device's state changed at ``at``; ``old`` is None for its first known state, ``new`` is
    None when the device left service (retired: its interval closes and no new one opens)."""

    idx: int
    old: int | None
    new: int | None
    at: float


class IntervalLog:
    """Closed intervals as growable columns, for vectorised reports."""

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        self.dev = np.zeros(capacity, np.int32)
        self.start = np.zeros(capacity, np.float64)
        self.end = np.zeros(capacity, np.float64)
        self.flags = np.zeros(capacity, np.uint8)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * len(self.dev))
        for name in ("dev", "start", "end", "flags"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def append(self, dev: int, start: float, end: float, flags: int) -> None:
        if self.n == len(self.dev):
            self._grow(self.n + 1)
        i = self.n
        self.dev[i], self.start[i], self.end[i], self.flags[i] = dev, start, end, flags
        self.n += 1

    def extend(self, dev: npt.ArrayLike, start: npt.ArrayLike, end: npt.ArrayLike, flags: npt.ArrayLike) -> None:
        d = np.asarray(dev, np.int32)
        k = len(d)
        if self.n + k > len(self.dev):
            self._grow(self.n + k)
        sl = slice(self.n, self.n + k)
        self.dev[sl], self.start[sl], self.end[sl], self.flags[sl] = d, start, end, flags
        self.n += k

    def prune(self, before: float) -> None:
        """Forget intervals that ended before ``before`` (they stay in the store)."""
        keep = self.end[: self.n] >= before
        k = int(keep.sum())
        if k == self.n:
            return
        for name in ("dev", "start", "end", "flags"):
            arr = getattr(self, name)
            arr[:k] = arr[: self.n][keep]
        self.n = k


@dataclass
class Availability:
    """Seconds per device in a window; index i is device i of the :class:`Health` table."""

    start: float
    end: float
    monitored_s: F64
    known_s: F64
    online_s: F64
    upload_s: F64
    intact_s: F64


def _ratio(num: float, den: float) -> float | None:
    return None if den <= 0 else min(1.0, num / den)


def rates(monitored: float, known: float, online: float, upload: float, intact: float) -> dict[str, float | None]:
    """Rates over monitored time: time with no record (hub down) counts against the device."""
    return {
        "monitored_s": round(monitored, 3),
        "unknown_s": round(max(0.0, monitored - known), 3),
        "online_s": round(online, 3),
        "online_rate": _ratio(online, monitored),
        "upload_rate": _ratio(upload, monitored),
        "intact_rate": _ratio(intact, monitored),
    }


class Health:
    """The state table. Not thread-safe: the hub runtime serialises access with one lock."""

    # Columns, one entry per device (see _COLUMNS for their fill values).
    last_signal: F64  # hub-clock time of the newest media packet seen
    signal_since: F64  # start of the current unbroken run of signal
    last_upload: F64  # arrival of the newest live segment
    last_report: F64  # last heartbeat that mentioned the device
    created_at: F64
    watched_from: F64  # when silence started to count: added, reinstated (the hub's start is later)
    open_start: F64  # start of the open interval
    flags: npt.NDArray[np.uint8]
    known: npt.NDArray[np.bool_]  # has an open interval
    defects: npt.NDArray[np.uint32]
    fps: F64
    bitrate: F64
    reconnects: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]
    agent: npt.NDArray[np.int32]  # index into the hub's agent list, -1 if none
    retired: npt.NDArray[np.bool_]  # out of service (an admin rejected it): no state, alerts or figures
    #: It carries channels that count in its place (a GB/T 28181 NVR, or an IPC that reports its
    #: picture as a channel): it has a state, but counting it too would count one camera twice.
    carrier: npt.NDArray[np.bool_]
    #: Whether it carries channels is not known yet (a device registered by GB/T 28181 before its catalog is
    #: read): it counts here as a device meanwhile, but is not shared with superiors, which would first
    #: add it and then, once it turns out a carrier, delete it.
    carrier_unknown: npt.NDArray[np.bool_]
    #: The device's own silence limit (s), for sources that report less often than agents (a GB/T
    #: 28181 device's keepalive); the config's ``offline_after_s`` unless set.
    offline_after: F64

    def __init__(self, cfg: HealthConfig, started_at: float, capacity: int = 1024) -> None:
        self.cfg = cfg
        self.started_at = started_at
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.n = 0
        self.log = IntervalLog()
        self._cap = 0
        self._grow(capacity)

    # -- table -------------------------------------------------------------------------------
    _COLUMNS = (
        ("last_signal", np.float64, -math.inf),
        ("signal_since", np.float64, math.inf),
        ("last_upload", np.float64, -math.inf),
        ("last_report", np.float64, -math.inf),
        ("created_at", np.float64, 0.0),
        ("watched_from", np.float64, 0.0),
        ("open_start", np.float64, 0.0),
        ("flags", np.uint8, 0),
        ("known", np.bool_, False),
        ("defects", np.uint32, 0),
        ("fps", np.float64, 0.0),
        ("bitrate", np.float64, 0.0),
        ("reconnects", np.int64, 0),
        ("gaps", np.int64, 0),
        ("agent", np.int32, -1),
        ("retired", np.bool_, False),
        ("carrier", np.bool_, False),
        ("carrier_unknown", np.bool_, False),
        ("offline_after", np.float64, 0.0),  # set to the config's by add()
    )

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap, 1024)
        for name, dtype, fill in self._COLUMNS:
            new = np.full(cap, fill, dtype)
            if self._cap:
                new[: self.n] = getattr(self, name)[: self.n]
            setattr(self, name, new)
        self._cap = cap

    def add(self, device_id: str, created_at: float) -> int:
        if device_id in self.index:
            return self.index[device_id]
        if self.n == self._cap:
            self._grow(self.n + 1)
        i = self.n
        self.ids.append(device_id)
        self.index[device_id] = i
        self.created_at[i] = created_at
        self.watched_from[i] = created_at
        self.offline_after[i] = self.cfg.offline_after_s
        self.n += 1
        return i

    def retire(self, idx: int, now: float) -> Transition | None:
        """Take a device out of service: its open interval closes now and none opens until it is
        reinstated, so it neither alerts nor counts in any figure; its history and media stay."""
        if self.retired[idx]:
            return None
        self.retired[idx] = True
        if not self.known[idx]:
            return None
        old = int(self.flags[idx])
        at = max(now, float(self.open_start[idx]))
        self.log.append(idx, float(self.open_start[idx]), at, old)
        self.known[idx] = False
        return Transition(idx, old, None, at)

    def reinstate(self, idx: int, now: float) -> None:
        """Back in service: it gets a state like a newly added device (after the same grace)."""
        self.retired[idx] = False
        self.watched_from[idx] = now

    def in_service(self, members: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """``members`` without retired devices and carriers of channels: the ones that count in a
        center's figures."""
        return members[~(self.retired[members] | self.carrier[members])]

    def restore_open(self, idx: int, start: float, flags: int) -> None:
        """Resume an interval that is still open in the store (hub restarted in time)."""
        self.known[idx] = True
        self.open_start[idx] = start
        self.flags[idx] = flags

    # -- observations --------------------------------------------------------------------------
    def observe_signal(self, idx: int, seen_at: float, now: float) -> None:
        """A media packet of device ``idx`` was seen at ``seen_at`` (hub clock)."""
        t = min(seen_at, now)
        last = float(self.last_signal[idx])
        if t <= last:
            return
        if t - last > self.silence_limit(idx):
            self.signal_since[idx] = t
        self.last_signal[idx] = t

    def silence_limit(self, idx: int) -> float:
        """Seconds without signal after which device ``idx`` is offline."""
        return float(self.offline_after[idx])

    def set_silence_limit(self, idx: int, seconds: float | None) -> None:
        """Give device ``idx`` its own silence limit (None: the config's); 0 makes it offline at the
        next tick, dated at its last signal (a device that said goodbye or whose connection closed)."""
        self.offline_after[idx] = self.cfg.offline_after_s if seconds is None else seconds

    def observe_upload(self, idx: int, content_end: float, now: float) -> None:
        """Media of device ``idx`` covering up to ``content_end`` arrived at ``now``.

        Only live media counts as upload; a backlog segment from an outage still proves the
        camera had signal at ``content_end`` but does not make the device ``uploading``.
        """
        self.observe_signal(idx, content_end, now)
        if now - content_end <= self.cfg.upload_timeout_s:
            self.last_upload[idx] = max(float(self.last_upload[idx]), now)

    def report(
        self, idx: int, now: float, *, fps: float, bitrate: float, reconnects: int, gaps: int, connected: bool
    ) -> None:
        """Stream figures of device ``idx``; a connected stream below ``min_fps`` is the ``low_fps`` defect.

        An fps of 0 is a rate not measured yet (the agent reports 0 until its first 2 s window ends,
        and the hub's own GB/T 28181 streams likewise), not a low one: counting it would degrade every
        camera at every connect. A stream that really delivers no frames is caught without it: its
        packet age grows, so it goes offline after ``offline_after_s`` (and the agent's stall watchdog
        reports it disconnected), and without segments it stops ``uploading``.
        """
        self.last_report[idx] = now
        self.fps[idx] = fps
        self.bitrate[idx] = bitrate
        self.reconnects[idx] = reconnects
        self.gaps[idx] = gaps
        low = connected and 0 < fps < self.cfg.min_fps
        self.set_defect(idx, DEFECTS["low_fps"], low)

    def set_defect(self, idx: int, bit: int, on: bool) -> None:
        if on:
            self.defects[idx] |= np.uint32(bit)
        else:
            self.defects[idx] &= np.uint32(~bit & 0xFFFFFFFF)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, now: float) -> list[Transition]:
        """One tick: new flags for every device, returned only where something changed."""
        n = self.n
        if n == 0:
            return []
        c = self.cfg
        limit = self.offline_after[:n]
        fresh = (now - self.last_signal[:n]) <= limit
        prev = self.flags[:n]
        known = self.known[:n]
        steady = (now - self.signal_since[:n]) >= c.recover_after_s
        on = np.where(known & ((prev & ONLINE) != 0), fresh, fresh & steady)
        # A source that reports less often than agents (a lower platform's keepalive) vouches for the
        # upload as long as for the signal: the upload window is at least the silence limit.
        up = on & ((now - self.last_upload[:n]) <= np.maximum(c.upload_timeout_s, limit))
        intact = on & (self.defects[:n] == 0)
        new = on.astype(np.uint8) * ONLINE | up.astype(np.uint8) * UPLOADING | intact.astype(np.uint8) * INTACT
        changed = known & (new != prev)
        # A device never seen since start-up gets its first state once it is steady, or once it has
        # been silent for the whole offline delay; a signal that is fresh but not yet steady waits.
        # The delay runs from the hub's start or from when the device was added or reinstated,
        # whichever is later: a camera an admin just accepted gets the time its agent needs to
        # start relaying it, instead of an offline alert at the next tick.
        # A retired device has no open interval (not known) and gets none.
        since = np.maximum(self.watched_from[:n], self.started_at)
        grace_over = now - since >= np.maximum(limit, c.startup_grace_s)
        first = ~known & ~self.retired[:n] & (on | (~fresh & grace_over))
        out: list[Transition] = []
        for i in np.flatnonzero(changed | first).tolist():
            out.append(self._apply(i, int(new[i]), now))
        return out

    def _apply(self, i: int, new: int, now: float) -> Transition:
        was_known = bool(self.known[i])
        old = int(self.flags[i]) if was_known else None
        # A first interval never starts before the device was watched: added, or reinstated after a
        # retirement (whose interval closed then), nor before this hub started.
        floor = float(self.open_start[i]) if was_known else max(self.started_at, float(self.watched_from[i]))
        went_down = old is not None and old & ONLINE and not new & ONLINE
        came_up = (old is None or not old & ONLINE) and new & ONLINE
        if went_down:
            at = float(self.last_signal[i])
        elif came_up:
            at = float(self.signal_since[i])
        else:
            at = now
        at = min(max(at, floor), now)
        if was_known and old is not None:
            self.log.append(i, float(self.open_start[i]), at, old)
        self.flags[i] = new
        self.known[i] = True
        self.open_start[i] = at
        return Transition(i, old, new, at)

    def close_all(self, at: float) -> list[int]:
        """Close every open interval at ``at`` (clean shutdown); returns the devices closed."""
        closed = np.flatnonzero(self.known[: self.n]).tolist()
        for i in closed:
            self.log.append(i, float(self.open_start[i]), max(at, float(self.open_start[i])), int(self.flags[i]))
            self.known[i] = False
        return closed

    # -- figures -------------------------------------------------------------------------------
    def availability(self, start: float, end: float, now: float, log: IntervalLog | None = None) -> Availability:
        """Seconds online / uploading / intact per device in ``[start, end)``.

        ``log`` defaults to the in-memory history; the runtime passes one read from the store
        for windows older than the cache.
        """
        n = self.n
        lg = log if log is not None else self.log
        end = min(end, now)
        k = lg.n
        dev = lg.dev[:k]
        s = np.clip(lg.start[:k], start, end)
        e = np.clip(lg.end[:k], start, end)
        d = np.maximum(e - s, 0.0)
        f = lg.flags[:k]
        # open intervals
        known = self.known[:n]
        os_ = np.clip(self.open_start[:n], start, end)
        od = np.where(known, np.maximum(end - os_, 0.0), 0.0)
        of = self.flags[:n]

        def total(mask_closed: npt.NDArray[np.bool_] | None, mask_open: npt.NDArray[np.bool_] | None) -> F64:
            wc = d if mask_closed is None else d * mask_closed
            wo = od if mask_open is None else od * mask_open
            return np.bincount(dev, weights=wc, minlength=n)[:n].astype(np.float64) + wo

        monitored = np.maximum(end - np.maximum(start, self.created_at[:n]), 0.0)
        return Availability(
            start=start,
            end=end,
            monitored_s=monitored,
            known_s=total(None, None),
            online_s=total((f & ONLINE) != 0, (of & ONLINE) != 0),
            upload_s=total((f & UPLOADING) != 0, (of & UPLOADING) != 0),
            intact_s=total((f & INTACT) != 0, (of & INTACT) != 0),
        )

    def counts(self, members: npt.NDArray[np.int64]) -> dict[str, int]:
        """Devices by state right now among ``members`` (retired ones and carriers not counted)."""
        members = self.in_service(members)
        fl = self.flags[members]
        kn = self.known[members]
        return {
            "devices": len(members),
            "online": int(np.count_nonzero(kn & ((fl & ONLINE) != 0))),
            "uploading": int(np.count_nonzero(kn & ((fl & UPLOADING) != 0))),
            "intact": int(np.count_nonzero(kn & ((fl & INTACT) != 0))),
            "unknown": int(np.count_nonzero(~kn)),
        }

    def state_of(self, idx: int) -> str:
        if self.retired[idx]:
            return "retired"
        return state_name(int(self.flags[idx]) if self.known[idx] else None)
