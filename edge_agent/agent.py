"""The running agent: cameras -> ingest threads -> spool -> uplink, until stopped.

Ingest runs on threads and never waits for the hub; the uplink and heartbeat run on one asyncio
loop. Stopping closes every open segment properly so nothing recorded before the stop is lost.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

from vms import ids
from vms.protocol import CameraStats

from .config import AgentConfig, redact, strip_credentials
from .ingest import CameraIngest
from .registry import Registry
from .segmenter import Segmenter
from .spool import Spool
from .uplink import Uplink

log = logging.getLogger(__name__)


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


def with_credentials(url: str, username: str, password: str) -> str:
    """Put ONVIF credentials into a stream URI that has none (cameras use the same account)."""
    parts = urlsplit(url)
    if not username or "@" in parts.netloc:
        return url
    userinfo = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment))


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
        self.uplink = Uplink(cfg.hub_url, cfg.token, self.spool, self.camera_stats,
                             heartbeat_interval_s=cfg.heartbeat_interval_s, max_inflight=cfg.max_inflight)

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
        return [ing.camera_stats() for ing in self.ingests]

    # --- cameras --------------------------------------------------------------------------------

    def configured_sources(self) -> list[CameraSource]:
        return [CameraSource(url=c.url, name=c.name, location=c.location, device_id=c.device_id,
                             transport=c.transport) for c in self.cfg.cameras]

    def discovered_sources(self) -> list[CameraSource]:
        from .discovery import discover

        d = self.cfg.discovery
        o = self.cfg.onvif
        out = []
        for cam in discover(o.username, o.password, d.timeout_s):
            uri = cam.main_stream()
            if uri is None:
                log.warning("ONVIF camera at %s has no usable stream (%s)", cam.address, cam.error)
                continue
            out.append(CameraSource(url=with_credentials(uri, o.username, o.password),
                                    name=" ".join(x for x in (cam.manufacturer, cam.model) if x),
                                    serial=cam.serial, manufacturer=cam.manufacturer, model=cam.model,
                                    address=cam.address))
        return out

    def assign_ids(self, sources: list[CameraSource], prefix: str | None) -> None:
        """Give every source its device ID; fixed IDs first so allocation never takes them."""
        seen: dict[str, str] = {}
        for src in sorted(sources, key=lambda s: s.device_id is None):
            dev = self.registry.assign(prefix=prefix, url=src.url, serial=src.serial,
                                       fixed_id=src.device_id, name=src.name)
            if dev in seen:
                log.info("camera %s is the same device as %s (%s); relaying it once",
                         redact(src.url), seen[dev], dev)
                continue
            seen[dev] = redact(src.url)
            src.device_id = dev
            self.sources[dev] = src

    def start_ingest(self) -> None:
        for dev, src in self.sources.items():
            seg = Segmenter(dev, self.spool, self.cfg.segment_seconds)
            ing = CameraIngest(dev, src.url, seg, transport=src.transport,
                               stall_timeout_s=self.cfg.stall_timeout_s, name=src.name, location=src.location)
            ing.start()
            self.ingests.append(ing)
        log.info("relaying %d camera(s)", len(self.ingests))

    def camera_report(self) -> list[dict[str, Any]]:
        return [{"device_id": dev, "name": s.name, "location": s.location, "manufacturer": s.manufacturer,
                 "model": s.model, "serial": s.serial,
                 "address": s.address or urlsplit(s.url).netloc.rsplit("@", 1)[-1],
                 "stream_uri": strip_credentials(s.url)} for dev, s in self.sources.items()]

    # --- run ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            sources = self.configured_sources()
            if self.cfg.discovery.enabled:
                sources += await asyncio.to_thread(self.discovered_sources)
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
            self.start_ingest()
            if not registered and await self.uplink.register_until_ok(stop) is None:
                return
            for dev in self.sources:
                if self.uplink.prefixes and not ids.matches_prefix(dev, self.uplink.prefixes):
                    log.error("device %s is outside the prefixes the hub granted (%s); the hub will refuse "
                              "it", dev, ", ".join(self.uplink.prefixes))
            await self._report_cameras()
            await asyncio.gather(self.uplink.heartbeat_loop(stop), self.uplink.upload_loop(stop))
        finally:
            await asyncio.to_thread(self.shutdown)
            await self.uplink.aclose()

    async def _report_cameras(self) -> None:
        try:
            await self.uplink.report_cameras(self.camera_report())
        except Exception as exc:
            log.warning("could not report cameras to the hub: %s", exc)

    def shutdown(self, timeout_s: float = 8.0) -> None:
        """Stop ingest threads; each closes (and enqueues) its open segment on the way out."""
        for ing in self.ingests:
            ing.stop()
        for ing in self.ingests:
            if not ing.join(timeout_s):
                log.warning("camera %s: ingest thread did not stop in time", ing.device_id)
        self._lock_file.close()
