"""HTTP to the hub: register, heartbeat, upload spooled segments, report discovered cameras.

Nothing here can lose video: a segment leaves the spool only when the hub answered 201/200 for
it (or it is moved to ``rejected/`` for a reason resending cannot fix). Hub or network trouble
pauses all uploads with exponential backoff and jitter while ingest keeps spooling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx

from vms.kernel.protocol import (
    CameraReport,
    CameraReportReply,
    CameraStats,
    Heartbeat,
    HeartbeatReply,
    Register,
    RegisterReply,
)

from .spool import Segment, Spool

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
#: A device the hub refused (403) is tried again after this long, in case it was granted meanwhile.
BLOCKED_RETRY_S = 60.0
#: Checksum mismatches (400) for one segment before it counts as a hub problem and backs off.
MAX_CHECKSUM_RETRIES = 3


class Outcome(Enum):
    STORED = "stored"  # 201
    DUPLICATE = "duplicate"  # 200
    CONFLICT = "conflict"  # 409: kept in rejected/
    RESEND = "resend"  # 400 checksum mismatch
    FORBIDDEN = "forbidden"  # 403: device not under the agent's prefixes
    TOO_LARGE = "too_large"  # 413: kept in rejected/
    HUB_FULL = "hub_full"  # 507
    RETRY = "retry"  # network error, 5xx, anything unexpected
    CORRUPT = "corrupt"  # the file no longer matches its checksum: kept in rejected/
    GONE = "gone"  # the spool dropped it meanwhile
    DROPPED = "dropped"  # a live-only segment the hub did not take: deleted, never retried


@dataclass
class UplinkStats:
    uploaded: int = 0
    duplicates: int = 0
    conflicts: int = 0
    resends: int = 0
    too_large: int = 0
    corrupt: int = 0
    failures: int = 0
    heartbeats: int = 0
    live_uploaded: int = 0  # live-only (sub-stream) segments the hub took
    rejected_devices: set[str] = field(default_factory=set)


class HubError(Exception):
    """The hub answered, but not with what the protocol promises."""


class Uplink:
    """Talks to one hub; ``run()`` keeps heartbeating and uploading until the stop event is set."""

    def __init__(
        self,
        hub_url: str,
        token: str,
        spool: Spool,
        camera_stats: Callable[[], list[CameraStats]],
        *,
        heartbeat_interval_s: float = 2.0,
        max_inflight: int = 4,
        client: httpx.AsyncClient | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.spool = spool
        self.camera_stats = camera_stats
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_inflight = max_inflight
        self.stats = UplinkStats()
        self.prefixes: list[str] = []
        self.cameras_supported = True
        self._client = client or httpx.AsyncClient(timeout=request_timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._seq = 0
        self._blocked: dict[str, float] = {}  # device id -> monotonic time it was refused
        self._checksum_failures: dict[str, int] = {}
        self._pause_until = 0.0
        self._unreachable_pause = False  # the current pause is for network errors / 5xx only
        self._failures = 0
        self._inflight: set[str] = set()
        # Live-only segments (cameras' sub streams), sent beside the spool; see upload_live.
        self.live_spool: Spool | None = None
        self.live_supported = True
        # Set when the agent analyses its cameras: a segment's motion ratio, sent with the segment.
        self.motion_of: Callable[[Segment], Awaitable[float | None]] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- backoff --------------------------------------------------------------------------------

    def _backoff(self, why: str, *, unreachable: bool = False) -> None:
        """Pause uploads; uploads that fail together (all in flight) count as one failure."""
        now = time.monotonic()
        if now < self._pause_until:
            self._unreachable_pause = self._unreachable_pause and unreachable
            return
        self._failures += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1)) * random.uniform(0.75, 1.25)
        self._pause_until = now + delay
        self._unreachable_pause = unreachable
        log.warning("hub: %s; pausing uploads for %.1f s", why, delay)

    def _ok(self) -> None:
        self._failures = 0

    def _hub_reachable(self) -> None:
        """A heartbeat got through: end a pause that was only for an unreachable hub at once."""
        if self._unreachable_pause and self._pause_until > time.monotonic():
            log.info("hub: reachable again, resuming uploads")
            self._pause_until = 0.0
            self._failures = 0
        self._unreachable_pause = False

    # --- register and heartbeat -----------------------------------------------------------------

    async def register(self) -> RegisterReply:
        body = Register(version=AGENT_VERSION, hostname=socket.gethostname())
        r = await self._client.post(f"{self.hub_url}/api/v1/agents/register",
                                    content=body.model_dump_json(), headers=self._json_headers())
        if r.status_code not in (200, 201):
            raise HubError(f"register: hub answered {r.status_code}: {_short(r)}")
        reply = RegisterReply.model_validate_json(r.content)
        self.prefixes = list(reply.prefixes)
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        log.info("registered with the hub as %s, prefixes %s", reply.agent_id, ", ".join(reply.prefixes))
        return reply

    async def register_until_ok(self, stop: asyncio.Event) -> RegisterReply | None:
        failures = 0
        while not stop.is_set():
            try:
                return await self.register()
            except (httpx.HTTPError, HubError, ValueError) as exc:
                failures += 1
                delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)
                log.warning("register failed (%s); retrying in %.1f s", _err(exc), delay)
                await _wait(stop, delay)
        return None

    async def heartbeat(self) -> HeartbeatReply:
        self._seq += 1
        spool = self.spool.stats()
        if self.live_spool is not None:
            spool.live_dropped_segments = self.live_spool.live_dropped
        hb = Heartbeat(seq=self._seq, sent_at=time.time(), cameras=self.camera_stats(), spool=spool)
        r = await self._client.post(f"{self.hub_url}/api/v1/agents/heartbeat",
                                    content=hb.model_dump_json(), headers=self._json_headers())
        if r.status_code != 200:
            raise HubError(f"heartbeat: hub answered {r.status_code}: {_short(r)}")
        reply = HeartbeatReply.model_validate_json(r.content)
        self.stats.heartbeats += 1
        self._hub_reachable()
        rejected = {rej.device_id for rej in reply.rejected}
        for rej in reply.rejected:
            if rej.device_id not in self.stats.rejected_devices:
                log.error("hub rejected device %s: %s", rej.device_id, rej.reason)
        self.stats.rejected_devices = rejected
        if reply.warning:
            log.warning("hub: %s", reply.warning)
        if reply.heartbeat_interval_s > 0:
            self.heartbeat_interval_s = reply.heartbeat_interval_s
        return reply

    async def report_cameras(self, cameras: Sequence[dict[str, Any]]) -> CameraReportReply | None:
        """Tell the hub which cameras this agent has; its answer says which ones may be relayed.

        None when the hub takes no camera reports (404): then nothing is accepted by a decision.
        """
        if not self.cameras_supported:
            return None
        body = CameraReport.model_validate({"cameras": list(cameras)})
        r = await self._client.post(f"{self.hub_url}/api/v1/agents/cameras",
                                    content=body.model_dump_json(), headers=self._json_headers())
        if r.status_code in (404, 405):
            self.cameras_supported = False
            log.info("hub does not take camera reports yet (%d); carrying on", r.status_code)
            return None
        if r.status_code >= 400:
            raise HubError(f"camera report: hub answered {r.status_code}: {_short(r)}")
        return CameraReportReply.model_validate_json(r.content)

    def _json_headers(self) -> dict[str, str]:
        return {**self._headers, "Content-Type": "application/json"}

    # --- segments -------------------------------------------------------------------------------

    async def upload(self, seg: Segment) -> Outcome:
        """Send one segment and act on the answer (ack, keep, reject, back off)."""
        try:
            data = await asyncio.to_thread(seg.path.read_bytes)
        except FileNotFoundError:
            return Outcome.GONE
        # The checksum was computed when the segment was written, and the hub verifies it: the
        # file is hashed again here only when the hub reports a mismatch (saves a hash per upload).
        url = f"{self.hub_url}/api/v1/agents/segments/{seg.device_id}"
        headers = {**self._headers, "Content-Type": "video/mp2t", "X-VMS-SHA256": seg.sha256,
                   "X-VMS-Sent-At": f"{time.time():.6f}"}
        params = {"start": f"{seg.start:.6f}", "duration": f"{seg.duration:.6f}"}
        if self.motion_of is not None and (ratio := await self.motion_of(seg)) is not None:
            headers["X-VMS-Motion-Ratio"] = f"{ratio:.4f}"
        try:
            r = await self._client.put(url, params=params, content=data, headers=headers)
        except httpx.HTTPError as exc:
            self.stats.failures += 1
            self._backoff(f"cannot send segment ({_err(exc)})", unreachable=True)
            return Outcome.RETRY
        code = r.status_code
        if code in (200, 201):
            self._ok()
            self._checksum_failures.pop(seg.name, None)
            self.spool.ack(seg)
            if code == 201:
                self.stats.uploaded += 1
                return Outcome.STORED
            self.stats.duplicates += 1
            return Outcome.DUPLICATE
        if code == 409:
            self.stats.conflicts += 1
            self.spool.reject(seg, f"hub has a different segment for this device and start (409): {_short(r)}")
            return Outcome.CONFLICT
        if code == 400:
            if await asyncio.to_thread(_sha256_hex, data) != seg.sha256:
                self.stats.corrupt += 1
                self.spool.reject(seg, "file on disk no longer matches its sha256")
                return Outcome.CORRUPT
            n = self._checksum_failures.get(seg.name, 0) + 1
            self._checksum_failures[seg.name] = n
            self.stats.resends += 1
            log.warning("segment %s: hub saw a checksum mismatch (attempt %d): %s", seg.name, n, _short(r))
            if n >= MAX_CHECKSUM_RETRIES:
                self._backoff("repeated checksum mismatches")
            return Outcome.RESEND
        if code == 403:
            if seg.device_id not in self._blocked:
                log.error("hub refused device %s (403); keeping its segments and not sending them for now: %s",
                          seg.device_id, _short(r))
            self._blocked[seg.device_id] = time.monotonic()
            return Outcome.FORBIDDEN
        if code == 413:
            self.stats.too_large += 1
            self.spool.reject(seg, f"hub says the segment is too large (413, {seg.size} bytes)")
            return Outcome.TOO_LARGE
        self.stats.failures += 1
        if code == 507:
            self._backoff("hub storage is full (507)")
            return Outcome.HUB_FULL
        self._backoff(f"segment upload answered {code}: {_short(r)}", unreachable=code >= 500)
        return Outcome.RETRY

    async def upload_live(self, seg: Segment) -> Outcome:
        """Send one live-only (sub-stream) segment; unless the hub takes it, it is dropped, never kept.

        A network failure leaves it in the live-only spool, which drops it once it is no longer fresh.
        """
        spool = self.live_spool
        assert spool is not None
        try:
            data = await asyncio.to_thread(seg.path.read_bytes)
        except FileNotFoundError:
            return Outcome.GONE
        headers = {**self._headers, "Content-Type": "video/mp2t", "X-VMS-SHA256": seg.sha256,
                   "X-VMS-Sent-At": f"{time.time():.6f}"}
        params = {"start": f"{seg.start:.6f}", "duration": f"{seg.duration:.6f}", "stream": "sub"}
        try:
            r = await self._client.put(f"{self.hub_url}/api/v1/agents/segments/{seg.device_id}",
                                       params=params, content=data, headers=headers)
        except httpx.HTTPError as exc:
            self.stats.failures += 1
            self._backoff(f"cannot send segment ({_err(exc)})", unreachable=True)
            return Outcome.RETRY
        if r.status_code in (200, 201) and not _says_sub(r):
            # A hub that predates sub streams would record them as main footage: stop sending them.
            self.live_supported = False
            log.error("hub does not know sub streams (no stream=sub in its answer); sub streams are not relayed")
        elif r.status_code in (200, 201):
            self._ok()
            spool.ack(seg)
            self.stats.live_uploaded += 1
            return Outcome.STORED
        spool.drop(seg)
        log.debug("live-only segment %s dropped: hub answered %d: %s", seg.name, r.status_code, _short(r))
        return Outcome.DROPPED

    def blocked_devices(self) -> set[str]:
        now = time.monotonic()
        for dev, since in list(self._blocked.items()):
            if now - since > BLOCKED_RETRY_S:
                del self._blocked[dev]
        return set(self._blocked)

    async def upload_loop(self, stop: asyncio.Event, idle_s: float = 0.2) -> None:
        """Keep up to ``max_inflight`` uploads running: live segments first, backlog behind."""
        tasks: set[asyncio.Task[Outcome]] = set()
        names: dict[asyncio.Task[Outcome], str] = {}
        live: set[asyncio.Task[Outcome]] = set()  # live-only uploads: at most half the slots
        try:
            while not stop.is_set():
                wait = self._pause_until - time.monotonic()
                if wait > 0:
                    await _wait(stop, min(wait, 1.0))
                    continue
                live &= tasks
                live_free = min(self.max_inflight - len(tasks), max(1, self.max_inflight // 2) - len(live))
                if self.live_spool is not None and self.live_supported and live_free > 0:
                    for seg in self.live_spool.next_batch(live_free, exclude=self._inflight,
                                                          skip_devices=self.blocked_devices()):
                        t = asyncio.create_task(self.upload_live(seg))
                        tasks.add(t)
                        live.add(t)
                        names[t] = seg.name
                        self._inflight.add(seg.name)
                free = self.max_inflight - len(tasks)
                if free > 0:
                    batch = self.spool.next_batch(free, exclude=self._inflight,
                                                  skip_devices=self.blocked_devices())
                    for seg in batch:
                        t = asyncio.create_task(self.upload(seg))
                        tasks.add(t)
                        names[t] = seg.name
                        self._inflight.add(seg.name)
                if not tasks:
                    await _wait(stop, idle_s)
                    continue
                done, _ = await asyncio.wait(tasks, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    tasks.discard(t)
                    self._inflight.discard(names.pop(t))
                    if t.exception() is not None:
                        log.error("upload failed unexpectedly: %r", t.exception())
                        self._backoff("unexpected upload error")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._inflight.clear()

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                await self.heartbeat()
                failures = 0
            except (httpx.HTTPError, HubError, ValueError) as exc:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("heartbeat failed (%s)", _err(exc))
            await _wait(stop, max(0.05, self.heartbeat_interval_s - (time.monotonic() - t0)))

    async def run(self, stop: asyncio.Event) -> None:
        """Register (retrying), then heartbeat and upload until ``stop`` is set."""
        if await self.register_until_ok(stop) is None:
            return
        await asyncio.gather(self.heartbeat_loop(stop), self.upload_loop(stop))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _says_sub(r: httpx.Response) -> bool:
    try:
        return bool(r.json().get("stream") == "sub")
    except ValueError:
        return False


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(r: httpx.Response) -> str:
    text = r.text.strip().replace("\n", " ")
    return text[:200] or r.reason_phrase


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
