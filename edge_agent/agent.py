"""The running agent: cameras -> ingest threads -> spool -> uplink, until stopped.

A camera's sub stream (子码流), when it has one, runs through its own ingest thread and segmenter
into a live-only spool: short segments for the hub's live wall, sent while fresh or dropped,
never backlog. It is the same device, so it adds nothing to the heartbeat's camera stats.

Ingest runs on threads and never waits for the hub; the uplink and heartbeat run on one asyncio
loop. Stopping closes every open segment properly so nothing recorded before the stop is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

from vms.kernel import ids
from vms.kernel.protocol import CameraReportReply, CameraStats
from vms.kernel.protocol import CameraSource as Source
from vms.media.segmenter import Segmenter

from .analysis import AgentAnalysis
from .config import AgentConfig, redact, strip_credentials
from .discovery import host_of, stream_problem
from .ingest import CameraIngest
from .registry import Registry
from .spool import Segment, Spool
from .uplink import Uplink

log = logging.getLogger(__name__)

#: Cameras not relayed yet (pending, rejected, unanswered) are reported again this often, so an
#: admin's acceptance starts one within seconds.
REPORT_WAITING_S = 5.0
#: Every camera is reported again this often, so a later rejection stops one that is relayed.
REPORT_ALL_S = 60.0


class AgentError(Exception):
    """The agent cannot start (data dir in use, no prefix to allocate IDs, ID collision)."""


@dataclass
class CameraSource:
    """A camera to relay: from the config or from ONVIF discovery."""

    url: str
    name: str = ""
    location: str = ""
    device_id: str | None = None
    transport: str = "tcp"
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    address: str | None = None
    sub_url: str | None = None  # the camera's sub stream, relayed for live view only
    source: Source = "config"  # onvif: found by discovery, relayed only once the hub accepts it


#: Disk a live-only spool may use: it holds seconds of sub-stream video, this is only a backstop.
LIVE_SPOOL_QUOTA_BYTES = 256_000_000


def with_credentials(url: str, username: str, password: str, host: str | None = None) -> str:
    """Put ONVIF credentials into a stream URI that has none (cameras use the same account).

    Given the ONVIF device's ``host``, a URI for any other host (or not rtsp/rtsps) never gets them.
    """
    parts = urlsplit(url)
    if not username or "@" in parts.netloc:
        return url
    if host is not None:
        problem = stream_problem(url, host_of(host))
        if problem:
            log.error("not giving the ONVIF credentials to %s: %s", redact(url), problem)
            return url
    userinfo = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment))


def _same_host(a: str | None, b: str | None) -> bool:
    return bool(a and b) and host_of(a or "") == host_of(b or "")


def _source_host(s: CameraSource) -> str:
    """Where a camera answers: its ONVIF address's host, else its stream URL's."""
    return host_of(s.address) if s.address else (urlsplit(s.url).hostname or "").lower()


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock_data_dir()
        self.registry = Registry(self.data_dir)
        self.spool = Spool(self.data_dir / "spool", cfg.spool_quota_bytes,
                           live_window_s=3 * cfg.segment_seconds)
        self.ingests: list[CameraIngest] = []
        self.sources: dict[str, CameraSource] = {}
        self.prefix: str | None = cfg.id_prefix  # where new IDs come from; the hub's grant if not configured
        self._refused: dict[str, str] = {}  # device -> why the hub refuses this agent reporting it (logged once)
        self.uplink = Uplink(cfg.hub_url, cfg.token, self.spool, self.camera_stats,
                             heartbeat_interval_s=cfg.heartbeat_interval_s, max_inflight=cfg.max_inflight)
        self.live_spool = Spool(self.data_dir / "live-spool", min(cfg.spool_quota_bytes, LIVE_SPOOL_QUOTA_BYTES),
                                live_window_s=max(3.0, 3 * cfg.live_segment_seconds), live_only=True)
        self.uplink.live_spool = self.live_spool
        self.sub_ingests: list[CameraIngest] = []  # not in camera_stats: the device is counted once
        self.analysis = AgentAnalysis(cfg.analysis, self.data_dir) if cfg.analysis.enabled else None
        if self.analysis is not None:
            self.spool.on_added = self.analysis.segment_added
            self.live_spool.on_added = self.analysis.sub_segment_added  # a live sub stream is analysed instead
            self.uplink.motion_of = self._motion_of

    def _lock_data_dir(self) -> IO[str]:
        f = open(self.data_dir / ".lock", "w")  # noqa: SIM115 - held for the agent's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise AgentError(f"{self.data_dir} is in use by another agent process") from None
        f.write(str(os.getpid()))
        f.flush()
        return f

    def camera_stats(self) -> list[CameraStats]:
        stats = [ing.camera_stats() for ing in self.ingests]
        if self.analysis is not None:
            for s in stats:
                s.defects = self.analysis.defects(s.device_id)
        return stats

    async def _motion_of(self, seg: Segment) -> float | None:
        assert self.analysis is not None
        return await self.analysis.motion_for(seg.sha256, wait_s=1.0)  # a 1080p segment takes ~0.1 s

    # --- cameras --------------------------------------------------------------------------------

    def configured_sources(self) -> list[CameraSource]:
        return [CameraSource(url=c.url, name=c.name, location=c.location, device_id=c.device_id,
                             transport=c.transport, sub_url=c.sub_url) for c in self.cfg.cameras]

    @property
    def discovering(self) -> bool:
        """ONVIF cameras come in: by WS-Discovery, or named by address in the config."""
        return self.cfg.discovery.enabled or bool(self.cfg.discovery.onvif_hosts)

    def credentials_for(self, address: str | None) -> tuple[str, str]:
        """The ONVIF (and RTSP) credentials of the device at ``address``: its own when the config names
        it with them, else the site's (``onvif:``)."""
        o = self.cfg.onvif
        named = next((h for h in self.cfg.discovery.onvif_hosts if address and h.address == address.lower()), None)
        if named is None:
            return o.username, o.password
        return (o.username if named.username is None else named.username,
                o.password if named.password is None else named.password)

    def discovered_sources(self) -> list[CameraSource]:
        """ONVIF cameras found by WS-Discovery (when enabled) and named by address, with usable streams."""
        from .discovery import discover

        d = self.cfg.discovery
        o = self.cfg.onvif
        out = []
        for cam in discover(o.username, o.password, d.timeout_s, multicast=d.enabled, hosts=d.onvif_hosts):
            uri = cam.main_stream()
            if uri is None:
                refused = "; ".join(p.refused_uri for p in cam.profiles if p.refused_uri)
                log.warning("ONVIF camera at %s%s has no usable stream (%s)", cam.address,
                            " (named in the config)" if cam.named else "",
                            cam.error or (f"stream URIs refused: {refused}" if refused else "no stream URI"))
                continue
            sub = cam.sub_stream()
            host = host_of(cam.address)
            user, password = self.credentials_for(cam.address)
            out.append(CameraSource(url=with_credentials(uri, user, password, host),
                                    name=" ".join(x for x in (cam.manufacturer, cam.model) if x),
                                    serial=cam.serial, manufacturer=cam.manufacturer, model=cam.model,
                                    address=cam.address,
                                    sub_url=with_credentials(sub, user, password, host)
                                    if sub and sub != uri else None, source="onvif"))
        return self.one_per_serial(out)

    def one_per_serial(self, found: list[CameraSource]) -> list[CameraSource]:
        """One source per serial number: a serial is only what a device says about itself.

        When several devices claim one serial, the one at the address the camera is known at is kept
        (else the first); the others are left out, loudly, and never relayed under its ID.
        """
        by_serial: dict[str, list[CameraSource]] = {}
        out: list[CameraSource] = []
        for src in found:
            key = (src.serial or "").strip().lower()
            if key:
                by_serial.setdefault(key, []).append(src)
                if len(by_serial[key]) > 1:
                    continue
            out.append(src)
        for claims in by_serial.values():
            if len(claims) < 2:
                continue
            dev = self.registry.lookup(serial=claims[0].serial)
            known = next((e for e in self.registry.entries() if e.device_id == dev), None)
            keep = next((c for c in claims if known is not None and _same_host(c.address, known.address)), claims[0])
            if keep is not claims[0]:
                out[out.index(claims[0])] = keep
            log.error("%d devices claim serial %r (%s); relaying none but the one at %s under its ID",
                      len(claims), keep.serial, ", ".join(c.address or redact(c.url) for c in claims), keep.address)
        return out

    def remembered_sources(self, found: list[CameraSource]) -> list[CameraSource]:
        """Accepted discovered cameras this probe did not find, from their last known stream URIs.

        A camera that is powered off, rebooting or whose probe answer was lost when the agent
        starts must not drop out until the next restart: ingest keeps retrying it (with backoff)
        and recording resumes when it is back.
        """
        seen = {self.registry.lookup(url=s.url, serial=s.serial) for s in found}
        out = []
        for e in self.registry.entries():
            if e.source != "onvif" or e.acceptance != "accepted" or not e.url or e.device_id in seen:
                continue
            log.warning("accepted camera %s (%s) did not answer discovery; relaying it from %s", e.device_id,
                        e.name or "unnamed", e.url)
            host = host_of(e.address) if e.address else None
            user, password = self.credentials_for(e.address)
            out.append(CameraSource(url=with_credentials(e.url, user, password, host), name=e.name,
                                    serial=e.serial, source="onvif", address=e.address,
                                    sub_url=with_credentials(e.sub_url, user, password, host)
                                    if e.sub_url else None))
        return out

    def assign_ids(self, sources: list[CameraSource], prefix: str | None) -> None:
        """Give every source its device ID; fixed IDs first so allocation never takes them."""
        seen: dict[str, str] = {}
        for src in sorted(sources, key=lambda s: s.device_id is None):
            dev = self.registry.assign(prefix=prefix, url=src.url, serial=src.serial,
                                       fixed_id=src.device_id, name=src.name, source=src.source,
                                       sub_url=src.sub_url, address=src.address)
            if dev in seen:
                log.info("camera %s is the same device as %s (%s); relaying it once",
                         redact(src.url), seen[dev], dev)
                continue
            seen[dev] = redact(src.url)
            src.device_id = dev
            self.sources[dev] = src

    def may_relay(self, dev: str) -> bool:
        """Accepted by the hub (now or on an earlier run), or typed into the config and not rejected.

        The decision is remembered in the registry, so a hub that is down when the agent starts
        never stops an accepted camera; a discovered camera never answered for is not relayed.
        """
        state = self.registry.acceptance(dev)
        return state == "accepted" or (state != "rejected" and self.sources[dev].source == "config")

    def relaying(self) -> set[str]:
        return {ing.device_id for ing in self.ingests}

    def start_camera(self, dev: str) -> None:
        if dev in self.relaying():
            return
        src = self.sources[dev]
        seg = Segmenter(dev, self.spool, self.cfg.segment_seconds)
        c = self.cfg
        retry: dict[str, Any] = {"stall_timeout_s": c.stall_timeout_s, "backoff_cap_s": c.backoff_cap_s,
                                 "healthy_backoff_cap_s": c.healthy_backoff_cap_s,
                                 "probe_interval_s": c.probe_interval_s}
        ing = CameraIngest(dev, src.url, seg, transport=src.transport, read_batch_s=c.read_batch_s, name=src.name,
                           location=src.location, **retry)
        ing.start()
        self.ingests.append(ing)
        if src.sub_url:
            sub = CameraIngest(dev, src.sub_url, Segmenter(dev, self.live_spool, c.live_segment_seconds),
                               transport=src.transport, read_batch_s=c.live_read_batch_s, name=src.name,
                               location=src.location, **retry)
            sub.start()
            self.sub_ingests.append(sub)

    def start_ingest(self) -> None:
        """Start every camera that may be relayed now; say which ones wait for the hub."""
        for dev in self.sources:
            if self.may_relay(dev):
                self.start_camera(dev)
        log.info("relaying %d camera(s), %d with a sub stream for live view", len(self.ingests),
                 len(self.sub_ingests))
        for dev in self.sources.keys() - self.relaying():
            src = self.sources[dev]
            log.warning("camera %s (%s, %s) is not relayed: %s", dev, src.name or "unnamed", redact(src.url),
                        "rejected at the hub" if self.registry.acceptance(dev) == "rejected"
                        else "discovered, waits for an admin to accept it at the hub")

    async def stop_camera(self, dev: str) -> None:
        """Stop relaying ``dev``; its open segment is closed and spooled as at shutdown."""
        stopping = [i for i in self.ingests + self.sub_ingests if i.device_id == dev]
        self.ingests = [i for i in self.ingests if i.device_id != dev]
        self.sub_ingests = [i for i in self.sub_ingests if i.device_id != dev]
        for ing in stopping:
            ing.stop()
        for ing in stopping:
            if not await asyncio.to_thread(ing.join, 8.0):
                log.warning("camera %s: ingest thread did not stop in time", dev)

    def _address(self, dev: str) -> str:
        s = self.sources[dev]
        return s.address or urlsplit(s.url).netloc.rsplit("@", 1)[-1]

    def camera_report(self, devices: set[str] | None = None) -> list[dict[str, Any]]:
        return [{"device_id": dev, "source": s.source, "name": s.name, "location": s.location,
                 "manufacturer": s.manufacturer, "model": s.model, "serial": s.serial,
                 "address": self._address(dev), "stream_uri": strip_credentials(s.url)}
                for dev, s in self.sources.items() if devices is None or dev in devices]

    # --- run ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self.analysis is not None:
            self.analysis.start()  # workers spawn on the first segment
        try:
            sources = self.configured_sources()
            if self.discovering:
                found = await asyncio.to_thread(self.discovered_sources)
                sources += found + self.remembered_sources(found)
            prefix = self.cfg.id_prefix
            registered = False
            if prefix is None and any(s.device_id is None for s in sources):
                reply = await self.uplink.register_until_ok(stop)
                if reply is None:
                    return
                registered = True
                prefix = next((p for p in reply.prefixes if len(p) >= ids.ALLOCATION_PREFIX_LENGTH), None)
                if prefix is None:
                    raise AgentError("no id_prefix configured and the hub granted no 14-digit prefix "
                                     f"to allocate IDs from (got {reply.prefixes})")
            self.assign_ids(sources, prefix)
            self.prefix = prefix
            self.start_ingest()
            if not registered and await self.uplink.register_until_ok(stop) is None:
                return
            for dev in self.sources:
                if self.uplink.prefixes and not ids.matches_prefix(dev, self.uplink.prefixes):
                    log.error("device %s is outside the prefixes the hub granted (%s); the hub will refuse "
                              "it", dev, ", ".join(self.uplink.prefixes))
            await self._report_cameras()
            await asyncio.gather(self.uplink.heartbeat_loop(stop), self.uplink.upload_loop(stop),
                                 self.report_loop(stop), self.rediscover_loop(stop))
        finally:
            await asyncio.to_thread(self.shutdown)
            await self.uplink.aclose()

    async def _report_cameras(self, devices: set[str] | None = None) -> None:
        """Report cameras (all, or ``devices``) and act on the answer; a failure waits for the next round."""
        cameras = self.camera_report(devices)
        try:
            reply = await self.uplink.report_cameras(cameras)
        except Exception as exc:
            log.warning("could not report cameras to the hub: %s", exc)
            return
        if reply is not None:
            await self.apply(reply, {c["device_id"]: c["address"] for c in cameras})

    async def apply(self, reply: CameraReportReply, reported: dict[str, str] | None = None) -> None:
        """Start cameras the hub accepts, stop the ones an admin rejected, remember both on disk.

        An answer about a camera that has moved since it was reported (``reported``: device -> address
        sent) is stale and left for the next report."""
        stale = {dev for dev, address in (reported or {}).items()
                 if dev in self.sources and self._address(dev) != address}
        states = {d.device_id: d.state for d in reply.cameras
                  if d.device_id in self.sources and d.state != "refused" and d.device_id not in stale}
        before = {dev: self.registry.acceptance(dev) for dev in states}
        await asyncio.to_thread(self.registry.set_acceptance, states)
        running = self.relaying()
        for d in reply.cameras:
            dev, src = d.device_id, self.sources.get(d.device_id)
            if src is None or dev in stale:
                continue
            if d.state == "refused":
                if self._refused.get(dev) != d.reason:
                    log.error("hub refuses camera %s: %s", dev, d.reason)
                self._refused[dev] = d.reason
            elif d.state == "accepted" and dev not in running:
                log.info("camera %s (%s) accepted by the hub; relaying it", dev, src.name or redact(src.url))
                self.start_camera(dev)
            elif d.state == "rejected" and (dev in running or before[dev] != "rejected"):
                log.warning("camera %s (%s) rejected at the hub; not relaying it: %s", dev,
                            src.name or redact(src.url), d.reason)
                await self.stop_camera(dev)
            elif d.state == "pending" and (dev in running or before[dev] != "pending"):
                log.warning("camera %s (%s at %s) waits for an admin to accept it at the hub; not relaying it yet%s",
                            dev, src.name or "unnamed", src.address or redact(src.url),
                            f": {d.reason}" if dev in running else "")
                if dev in running:
                    await self.stop_camera(dev)

    async def rediscover_loop(self, stop: asyncio.Event) -> None:
        """Probe again every ``discovery.interval_s``: report new cameras and cameras at another address.

        A camera streaming from another path on the same host is followed; one answering at another
        host (moved, or another device claiming its serial) stops and waits for an admin at the hub."""
        if not self.discovering:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.cfg.discovery.interval_s)
            if stop.is_set():
                return
            try:
                found = await asyncio.to_thread(self.discovered_sources)
            except Exception as exc:  # a probe that fails must not stop the agent; the next one may work
                log.warning("discovery failed: %s", exc)
                continue
            new, moved = [], []
            for src in found:
                dev = self.registry.lookup(url=src.url, serial=src.serial)
                if dev is None or dev not in self.sources:
                    new.append(src)
                elif strip_credentials(self.sources[dev].url) != strip_credentials(src.url):
                    moved.append((src, self.sources[dev]))
            if not (new or moved):
                continue
            self.assign_ids(new + [src for src, _ in moved], self.prefix)
            for src, old in moved:
                dev = src.device_id or ""
                if _source_host(src) == _source_host(old):  # same host, another path: followed
                    log.warning("camera %s now streams from %s; relaying it from there", dev, redact(src.url))
                    if dev in self.relaying():
                        await self.stop_camera(dev)
                        self.start_camera(dev)
                    continue
                # Another address: maybe the camera moved, maybe another device claims its serial.
                log.warning("camera %s (serial %s) answers at %s instead of %s; not relaying it until an admin "
                            "accepts it at its new address", dev, src.serial, src.address or redact(src.url),
                            old.address or redact(old.url))
                await self.stop_camera(dev)
            if new:
                log.info("discovery found %d new camera(s)", len(new))
            await self._report_cameras({s.device_id for s in new + [m for m, _ in moved] if s.device_id})

    async def report_loop(self, stop: asyncio.Event) -> None:
        """Report cameras not relayed (and any the hub refused stats for) often, every camera now and then."""
        last_all = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=REPORT_WAITING_S)
            if stop.is_set() or not self.uplink.cameras_supported:
                continue
            if time.monotonic() - last_all >= REPORT_ALL_S:
                last_all = time.monotonic()
                await self._report_cameras()
                continue
            waiting = (self.sources.keys() - self.relaying()) | (self.relaying() & self.uplink.stats.rejected_devices)
            if waiting:
                await self._report_cameras(waiting)

    def shutdown(self, timeout_s: float = 8.0) -> None:
        """Stop ingest threads; each closes (and enqueues) its open segment on the way out."""
        for ing in self.ingests + self.sub_ingests:
            ing.stop()
        for ing in self.ingests + self.sub_ingests:
            if not ing.join(timeout_s):
                log.warning("camera %s: ingest thread did not stop in time", ing.device_id)
        if self.analysis is not None:
            self.analysis.stop()
        self._lock_file.close()
