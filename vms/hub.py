"""The wiring root: builds the hub's services, joins them, and runs their threads.

Nothing here decides anything. Each service is given what it needs (config, the store,
callables of the others); none receives the hub. Views (``vms/api``) reach the services through
the attributes below. The rooms and their rules: docs/architecture.md.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vms import audit
from vms.archive.clip import plan_clip, safe_path
from vms.archive.service import Archive, ArchiveLookups
from vms.archive.store import SegmentStore
from vms.audit import AuditAnchor
from vms.auth import TokenCache
from vms.centers import CenterTree
from vms.config import HubConfig
from vms.db import open_store
from vms.events import EventBus
from vms.gb28181.cascade import CascadeLink, Shared
from vms.gb28181.service import GbService, HubLink
from vms.health import Health
from vms.live import LiveRelay
from vms.live.relay import NoLiveMedia
from vms.notify import Outbox, Sender
from vms.services.acceptance import Acceptance
from vms.services.alerting import AlertWriter
from vms.services.coverage import Coverage
from vms.services.heartbeats import Heartbeats
from vms.services.ingest import SegmentIngest
from vms.services.monitor import Monitor
from vms.services.quality import QualityBook
from vms.services.registry import Registry
from vms.services.snapshots import Snapshots
from vms.services.spool_losses import SpoolLosses

log = logging.getLogger(__name__)


class Hub:
    def __init__(
        self,
        cfg: HubConfig,
        clock: Callable[[], float] = time.time,
        sender: Sender | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only`` opens the store for reports beside a running hub: nothing is written."""
        self.cfg = cfg
        self.read_only = read_only
        self.clock = clock
        self.engine, self.sessions = open_store(cfg.storage.url())
        self.tree = CenterTree(cfg.centers)
        self.tokens = TokenCache(self.sessions, clock)
        self.audit_anchor = AuditAnchor.for_config(cfg, self.sessions, clock, read_only)  # signed checkpoints
        self.started_at = clock()
        self.events = EventBus()  # what changed, for the push endpoint (vms/api/events.py)
        self.health = Health(cfg.health, self.started_at)
        self.registry = Registry(self.health, self.tree, cfg.health, self.sessions, clock)
        self.alerts = AlertWriter(self.sessions, cfg.alerts, lambda: self.public_url, self.events, clock)
        self.registry.changed = lambda ids: self.alerts.publish(ids, [])  # new devices, carriers: pages, superiors
        self.outbox = Outbox(cfg.alerts, self.sessions, sender, self.alerts.raise_kind, self.alerts.resolve_active)
        self.alerts.delivering = self.outbox.wake  # committed deliveries are sent at once
        self.segments = SegmentStore(cfg.storage.data_dir / "recordings", cfg.archive, self.sessions)
        self.live = LiveRelay(cfg.live, self.segments.root, self.sessions, clock, cfg.health.max_clock_skew_s,
                              ring_dir=cfg.storage.data_dir / "live-sub")
        reg = self.registry
        self.archive = Archive(cfg, self.sessions, self.segments, self.tree,
                               ArchiveLookups(reg.known, reg.homes_of, reg.center_devices), self.alerts, clock,
                               self.audit_anchor.checkpoint)
        self.quality = QualityBook(cfg.analysis, cfg.storage.data_dir, self.sessions, self.segments.root,
                                   reg.set_quality, lambda: self.public_url, read_only)
        self.monitor = Monitor(cfg, reg, self.sessions, self.alerts, self.quality.alert_detail, clock)
        self.spool_losses = SpoolLosses(self.sessions, self.alerts)
        self.coverage = Coverage(cfg, reg, self.sessions, self.alerts, self.monitor.log_for, self.events, clock,
                                 read_only)
        q = self.quality
        self.heartbeats = Heartbeats(cfg.health, reg, self.spool_losses.note, q.agent_report,
                                     lambda d: d in q.agent_analysed)
        self.ingest = SegmentIngest(self.segments, self.live, reg.observe_upload, q.segment_stored, clock,
                                    cfg.health.max_clock_skew_s, analyse_sub=q.sub_stored)
        self.snapshots = Snapshots(reg, self.monitor)  # what views read
        self.acceptance = Acceptance(self.sessions, cfg.discovery.auto_accept, cfg.gb28181.auto_accept,
                                     reg.claim_problem, reg.known,
                                     self.monitor.hold, reg.admit, clock)
        self.gb28181: GbService | None = None
        if cfg.gb28181.enabled:
            gb_link = HubLink(
                report=lambda who, rep: self.acceptance.report(who, rep),  # built below, used once started
                signal=reg.signal, silence=reg.silence, agent_seen=reg.agent_seen, set_quality=reg.set_quality,
                streamable=lambda d: reg.known(d) and d not in reg.held, store_segment=self.ingest.store_own,
                figures=reg.stream_report, carrier=reg.set_carrier, told_upload=reg.told_upload,
                place=lambda d, lon, lat, source: self.coverage.place_reported(d, lon, lat, source),
                alarm=self.alerts.raise_or_update, withdraw=self.monitor.withdraw,
            )
            # Media cut into segments waits on the archive's own disk (a dot directory the repair skips).
            self.gb28181 = GbService(cfg.gb28181, self.tree, gb_link, clock, media_dir=self.segments.root / ".gb28181",
                                     superiors=cfg.superiors, up=self._cascade_link())
            self.live.demand = self.gb28181.watch  # a lower platform's camera streams while watched here
            self.archive.fetch = self.gb28181.fetch  # and its footage comes from the platform for a clip
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        with self.sessions() as s:
            if not read_only:
                reg.sync_config(s, cfg.devices, self.started_at)
            reg.load(s)
            self.monitor.load(s, read_only)
            self.coverage.load(s)

    def _cascade_link(self) -> CascadeLink:
        """What superior platforms are shown: the devices in service with their state and position."""
        snaps, cov = self.snapshots, self.coverage

        def devices() -> list[Shared]:
            out = []
            for d, name, location, state, homes in snaps.in_service():
                pos = cov.position(d)
                out.append(Shared(d, name, location, state, homes, *(pos[:2] if pos else (None, None))))
            return out

        def record(who: str, action: str, target: str, detail: dict[str, object]) -> None:
            audit.append(self.sessions, at=self.clock(), actor=who, role="superior", action=action, target=target,
                         detail=detail)

        def recorded(device_id: str, start: float, end: float) -> list[tuple[Path, float, float]]:
            root = self.segments.root
            pieces = plan_clip(self.sessions, device_id, start, end).pieces
            return [(path, p.start, p.end) for p in pieces if (path := safe_path(root, p.path)) is not None]

        def live(device_id: str, stream: str) -> list[tuple[int, Path, float, float]]:
            try:
                entries, _target = self.live.live_entries(device_id, stream)
            except NoLiveMedia:
                return []
            return [(e.seq, e.seg.path, e.seg.start, e.seg.end) for e in entries]

        return CascadeLink(devices=devices, states=snaps.states, alert=self.alerts.raise_or_update,
                           resolve=self.alerts.resolve_active, audit=record, events=self.events, live=live,
                           stale_after_s=self.cfg.live.stale_after_s, recorded=recorded)

    @property
    def public_url(self) -> str:
        sc = self.cfg.server
        return sc.public_url or f"http://{sc.host}:{sc.port}"

    # -- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self.archive.startup()  # index and recordings agree before anything is served
        self.quality.start()
        if self.gb28181 is not None:
            self.gb28181.start()
        loops: tuple[tuple[str, Callable[[], None]], ...] = (
            ("tick", self._tick_loop), ("outbox", self._outbox_loop),
            ("retention", functools.partial(self.archive.loop, self._stop)),
            ("audit", functools.partial(self.audit_anchor.loop, self._stop)),
        )
        for name, fn in loops:
            th = threading.Thread(target=fn, name=f"vms-{name}", daemon=True)
            th.start()
            self._threads.append(th)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.cfg.health.tick_s):
            try:
                self.monitor.tick()
                self.coverage.tick()
                self.tokens.flush_used()  # last uses, at most once a minute
                if self.monitor.ticks % 3600 == 0:
                    self.monitor.prune()
            except Exception:
                log.exception("tick failed")

    def _outbox_loop(self) -> None:
        self.outbox.run(self._stop, self.clock)

    def stop(self) -> None:
        self._stop.set()
        self.outbox.wake()  # its idle wait ends now
        for th in self._threads:
            th.join(timeout=10)
        self._threads.clear()
        if self.gb28181 is not None:
            self.gb28181.stop()
        self.quality.stop()
        self.archive.close()
        self.ingest.close()
        self.monitor.flush(self.clock())
        self.tokens.flush_used(force=True)
        self.audit_anchor.checkpoint()  # the rows of the last moments, signed
        self.outbox.sender.close()
        self.engine.dispose()
