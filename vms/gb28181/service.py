"""The center's GB/T 28181 side: devices and NVRs register, keep alive and tell their catalog.

- **REGISTER** is challenged with a digest (``digest.Nonces``: stateless nonces, replay refused),
  checked against the device's password (or the domain's), refused (403) for IDs outside what the
  center serves; ``Expires: 0`` or an expired registration is a goodbye.
- A registered device is reported to the hub's **acceptance** like a discovered ONVIF camera
  (pending until an admin accepts it, or ``gb28181.auto_accept``), and so is every channel of its
  **catalog**, which the center asks for after each new registration.
- **Keepalive** messages are signal for the device and for each channel whose catalog status is ON;
  silence longer than ``keepalive_interval_s × keepalive_misses`` makes them offline, and a
  goodbye, an expired registration or a closed TCP connection does at once. Catalog events OFF and
  VLOST darken a channel, ON lights it (and clears a defect), DEFECT raises a ``device_defect``
  defect (so a ``device_degraded`` alert through the one alert writer).
- **Media** (``play.py``, ``media.py``): every accepted channel is invited and recorded through the
  same segmenter and ingest as an agent's camera; for a streamed channel the video, not keepalives,
  is its signal, so lost video is seen within ``media_timeout_s``. A device all of whose streams
  stopped is probed (DeviceStatus): no answer within ``probe_timeout_s`` makes it and its channels
  offline at once, long before its keepalives would be missed.
- **DeviceInfo / DeviceStatus** answers are kept with the registration, for the views.

The SIP side runs its own asyncio loop in one thread (``start``/``stop`` with the hub); the hub's
services are reached only through the callables given here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vms.alerts import AlertKind
from vms.archive.store import Outcome
from vms.auth import Principal, Role, gb_agent
from vms.centers import CenterTree
from vms.config import Gb28181Config, SuperiorConfig
from vms.gb28181 import digest, manscdp, sip
from vms.gb28181.cascade import Cascade, CascadeLink
from vms.gb28181.media import ArchiveSink
from vms.gb28181.play import Player
from vms.gb28181.transport import Peer, Transport
from vms.kernel import ids
from vms.kernel.protocol import CameraReport, CameraReportReply, ReportedCamera
from vms.media.segment import Segment
from vms.services.alerting import NewAlert

log = logging.getLogger(__name__)

DEFECT = "device_defect"  # the defect a device's own DEFECT catalog event raises
TOLD_ONLINE = ("ON", "VLOST", "DEFECT")  # a lower platform's camera states that are online ...
TOLD_UPLOADING = ("ON", "DEFECT")  # ... and those whose video reaches it


@dataclass
class Registration:
    device_id: str
    peer: Peer
    contact: str
    expires_at: float
    registered_at: float
    channels: dict[str, str] = field(default_factory=dict)  # channel ID -> catalog status (ON, OFF, VLOST ...)
    catalog_done: bool = False  # the catalog query after registering ended (answered or not)
    reachable: bool = True  # False once it failed to answer a probe; any message from it sets it again
    info: dict[str, str] = field(default_factory=dict)  # its DeviceInfo and DeviceStatus answers
    carrier_told: bool = False  # the registry knows whether it carries channels (see _carriers)

    @property
    def platform(self) -> bool:
        """A lower platform (a town center, type 200): its word says whether its cameras send video,
        and its footage stays there (nothing is invited to record it here)."""
        return self.device_id[10:13] == "200"


@dataclass
class _Catalog:
    """Catalog answers being gathered for one query (several MESSAGEs: SumNum, DeviceList Num)."""

    device_id: str
    expected: int | None = None
    items: dict[str, manscdp.CatalogItem] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Records:
    """RecordInfo answers being gathered for one query (several MESSAGEs: SumNum, RecordList Num)."""

    channel: str
    expected: int | None = None
    items: list[dict[str, str]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class HubLink:
    """What the GB/T 28181 side asks of the hub's services."""

    report: Callable[[Principal, CameraReport], CameraReportReply]  # Acceptance.report
    signal: Callable[[list[str], float, float | None], None]  # Registry.signal
    silence: Callable[[list[str]], None]  # Registry.silence
    agent_seen: Callable[[str, float, float], None]  # (name, at, offline_after): the device as an "agent"
    set_quality: Callable[[str, str, bool], None]  # Registry.set_quality
    streamable: Callable[[str], bool] = lambda _d: False  # accepted and in service (known, not held)
    figures: Callable[[str, float, float, int], None] = lambda *_a: None  # Registry.stream_report
    told_upload: Callable[[list[str], bool, float], None] = lambda *_a: None  # Registry.told_upload
    carrier: Callable[[str, bool], bool] = lambda *_a: False  # Registry.set_carrier
    place: Callable[[str, float | None, float | None, str], bool] = lambda *_a: False  # Coverage.place_reported
    alarm: Callable[[NewAlert], int] = lambda _a: 0  # AlertWriter.raise_or_update
    store_segment: Callable[[str, Segment], Outcome] | None = None  # SegmentIngest.store_own
    withdraw: Callable[[str, bool], None] = lambda *_a: None  # Monitor.withdraw: a platform's DEL, or ADD again


class RateLimit:
    """A token bucket per source address (bounded: the oldest address is forgotten first)."""

    def __init__(self, rate: float, burst: float, max_sources: int = 10_000) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: dict[str, tuple[float, float]] = {}
        self.dropped = 0

    def allow(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.pop(next(iter(self._buckets)))
        if not ok:
            self.dropped += 1
        return ok


class GbService:
    def __init__(self, cfg: Gb28181Config, tree: CenterTree, hub: HubLink, clock: Callable[[], float] = time.time,
                 secret: bytes | None = None, media_dir: Path | None = None,
                 superiors: list[SuperiorConfig] | None = None, up: CascadeLink | None = None) -> None:
        """``media_dir``: where segments cut from GB media wait for the store (on the archive's disk);
        without it, or with ``record`` off, nothing is invited. ``superiors`` and ``up``: the platforms
        this center registers with, and what they are shown (``cascade.py``)."""
        self.cfg = cfg
        self.tree = tree
        self.hub = hub
        self.clock = clock
        self.server_id = cfg.server_id or ""
        self.realm = cfg.realm
        self.nonces = digest.Nonces(secret or secrets.token_bytes(32))
        self.limit = RateLimit(cfg.register_rate, 2 * cfg.register_rate)
        self.registrations: dict[str, Registration] = {}
        self._platforms: dict[str, Registration] = {}  # the lower platforms among them: looked up per view
        self.counters: dict[str, int] = dict.fromkeys(
            ("registered", "refused", "bad_password", "replayed_nonces", "keepalives", "unregistered_messages",
             "catalog_items", "catalog_incomplete", "probes_unanswered", "alarms", "gaps"), 0)
        self.transport = Transport(cfg.host, cfg.port, self._handle, self._closed)
        self.player: Player | None = None
        self.sink: ArchiveSink | None = None
        if media_dir is not None and hub.store_segment is not None:  # ``record`` off: streams only when watched
            self.sink = ArchiveSink(media_dir, hub.store_segment, lambda d: gb_agent(self._owner(d)))
            self.player = Player(cfg, self.transport, self.sink, self._media_signal, hub.silence, self._probe)
            self.transport.on_stray = self.player.on_stray
            self.player.backfill = self._backfill
        self._catalogs: dict[int, _Catalog] = {}
        self._records: dict[int, _Records] = {}
        self._sn = secrets.randbelow(10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # registrations are read by views from other threads
        self._reports = ThreadPoolExecutor(1, thread_name_prefix="vms-gb28181-report")
        self.cascade: Cascade | None = None
        if superiors and up is not None:
            self.cascade = Cascade(superiors, cfg, tree, self.transport, up, clock, self._reports.submit)

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen on UDP and TCP; raises if the port cannot be bound (a clear start-up error)."""
        self._thread = threading.Thread(target=self._run, name="vms-gb28181", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"GB/T 28181: cannot listen on {self.cfg.host}:{self.cfg.port}: {self._error}")
        if self.sink is not None:
            self.sink.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.transport.start())
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        expiry = loop.create_task(self._expire_loop())
        upward = loop.create_task(self.cascade.run()) if self.cascade is not None else None
        try:
            loop.run_forever()
        finally:
            expiry.cancel()
            if upward is not None:
                upward.cancel()
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(self.transport.close())
            loop.close()

    def stop(self) -> None:
        """Hang up every stream, finish and store its open segment, then close the SIP side."""
        receivers: list[Any] = []
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            player, transport, cascade = self.player, self.transport, self.cascade

            async def hang_up() -> list[Any]:
                """BYE to every stream, then no new connections: a device connecting while the loop
                stops would otherwise get a connection no task serves."""
                out = player.shutdown() if player is not None else []
                if cascade is not None:
                    await cascade.goodbye()
                await transport.close()
                return out

            with contextlib.suppress(Exception):
                receivers = asyncio.run_coroutine_threadsafe(hang_up(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
        for rx in receivers:
            rx.join(10)
        if self.sink is not None:
            self.sink.stop()
        self._reports.shutdown(wait=True)

    # -- requests -----------------------------------------------------------------------------------
    def _handle(self, req: sip.Request, peer: Peer) -> sip.Response | None:
        if self.cascade is not None and self.cascade.handles(req):
            return self.cascade.handle(req, peer)
        if req.method == "REGISTER":
            return self._register(req, peer)
        if req.method == "MESSAGE":
            return self._message(req, peer)
        if req.method == "BYE" and self.player is not None:
            return self.player.on_bye(req)
        if req.method == "NOTIFY":
            return self._notify(req)
        if req.method in ("OPTIONS", "BYE", "INFO", "SUBSCRIBE"):
            return sip.response_to(req, 200) if req.method == "OPTIONS" else sip.response_to(req, 501)
        if req.method == "ACK":
            return None
        return sip.response_to(req, 405)

    def _register(self, req: sip.Request, peer: Peer) -> sip.Response | None:
        now = self.clock()
        if not self.limit.allow(peer.host, now):
            self.transport.counters.warn("register-flood", "SIP: REGISTER flood from %s: dropping (%d so far)",
                                         peer.host, self.limit.dropped)
            return None
        device_id = sip.uri_user(sip.parse_name_addr(req.headers.get("To") or "").uri)
        try:
            ids.parse(device_id)
        except ids.InvalidDeviceId as exc:
            self.counters["refused"] += 1
            return sip.response_to(req, 400, f"Bad Request (invalid device ID: {exc})"[:120])
        if not self._serves(device_id):
            self.counters["refused"] += 1
            log.warning("GB/T 28181: %s from %s refused: outside the IDs this center serves", device_id, peer)
            return sip.response_to(req, 403, "Forbidden (ID outside this center)")
        auth_value = req.headers.get("Authorization")
        if auth_value is None:
            return self._challenge(req, now)
        try:
            auth = digest.parse_authorization(auth_value)
        except digest.DigestError as exc:
            return sip.response_to(req, 400, f"Bad Request ({exc})"[:120])
        if auth.get("username") != device_id or auth.get("realm") != self.realm:
            self.counters["refused"] += 1
            return sip.response_to(req, 403, "Forbidden (username or realm does not match)")
        if not digest.verify(auth, "REGISTER", self.cfg.passwords.get(device_id, self.cfg.password)):
            self.counters["bad_password"] += 1
            log.warning("GB/T 28181: %s from %s: wrong password", device_id, peer)
            return sip.response_to(req, 403, "Forbidden (wrong password)")
        # Only after the response is right: checking records the nonce count, which a stranger must not burn.
        verdict = self.nonces.check(auth.get("nonce", ""), auth.get("nc"), now)
        if verdict == "stale":
            return self._challenge(req, now, stale=True)
        if verdict != "ok":  # forged or replayed: a fresh challenge, never a registration
            self.counters["replayed_nonces"] += 1
            log.warning("GB/T 28181: %s from %s: %s nonce", device_id, peer, verdict)
            return self._challenge(req, now)
        expires = _expires(req)
        if expires == 0:
            self._goodbye(device_id, "de-registered")
            return self._ok(req, 0)
        if expires < self.cfg.min_expires_s:
            resp = sip.response_to(req, 423)
            resp.headers.set("Min-Expires", str(self.cfg.min_expires_s))
            return resp
        expires = min(expires, self.cfg.max_expires_s)
        contact = req.headers.get("Contact") or ""
        with self._lock:
            known = self.registrations.get(device_id)
            fresh = known is None or known.peer != peer
            if fresh:  # new, or from another address (a reboot, a new NAT binding): its catalog is asked again
                reg = Registration(device_id, peer, contact, now + expires, now)
                if known is not None:
                    reg.channels = dict(known.channels)
                self.registrations[device_id] = reg
                if reg.platform:
                    self._platforms[device_id] = reg
            else:  # a refresh: the same registration (a catalog query under way keeps writing to it)
                assert known is not None
                reg = known
                reg.contact, reg.expires_at = contact, now + expires
        if fresh:
            if known is not None and self.player is not None:
                self.player.restart(device_id)
            self.counters["registered"] += 1
            log.info("GB/T 28181: %s registered from %s for %d s", device_id, peer, expires)
            self._report(device_id, [ReportedCamera(device_id=device_id, source="gb28181",
                                                    address=f"{peer.host}:{peer.port}")])
            assert self._loop is not None
            self._loop.create_task(self._ask_catalog(device_id))
        self._alive(reg, now)
        return self._ok(req, expires)

    def _challenge(self, req: sip.Request, now: float, stale: bool = False) -> sip.Response:
        ch = digest.Challenge(self.realm, self.nonces.issue(now), self.cfg.digest_algorithm, stale=stale)
        resp = sip.response_to(req, 401, to_tag=sip.new_tag())
        resp.headers.set("WWW-Authenticate", ch.header())
        return resp

    def _ok(self, req: sip.Request, expires: int) -> sip.Response:
        resp = sip.response_to(req, 200, to_tag=sip.new_tag())
        resp.headers.set("Expires", str(expires))
        # GB/T 28181 devices set their clocks from the Date of the 200 (local time, milliseconds).
        resp.headers.set("Date", dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])
        return resp

    def _message(self, req: sip.Request, peer: Peer) -> sip.Response:
        device_id = sip.uri_user(sip.parse_name_addr(req.headers.get("From") or "").uri)
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError as exc:
            return sip.response_to(req, 400, f"Bad Request ({exc})"[:120])
        with self._lock:
            reg = self.registrations.get(device_id)
        if reg is None:
            # Answered so that the device registers again (e.g. after this hub restarted).
            self.counters["unregistered_messages"] += 1
            return sip.response_to(req, 404, "Not Found (not registered)")
        now = self.clock()
        if not reg.reachable:
            reg.reachable = True
            self._alive(reg, now)
        if body.cmd == "Keepalive":
            self.counters["keepalives"] += 1
            self._alive(reg, now)
        elif body.cmd == "Catalog":
            self._catalog_message(reg, body)
        elif body.cmd == "RecordInfo" and body.root == "Response":
            self._record_message(body)
        elif body.cmd == "MediaStatus" and body.root == "Notify" and self.player is not None:
            self.player.media_status(body.device_id, body.fields.get("NotifyType", ""))
        elif body.cmd == "Alarm" and body.root == "Notify":
            self._alarm(reg, body, now)
        elif body.cmd in ("DeviceInfo", "DeviceStatus") and body.root == "Response":
            with self._lock:
                reg.info.update({k: v[:200] for k, v in body.fields.items() if "." not in k and v})
        else:
            log.debug("GB/T 28181: %s from %s not handled yet", body.cmd, device_id)
        return sip.response_to(req, 200)

    # -- state ---------------------------------------------------------------------------------------
    def _serves(self, device_id: str) -> bool:
        if self.cfg.prefixes:
            return ids.matches_prefix(device_id, self.cfg.prefixes)
        return bool(self.tree.homes(device_id))

    def _principal(self, device_id: str) -> Principal:
        """The device speaks for itself and its channels, as an agent speaks for its cameras."""
        prefixes = tuple(self.cfg.prefixes) or tuple(c.civil_code for c in self.tree.roots)
        token = hashlib.sha256(device_id.encode()).hexdigest()[:16]
        return Principal(token, gb_agent(device_id), Role.agent, prefixes)

    def _report(self, device_id: str, cams: list[ReportedCamera],
                items: list[manscdp.CatalogItem] | None = None) -> None:
        """Hand cameras to the hub's acceptance, and catalog items' positions to the coverage, off the
        SIP loop (they write the store), in order."""
        places = [(it.device_id, it.longitude, it.latitude) for it in items or ()
                  if it.longitude is not None and it.latitude is not None]  # (typed: both known)
        self._reports.submit(self._report_now, device_id, cams, places)

    def _withdraw(self, channel: str, out: bool) -> None:
        """A lower platform's DEL (``out``) or ADD of ``channel``, applied after the reports before it: an
        ADD's report creates the device, so a DEL told right after it must not overtake it."""
        self._reports.submit(self.hub.withdraw, channel, out)

    def _report_now(self, device_id: str, cams: list[ReportedCamera],
                    places: list[tuple[str, float, float]] | None = None) -> None:
        try:
            reply = self.hub.report(self._principal(device_id), CameraReport(cameras=cams))
            for ch, lon, lat in places or ():
                self.hub.place(ch, lon, lat, "gb28181")  # where the catalog says the channel stands
        except Exception:
            log.exception("GB/T 28181: acceptance report for %s failed", device_id)
            return
        for d in reply.cameras:
            if d.state == "refused":
                log.warning("GB/T 28181: %s refused: %s", d.device_id, d.reason)

    def _alive(self, reg: Registration, now: float) -> None:
        """A message from the device: it and its channels that say ON are alive; a streamed channel
        is alive only by its video (``_media_signal``)."""
        limit = self.cfg.keepalive_timeout_s
        self.hub.agent_seen(gb_agent(reg.device_id), now, limit)
        if reg.platform:  # ON: video reaches it; DEFECT: with a picture defect; VLOST: online, no video
            self.hub.signal([reg.device_id, *(c for c, st in reg.channels.items() if st in TOLD_ONLINE)], now, limit)
            self.hub.told_upload([c for c, st in reg.channels.items() if st in TOLD_UPLOADING], True, now)
            return
        lit = [reg.device_id, *(c for c, st in reg.channels.items() if st == "ON")]
        if self.player is not None:
            lit = [d for d in lit if not self.player.streamed(d)]
        self.hub.signal(lit, now, limit)

    def _media_signal(self, channel: str, fps: float, bitrate: float, restarts: int) -> None:
        """Video of a streamed channel arrived (from its receiver's thread): alive, with the health
        model's own silence limit (seconds, not keepalive minutes); its stream figures once measured
        (the segmenter needs a few seconds: an unmeasured rate is no low frame rate)."""
        self.hub.signal([channel], self.clock(), None)
        if fps > 0:
            self.hub.figures(channel, fps, bitrate, restarts)

    def _owner(self, channel: str) -> str:
        """The registered device a channel belongs to (itself for a camera without channels)."""
        with self._lock:
            for d, r in self.registrations.items():
                if channel == d or channel in r.channels:
                    return d
        return channel

    def _goodbye(self, device_id: str, why: str) -> None:
        with self._lock:
            reg = self.registrations.pop(device_id, None)
            self._platforms.pop(device_id, None)
        if reg is not None:
            log.info("GB/T 28181: %s %s", device_id, why)
            if self.player is not None:
                self.player.forget(device_id, why)
            self.hub.silence([device_id, *reg.channels])

    def _closed(self, peer: Peer) -> None:
        if self.cascade is not None:
            self.cascade.closed(peer)
        with self._lock:
            gone = [d for d, r in self.registrations.items() if r.peer == peer]
        for d in gone:
            self._goodbye(d, f"connection {peer} closed")

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            with self._lock:
                expired = [d for d, r in self.registrations.items() if r.expires_at <= now]
            for d in expired:
                self._goodbye(d, "registration expired")
            self._carriers()
            if self.player is not None:
                self._media_tick()

    # -- media ------------------------------------------------------------------------------------------
    # -- gaps: the device's own recording --------------------------------------------------------------
    def _record_message(self, msg: manscdp.Message) -> None:
        rec = self._records.get(msg.sn)
        if rec is None or msg.device_id != rec.channel:
            return
        rec.items += msg.items
        rec.expected = msg.sum_num
        if rec.expected is not None and len(rec.items) >= rec.expected:
            rec.done.set()

    async def record_info(self, device_id: str, channel: str, start: float, end: float) -> list[tuple[float, float]]:
        """The device's recordings of ``channel`` overlapping ``[start, end)``, clipped to it and merged
        (RecordInfo; times in the standard's local time without a zone)."""
        with self._lock:
            reg = self.registrations.get(device_id)
        if reg is None:
            return []
        req, sn = self._query(reg, "RecordInfo", about=channel, fields={
            # Body times are whole seconds: ask for every second the span touches, then clip the answer.
            "StartTime": manscdp.local_time(start), "EndTime": manscdp.local_time(math.ceil(end)), "Secrecy": "0",
            "Type": "all"})
        rec = self._records[sn] = _Records(channel)
        try:
            resp = await self.transport.request(reg.peer, req)
            if resp.status >= 300:
                return []
            await asyncio.wait_for(rec.done.wait(), self.cfg.catalog_timeout_s)
        except (TimeoutError, ConnectionError):
            if not rec.items:
                return []
        finally:
            self._records.pop(sn, None)
        spans = []
        for it in rec.items:
            a, b = manscdp.parse_local_time(it.get("StartTime", "")), manscdp.parse_local_time(it.get("EndTime", ""))
            if a is not None and b is not None and b > start and a < end:
                spans.append((max(a, start), min(b, end)))
        merged: list[tuple[float, float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1] + 1.0:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def _backfill(self, device_id: str, channel: str, start: float, end: float) -> None:
        """A gap in a channel's live video: fetch what the device recorded of it (one at a time)."""
        assert self._loop is not None
        self._loop.create_task(self._backfill_now(device_id, channel, start, end))

    async def _backfill_now(self, device_id: str, channel: str, start: float, end: float) -> None:
        self.counters["gaps"] += 1
        await self._fetch_now(device_id, channel, start, end, "live video missing")

    async def _fetch_now(self, device_id: str, channel: str, start: float, end: float, why: str) -> float:
        """What ``device_id`` recorded of ``channel`` in ``[start, end)``, downloaded into the archive
        (RecordInfo, then a Download INVITE per recording); the seconds of video received."""
        assert self.player is not None
        spans = await self.record_info(device_id, channel, start, end)
        log.info("GB/T 28181: %s: %.0f s of %s; %s recorded %.0f s of it", channel, end - start, why, device_id,
                 sum(b - a for a, b in spans))
        total = 0.0
        for a, b in spans:
            with self._lock:
                reg = self.registrations.get(device_id)
            if reg is None:
                break
            got, how = await self.player.download(device_id, reg.peer, channel, a, b)
            total += got
            log.info("GB/T 28181: %s: fetched %.1f s of %.1f s from the recording of %s (%s)", channel, got, b - a,
                     device_id, how)
        return total

    def _platform_of(self, device_id: str) -> Registration | None:
        """The lower platform that shares ``device_id`` with this center, if one does: a scan of the
        platforms alone (tens), not of every registered device, since each live view and clip asks."""
        with self._lock:
            return next((r for r in self._platforms.values() if device_id in r.channels), None)

    def recorded_elsewhere(self, device_id: str, start: float, end: float,
                           timeout_s: float = 5.0) -> tuple[str, list[tuple[float, float]] | None] | None:
        """What the lower platform sharing ``device_id`` recorded of it in ``[start, end)`` (RecordInfo),
        for views: (its ID, the spans, or None when it did not answer within ``timeout_s``); None
        when no platform shares the device. Blocking, from any thread but the SIP loop."""
        loop = self._loop
        reg = self._platform_of(device_id)
        if loop is None or loop.is_closed() or reg is None:
            return None
        work = asyncio.run_coroutine_threadsafe(self.record_info(reg.device_id, device_id, start, end), loop)
        try:
            return reg.device_id, work.result(timeout_s)
        except TimeoutError:
            work.cancel()
            return reg.device_id, None

    def fetch(self, device_id: str, start: float, end: float) -> float | None:
        """Footage of a lower platform's camera fetched from the platform's own recording into this
        archive (a police clip of a town camera pulled at the district: the footage stays at the town
        until asked for). Blocking, from any thread but the SIP loop; returns once what arrived is
        stored. None when ``device_id`` is no platform's camera; else the seconds of video received."""
        loop, player, sink = self._loop, self.player, self.sink
        if loop is None or player is None or sink is None or loop.is_closed():
            return None
        reg = self._platform_of(device_id)
        if reg is None:
            return None
        limit = (end - start) / self.cfg.download_speed + 2 * self.cfg.media_timeout_s + 20
        work = asyncio.run_coroutine_threadsafe(
            self._fetch_now(reg.device_id, device_id, start, end, "footage asked for here"), loop)
        try:
            got = work.result(limit)
        except TimeoutError:
            work.cancel()
            got = 0.0
        deadline = time.monotonic() + 30  # the sink's worker stores what the download cut
        while any(p.name.startswith(f"{device_id}_") for p in sink.root.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return got

    def _carriers(self) -> None:
        """A device with channels counts through them, not itself: told once its catalog is known, and
        again each second while it is no device yet (pending) or its channels changed. Told off the SIP
        loop (the registry keeps it in the store), after the reports before it (that create the device)."""
        with self._lock:
            untold = [r for r in self.registrations.values() if r.catalog_done and not r.carrier_told]
            for reg in untold:
                reg.carrier_told = True  # until _tell_carrier finds no device to tell it of
        for reg in untold:
            self._reports.submit(self._tell_carrier, reg, bool(reg.channels))

    def _tell_carrier(self, reg: Registration, carrier: bool) -> None:
        if not self.hub.carrier(reg.device_id, carrier):
            with self._lock:
                reg.carrier_told = False

    def _media_tick(self) -> None:
        """Every second: which channels should stream (accepted ones, once the catalog is known), and
        invite those whose turn has come."""
        assert self.player is not None
        with self._lock:
            regs = list(self.registrations.values())
        for reg in regs:
            if not reg.catalog_done or reg.platform or not self.cfg.record:
                continue
            chans = list(reg.channels) or ([reg.device_id] if ids.parse(reg.device_id).type in ("131", "132") else [])
            self.player.want(reg.device_id, reg.peer, [c for c in chans if self.hub.streamable(c)])

        def reachable(device_id: str) -> bool:
            r = self.registrations.get(device_id)
            return r is not None and r.reachable

        self.player.tick(reachable)

    def watch(self, device_id: str) -> bool:
        """Someone here watches ``device_id`` live (any thread). A camera of a lower platform is
        streamed from it on demand (INVITE through the cascade) while it is watched, and its footage
        stored here like any camera's; False for every other device (its media comes by itself)."""
        loop, player = self._loop, self.player
        if loop is None or player is None or loop.is_closed():
            return False
        reg = self._platform_of(device_id)
        if reg is None or not self.hub.streamable(device_id):
            return False
        with contextlib.suppress(RuntimeError):  # the loop is closing: the hub is stopping
            loop.call_soon_threadsafe(player.watch, reg.device_id, reg.peer, device_id, self.cfg.watch_idle_s)
        return True

    def _probe(self, device_id: str) -> None:
        """All of the device's streams stopped: is the device itself still there?"""
        assert self._loop is not None
        self._loop.create_task(self._probe_now(device_id))

    async def _probe_now(self, device_id: str) -> None:
        with self._lock:
            reg = self.registrations.get(device_id)
        if reg is None or not reg.reachable:
            return
        req, _ = self._query(reg, "DeviceStatus")
        try:
            await self.transport.request(reg.peer, req, self.cfg.probe_timeout_s)
            return
        except ConnectionError:
            pass
        except TimeoutError:
            pass
        if self.registrations.get(device_id) is not reg:
            return
        reg.reachable = False
        self.counters["probes_unanswered"] += 1
        log.warning("GB/T 28181: %s does not answer (its video stopped too): offline until it speaks again",
                    device_id)
        self.hub.silence([device_id, *reg.channels])

    # -- catalog ---------------------------------------------------------------------------------------
    def next_sn(self) -> int:
        self._sn = self._sn % 999_999 + 1
        return self._sn

    def _alarm(self, reg: Registration, msg: manscdp.Message, now: float) -> None:
        """A device's Alarm notification: an alert (one per device and kind of alarm while it is
        active, through the one alert writer, off the SIP loop), and the answer the standard asks for."""
        f = msg.fields
        source = msg.device_id if msg.device_id and (msg.device_id == reg.device_id
                                                    or msg.device_id in reg.channels) else reg.device_id
        method, kind = f.get("AlarmMethod", ""), f.get("Info.AlarmType") or f.get("AlarmType", "")
        priority = f.get("AlarmPriority", "")
        text = f.get("AlarmDescription", "")[:200]
        self.counters["alarms"] += 1
        title = f"{source}: device alarm (method {method or '?'}, type {kind or '?'}){': ' + text if text else ''}"
        new = NewAlert(f"device_alarm:{source}:{method}:{kind}", AlertKind.DEVICE_ALARM, title, now,
                       {"alarm_priority": priority, "alarm_method": method, "alarm_type": kind,
                        "alarm_time": f.get("AlarmTime", "")[:40], "description": text,
                        }, device_id=source)
        self._reports.submit(self.hub.alarm, new)
        answer, _ = self._query(reg, "Alarm", root="Response", sn=msg.sn, fields={"Result": "OK"})
        assert self._loop is not None
        self._loop.create_task(self._send_quietly(reg.peer, answer))

    async def _send_quietly(self, peer: Peer, req: sip.Request) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await self.transport.request(peer, req, 8.0)

    def _query(self, reg: Registration, cmd: str, root: str = "Query", sn: int | None = None,
               fields: dict[str, str] | None = None, about: str | None = None) -> tuple[sip.Request, int]:
        """A MANSCDP MESSAGE to the device: a query (a fresh SN), or an answer echoing ``sn``; its
        DeviceID names the device or ``about`` (one of its channels)."""
        sn = self.next_sn() if sn is None else sn
        body = manscdp.build(root, cmd, sn, about or reg.device_id, fields)
        target = f"sip:{reg.device_id}@{reg.device_id[:10]}"
        req = sip.Request("MESSAGE", target, sip.Headers())
        h = req.headers
        h.set("Via", f"SIP/2.0/{reg.peer.transport} {self.cfg.host}:{self.cfg.port};rport;branch={sip.new_branch()}")
        h.set("From", f"<sip:{self.server_id}@{self.realm}>;tag={sip.new_tag()}")
        h.set("To", f"<{target}>")
        h.set("Call-ID", sip.new_call_id())
        h.set("CSeq", f"{sn} MESSAGE")
        h.set("Max-Forwards", "70")
        h.set("Content-Type", "Application/MANSCDP+xml")
        req.body = body
        return req, sn

    async def _ask_catalog(self, device_id: str) -> None:
        with self._lock:
            reg = self.registrations.get(device_id)
        if reg is None:
            return
        req, sn = self._query(reg, "Catalog")
        cat = _Catalog(device_id)
        self._catalogs[sn] = cat
        try:
            resp = await self.transport.request(reg.peer, req)
            if resp.status >= 300:
                log.warning("GB/T 28181: %s answered the catalog query %d %s", device_id, resp.status, resp.reason)
                return
            await asyncio.wait_for(cat.done.wait(), self.cfg.catalog_timeout_s)
        except (TimeoutError, ConnectionError) as exc:
            if cat.items:
                self.counters["catalog_incomplete"] += 1
                log.warning("GB/T 28181: %s: catalog incomplete (%d of %s items): keeping what arrived",
                            device_id, len(cat.items), cat.expected)
            else:
                log.warning("GB/T 28181: %s: no catalog (%s)", device_id, type(exc).__name__)
        finally:
            self._catalogs.pop(sn, None)
            reg.catalog_done = True
        if cat.items:
            self._apply_catalog(reg, list(cat.items.values()))
        if ids.parse(device_id).type == "200":  # a lower platform: it tells its cameras' changes when subscribed
            assert self._loop is not None
            self._loop.create_task(self._subscribe_catalog(reg))
        info, _ = self._query(reg, "DeviceInfo")  # maker, model, firmware: kept with the registration
        await self._send_quietly(reg.peer, info)

    async def _subscribe_catalog(self, reg: Registration, expires: int = 3600) -> None:
        """SUBSCRIBE to a lower platform's catalog (its cameras go ON, OFF, VLOST, DEFECT as they
        change: the NOTIFYs reach ``_notify``), renewed in the same dialog at 80 % of its lifetime, for
        as long as that registration lasts."""
        query, _ = self._query(reg, "Catalog")
        call_id, from_ = query.headers.get("Call-ID") or "", query.headers.get("From") or ""
        to_tag: str | None = None
        cseq = 0
        while True:
            with self._lock:
                if self.registrations.get(reg.device_id) is not reg:
                    return
            cseq += 1
            req, _ = self._query(reg, "Catalog")
            sub = sip.Request("SUBSCRIBE", req.uri, req.headers, req.body)
            h = sub.headers
            h.set("Call-ID", call_id)
            h.set("From", from_)
            if to_tag:
                h.set("To", f"{h.get('To')};tag={to_tag}")
            h.set("CSeq", f"{cseq} SUBSCRIBE")
            h.set("Event", "Catalog")
            h.set("Expires", str(expires))
            h.set("Contact", f"<sip:{self.server_id}@{self.cfg.media_host or self.cfg.host}:{self.cfg.port}>")
            try:
                resp = await self.transport.request(reg.peer, sub, 8.0)
            except (TimeoutError, ConnectionError):
                resp = None
            if resp is not None and resp.status < 300:
                to_tag = sip.parse_name_addr(resp.headers.get("To") or "").tag
                granted = (resp.headers.get("Expires") or "").strip()
                await asyncio.sleep(0.8 * (int(granted) if granted.isdigit() and int(granted) > 0 else expires))
            else:
                log.warning("GB/T 28181: %s: catalog subscription %s", reg.device_id,
                            "unanswered" if resp is None else f"answered {resp.status} {resp.reason}")
                to_tag = None
                await asyncio.sleep(30.0)

    def _notify(self, req: sip.Request) -> sip.Response:
        """A NOTIFY of a subscription: a lower platform's catalog changes."""
        device_id = sip.uri_user(sip.parse_name_addr(req.headers.get("From") or "").uri)
        with self._lock:
            reg = self.registrations.get(device_id)
        if reg is None:
            return sip.response_to(req, 481, "Subscription does not exist")
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError as exc:
            return sip.response_to(req, 400, f"Bad Request ({exc})"[:120])
        if body.cmd == "Catalog" and body.root == "Notify":
            self._catalog_events(reg, body)
        return sip.response_to(req, 200)

    def _catalog_message(self, reg: Registration, msg: manscdp.Message) -> None:
        items = manscdp.catalog_items(msg)
        cat = self._catalogs.get(msg.sn)
        if msg.root == "Response" and cat is not None and cat.device_id == reg.device_id:
            for it in items:
                cat.items[it.device_id] = it
            cat.expected = msg.sum_num
            if cat.expected is not None and len(cat.items) >= cat.expected:
                cat.done.set()
            return
        if msg.root == "Notify":
            self._catalog_events(reg, msg)

    def _channels(self, reg: Registration, items: list[manscdp.CatalogItem]) -> list[manscdp.CatalogItem]:
        """Catalog items that are video channels (front-end device types), not groups or the device."""
        out = []
        for it in items:
            try:
                parsed = ids.parse(it.device_id)
            except ids.InvalidDeviceId:
                log.warning("GB/T 28181: %s: catalog item with invalid ID %r skipped", reg.device_id, it.device_id)
                continue
            if parsed.is_device and it.device_id != reg.device_id:
                out.append(it)
        return out

    def _apply_catalog(self, reg: Registration, items: list[manscdp.CatalogItem]) -> None:
        chans = self._channels(reg, items)
        self.counters["catalog_items"] += len(chans)
        with self._lock:
            before = set(reg.channels)
            reg.channels = {it.device_id: (it.status or "ON").upper() for it in chans}
            reg.carrier_told = False
        self._report(reg.device_id, [_reported(it) for it in chans], chans)
        if reg.platform:  # its catalog is the truth of what it shares: the rest leaves service here
            for ch in before - set(reg.channels):
                self._withdraw(ch, True)
            for ch in reg.channels:
                self._withdraw(ch, False)
        self._alive(reg, self.clock())
        lit = TOLD_ONLINE if reg.platform else ("ON",)
        self.hub.silence([c for c, st in reg.channels.items() if st not in lit])

    def _catalog_events(self, reg: Registration, msg: manscdp.Message) -> None:
        """Catalog notifications: ON / OFF / VLOST / DEFECT / ADD / DEL / UPDATE per item."""
        now = self.clock()
        for it in manscdp.catalog_items(msg):
            event = it.event.upper()
            ch = it.device_id
            if reg.platform and event in TOLD_ONLINE:  # its word, not keepalives alone, says what its camera does
                with self._lock:
                    reg.channels[ch] = event
                self.hub.set_quality(ch, DEFECT, event == "DEFECT")
                self.hub.signal([ch], now, self.cfg.keepalive_timeout_s)
                self.hub.told_upload([ch], event in TOLD_UPLOADING, now)
            elif event in ("ON", "OFF", "VLOST"):
                with self._lock:
                    reg.channels[ch] = event
                if event == "ON":
                    self.hub.set_quality(ch, DEFECT, False)  # the device says the channel is fine again
                    if self.player is None or not self.player.streamed(ch):
                        self.hub.signal([ch], now, self.cfg.keepalive_timeout_s)
                else:
                    self.hub.silence([ch])
            elif event == "DEFECT":
                self.hub.set_quality(ch, DEFECT, True)
            elif event in ("ADD", "UPDATE"):
                if self._channels(reg, [it]):
                    with self._lock:
                        reg.channels[ch] = (it.status or "ON").upper()
                        reg.carrier_told = False
                    self._report(reg.device_id, [_reported(it)], [it])
                    if reg.platform:
                        self._withdraw(ch, False)
            elif event == "DEL":
                with self._lock:
                    reg.channels.pop(ch, None)
                    reg.carrier_told = False
                self.hub.silence([ch])
                if reg.platform:  # no longer shared by the lower platform: out of service here
                    self._withdraw(ch, True)

    # -- views -----------------------------------------------------------------------------------------
    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Prometheus figures of the SIP side."""
        with self._lock:
            registered = len(self.registrations)
        yield GaugeMetricFamily("vms_gb28181_registered_devices", "GB/T 28181 devices registered now",
                                value=registered)
        events = CounterMetricFamily("vms_gb28181_events", "GB/T 28181 signaling events by kind", labels=["kind"])
        for kind, n in self.counters.items():
            events.add_metric([kind], n)
        events.add_metric(["register_flood_dropped"], self.limit.dropped)
        t = self.transport.counters
        for kind, n in (("malformed", t.malformed), ("retransmissions_absorbed", t.retransmissions_absorbed),
                        ("requests_timed_out", t.requests_timed_out)):
            events.add_metric([kind], n)
        yield events
        if self.cascade is not None:
            up = GaugeMetricFamily("vms_gb28181_superior_registered", "1 while registered with the superior",
                                   labels=["superior"])
            sent = CounterMetricFamily("vms_gb28181_superior_events", "Cascade events by superior and kind",
                                       labels=["superior", "kind"])
            for link in self.cascade.view():
                up.add_metric([link["name"]], 1.0 if link["state"] == "registered" else 0.0)
                for kind, n in link["counters"].items():
                    sent.add_metric([link["name"], kind], n)
            yield up
            yield sent

    def registrations_now(self) -> list[Registration]:
        """A copy of the registrations, for views."""
        with self._lock:
            return [replace(r, channels=dict(r.channels), info=dict(r.info)) for r in self.registrations.values()]


def _reported(it: manscdp.CatalogItem) -> ReportedCamera:
    return ReportedCamera(device_id=it.device_id, source="gb28181", name=it.name[:200] or None,
                          location=it.address[:200] or None, manufacturer=it.manufacturer[:200] or None,
                          model=it.model[:200] or None)



def _expires(req: sip.Request) -> int:
    """The registration's asked lifetime: the Contact's ``expires`` parameter, else ``Expires``."""
    contact = req.headers.get("Contact") or ""
    if contact.strip() == "*":
        return 0
    for part in contact.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == "expires" and v.strip().isdigit():
            return int(v.strip())
    value = (req.headers.get("Expires") or "3600").strip()
    if not value.isdigit():
        raise sip.SipError(f"Expires {value[:20]!r} is not a number")
    return int(value)
