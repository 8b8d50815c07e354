"""Coverage of sites: the sites and camera placements, the blind spots now, the figures for any window.

Sites come from the config (mirrored at every start, edited there only), from GeoJSON or CSV
imports and from admins (both audited). Where a camera stands comes from the config, an admin, or
the device itself (a GB/T 28181 catalog's Longitude/Latitude): one ``device_places`` row per
source, the first of :data:`PRECEDENCE` that says something wins. The math is ``vms/sites.py``'s;
this service keeps the current layout (which camera covers which site), evaluates it at every tick
(blind spots and since when; the ``site_uncovered`` alert of key sites, through the one alert
writer) and answers the coverage figures of any window from the state history.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms import audit
from vms import sites as geo
from vms.alerts import AlertKind, AlertState
from vms.auth import Principal
from vms.config import HubConfig
from vms.db.models import Alert, DevicePlace, Site
from vms.errors import Conflict, NotFound
from vms.events import EventBus
from vms.health import INTACT, ONLINE, IntervalLog
from vms.kernel import ids
from vms.kernel.timeutil import iso
from vms.services.alerting import AlertTx, AlertWriter, NewAlert
from vms.services.registry import Registry

log = logging.getLogger(__name__)
#: Newly uncovered sites named in the log line of one tick; the rest are counted.
SITES_LOGGED = 5

#: Sources of a camera's position, strongest first: a person's placement beats the config, which
#: beats what a device says about itself.
PRECEDENCE = ("admin", "config", "gb28181", "onvif")
REPORTED = ("gb28181", "onvif")
KIND = AlertKind.SITE_UNCOVERED
GOOD = ONLINE | INTACT


class UnknownSite(NotFound):
    """No site with that ID."""


class ConfigSite(Conflict):
    """The site comes from the config file: it is edited there, not through the API."""


@dataclass(frozen=True)
class StoredSite:
    record: geo.SiteRecord
    source: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Place:
    lon: float | None
    lat: float | None
    sites: tuple[str, ...] | None
    at: float
    by: str


@dataclass(frozen=True)
class GroupFigures:
    """Sites of one kind counted in one center (with its sub-centers'), right now."""

    center: str
    kind: geo.SiteKind
    sites: int
    covered: int
    target: float


@dataclass(frozen=True)
class CoverageSnapshot:
    """What the metrics read: figures per center and kind, and each site's state, now."""

    groups: list[GroupFigures]
    sites: list[tuple[str, str, str, bool, int]]  # id, kind, center, covered, working cameras


def fingerprint(site_id: str) -> str:
    return f"{KIND}:{site_id}"


class Coverage:
    def __init__(self, cfg: HubConfig, registry: Registry, sessions: sessionmaker[Session], writer: AlertWriter,
                 log_for: Callable[[float, float], IntervalLog | None], events: EventBus,
                 clock: Callable[[], float], read_only: bool = False) -> None:
        """``log_for(start, end)``: the closed intervals of a window (None: the in-memory history)."""
        self.cfg = cfg
        self.reg = registry
        self.health = registry.health
        self.sessions = sessions
        self.writer = writer
        self.log_for = log_for
        self.events = events
        self.clock = clock
        self.read_only = read_only
        self.bounds = cfg.map.bounds()
        self.boundary = cfg.map.boundary_geometry()
        self.book = geo.SiteAlertBook(cfg.coverage.alert_after_s, cfg.alerts.resolve_hold_s)
        self._lock = threading.RLock()
        self.sites: list[StoredSite] = []
        self.index: dict[str, int] = {}
        self.places: dict[str, dict[str, Place]] = {}
        self.pairs = geo.Pairs.of([], [])
        self.min_cams = np.zeros(0, np.int64)
        self.created = np.zeros(0, np.float64)
        self.working = np.zeros(0, np.int64)
        self.uncovered: dict[str, float] = {}  # site -> uncovered since, the blind spots now
        self._built_for = -1  # the device count the layout was built for
        self._centers_of: list[list[int]] = []  # per site: its center and that center's ancestors
        self.center_ids = [c.id for c in registry.tree]

    # -- start-up ----------------------------------------------------------------------------------
    def load(self, s: Session) -> None:
        """Mirror the config's sites and placements into the store, read them all, adopt open alerts."""
        now = self.clock()
        if not self.read_only:
            self._sync_config(s, now)
        self.sites = [self._stored(r) for r in s.scalars(select(Site).order_by(Site.id))]
        self.places = {}
        for p in s.scalars(select(DevicePlace)):
            self.places.setdefault(p.device_id, {})[p.source] = Place(
                p.lon, p.lat, None if p.sites is None else tuple(p.sites), p.at, p.by)
        q = select(Alert.fingerprint).where(Alert.kind == KIND.value, Alert.state != AlertState.RESOLVED.value)
        self.book.open = {fp.split(":", 1)[1] for fp in s.scalars(q)}
        with self._lock:
            self._rebuild()

    def _sync_config(self, s: Session, now: float) -> None:
        wanted = {c.id: c.record(self.bounds) for c in self.cfg.sites}
        for row in s.scalars(select(Site).where(Site.source == "config")):
            if row.id not in wanted:
                s.delete(row)
        for sid, rec in wanted.items():
            row = s.get(Site, sid) or Site(id=sid, created_at=now)
            s.add(row)
            self._fill(row, rec, "config", now)
        places = {d.id: d for d in self.cfg.devices if d.lon is not None or d.sites is not None}
        for prow in s.scalars(select(DevicePlace).where(DevicePlace.source == "config")):
            if prow.device_id not in places:
                s.delete(prow)
        for did, d in places.items():
            s.merge(DevicePlace(device_id=did, source="config", lon=d.lon, lat=d.lat, sites=d.sites, at=now, by=""))
        s.commit()

    @staticmethod
    def _fill(row: Site, rec: geo.SiteRecord, source: str, now: float) -> None:
        row.name, row.kind, row.center_id, row.geometry = rec.name, rec.kind.value, rec.center, rec.geometry
        row.min_cameras, row.radius_m, row.source, row.updated_at = rec.min_cameras, rec.radius_m, source, now

    @staticmethod
    def _stored(row: Site) -> StoredSite:
        rec = geo.SiteRecord(row.id, row.name, geo.SiteKind(row.kind), row.center_id, row.geometry, row.min_cameras,
                             row.radius_m)
        return StoredSite(rec, row.source, row.created_at, row.updated_at)

    # -- the layout: which camera covers which site --------------------------------------------------
    def position(self, device_id: str) -> tuple[float, float, str] | None:
        """Where the device stands and which source says so, or None."""
        srcs = self.places.get(device_id, {})
        for src in PRECEDENCE:
            p = srcs.get(src)
            if p is not None and p.lon is not None and p.lat is not None:
                return p.lon, p.lat, src
        return None

    def explicit_sites(self, device_id: str) -> tuple[str, ...] | None:
        srcs = self.places.get(device_id, {})
        return next((srcs[s].sites for s in PRECEDENCE if s in srcs and srcs[s].sites is not None), None)

    def _rebuild(self) -> None:
        """Recompute the layout from sites and places (caller holds ``_lock``); then the blind spots."""
        self.index = {s.record.id: i for i, s in enumerate(self.sites)}
        with self.reg.lock:
            n = self.health.n
            dev_index = dict(self.health.index)
        lon = np.full(n, np.nan)
        lat = np.full(n, np.nan)
        explicit: dict[int, list[int]] = {}
        for did in self.places:
            i = dev_index.get(did)
            if i is None:
                continue
            pos = self.position(did)
            if pos is not None:
                lon[i], lat[i] = pos[0], pos[1]
            sites = self.explicit_sites(did)
            if sites is not None:
                explicit[i] = [self.index[x] for x in sites if x in self.index]
        recs = [s.record for s in self.sites]
        self.pairs = geo.assign(recs, lon, lat, explicit)
        self.min_cams = np.fromiter((r.min_cameras for r in recs), np.int64, len(recs))
        self.created = np.fromiter((s.created_at for s in self.sites), np.float64, len(recs))
        tree = self.reg.tree
        pos_of = {c: i for i, c in enumerate(self.center_ids)}
        self._centers_of = []
        for r in recs:
            c = tree.by_id.get(r.center)
            self._centers_of.append([] if c is None else [pos_of[c.id], *(pos_of[a.id] for a in c.ancestors())])
        self._built_for = n
        self.working = np.zeros(len(recs), np.int64)
        self.uncovered = {}
        self._evaluate(self.clock(), full=True)

    def _layout_changed(self, what: list[str]) -> None:
        self._rebuild()
        self.events.publish("changed", {"sites": what, "layout": True})

    # -- the tick ----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Blind spots now, and the key sites' alerts; called after every state evaluation."""
        with self._lock:
            with self.reg.lock:
                n = self.health.n
                new_ids = self.health.ids[self._built_for:n] if n != self._built_for else []
            if n != self._built_for:
                if any(d in self.places for d in new_ids):
                    self._rebuild()
                else:
                    self._built_for = n
            now = self.clock()
            changed = self._evaluate(now)
            to_open, to_resolve = self.book.plan(self.uncovered, {s.record.id: s.record.key for s in self.sites}, now)
            views = {sid: self._alert_view(sid, now) for sid in to_open}
        if to_open or to_resolve:
            self._write_alerts(views, to_resolve, now)
        if changed:
            self.events.publish("changed", {"sites": changed})

    def _good_now(self) -> npt.NDArray[np.bool_]:
        with self.reg.lock:
            n = self.health.n
            good = self.health.known[:n] & ((self.health.flags[:n] & GOOD) == GOOD) & ~self.health.retired[:n]
        out = np.zeros(max(n, self._built_for, 1), np.bool_)
        out[:n] = good
        return out

    def _evaluate(self, now: float, full: bool = False) -> list[str]:
        """Update the working counts and the blind spots; returns the sites whose state changed."""
        n_sites = len(self.sites)
        if not n_sites:
            return []
        good = self._good_now()
        if len(self.pairs.cam) and int(self.pairs.cam.max()) >= len(good):
            good = np.concatenate((good, np.zeros(int(self.pairs.cam.max()) + 1 - len(good), np.bool_)))
        self.working = geo.working_counts(self.pairs, n_sites, good)
        covered = self.working >= self.min_cams
        was_unc = np.zeros(n_sites, np.bool_)
        for sid in self.uncovered:
            if sid in self.index:
                was_unc[self.index[sid]] = True
        newly = ~covered & (~was_unc | full)
        back = covered & was_unc
        if not newly.any() and not back.any():
            return []
        recs = [s.record for s in self.sites]
        for i in np.flatnonzero(back).tolist():
            self.uncovered.pop(recs[i].id, None)
        if newly.any():
            start = now - self.cfg.health.report_cache_days * 86400
            iv = self._intervals(start, now)
            sw = geo.sweep(self.pairs, self.min_cams, np.maximum(self.created, start), iv, now, only=newly)
            for i in np.flatnonzero(newly).tolist():
                since = sw.uncovered_since[i]
                self.uncovered[recs[i].id] = float(since) if math.isfinite(since) else now
        return [recs[i].id for i in np.flatnonzero(newly | back).tolist()]

    def _intervals(self, start: float, end: float) -> geo.Intervals:
        """Every state interval overlapping ``[start, end)``, the open ones ending at ``end`` (or now)."""
        lg = self.log_for(start, end)
        now = self.clock()
        end = min(end, now)
        with self.reg.lock:
            src = lg if lg is not None else self.health.log
            k = src.n
            m = (src.end[:k] > start) & (src.start[:k] < end)
            dev, s, e, f = src.dev[:k][m].astype(np.int64), src.start[:k][m], src.end[:k][m], src.flags[:k][m]
            n = self.health.n
            open_ = np.flatnonzero(self.health.known[:n])
            os_, of = self.health.open_start[open_], self.health.flags[open_]
        flags = np.concatenate((f, of))
        return geo.Intervals(
            dev=np.concatenate((dev, open_.astype(np.int64))),
            start=np.concatenate((s, os_)),
            end=np.concatenate((e, np.full(len(open_), end))),
            good=(flags & GOOD) == GOOD,
        )

    # -- alerts ---------------------------------------------------------------------------------------------
    def _cameras(self, i: int) -> list[str]:
        with self.reg.lock:
            ids_ = self.health.ids
            return [ids_[c] for c in self.pairs.cam[self.pairs.site == i].tolist() if c < len(ids_)]

    def _alert_view(self, sid: str, now: float) -> NewAlert:
        i = self.index[sid]
        r = self.sites[i].record
        working, need = int(self.working[i]), r.min_cameras
        cams = self._cameras(i)
        since = self.uncovered.get(sid, now)
        title = (f"{r.kind.value} {r.name} uncovered: {working} of {need} working camera(s) needed"
                 if cams else f"{r.kind.value} {r.name} uncovered: no camera covers it")
        return NewAlert(fingerprint=fingerprint(sid), kind=KIND, title=title[:300], since=since, members=cams,
                        center_id=r.center, detail={"site": sid, "name": r.name, "kind": r.kind.value,
                                                    "min_cameras": need, "working": working, "cameras": cams[:100]})

    def _write_alerts(self, opened: Mapping[str, NewAlert], resolved: list[str], now: float) -> None:
        told: list[str] = []
        try:
            with self.writer.transaction(now) as tx:
                for new in opened.values():
                    if tx.find_active(new.fingerprint) is None:
                        tx.open(new, announce=False)
                        told.append(new.title)
                for sid in resolved:
                    self._resolve(tx, sid, "covered again" if sid in self.index else "site removed")
            if told:
                # One line: a new district's first tick may find hundreds of blind spots.
                more = f"; and {len(told) - SITES_LOGGED} more" if len(told) > SITES_LOGGED else ""
                log.warning("%d key site(s) uncovered, an alert opened for each: %s%s", len(told),
                            "; ".join(told[:SITES_LOGGED]), more)
        except Exception as exc:
            # Forget the decisions: the next tick plans them again.
            log.error("site alerts not written (%s); retried next tick", exc)
            self.book.open.difference_update(opened)
            self.book.open.update(resolved)

    @staticmethod
    def _resolve(tx: AlertTx, sid: str, comment: str) -> None:
        row = tx.find_active(fingerprint(sid))
        if row is not None:
            tx.resolve(row, "system", comment)

    # -- figures -------------------------------------------------------------------------------------------
    def _scope(self, center: str | None) -> npt.NDArray[np.bool_]:
        n = len(self.sites)
        if center is None:
            return np.ones(n, np.bool_)
        c = self.center_ids.index(self.reg.tree.get(center).id)  # UnknownCenter -> 404
        return np.fromiter((c in cs for cs in self._centers_of), np.bool_, n)

    def report(self, start: float, end: float, center: str | None = None, listed: int = 100) -> dict[str, Any]:
        """Coverage per center and kind for ``[start, end)`` from the history: time-weighted rate
        against the kind's target, sites covered at the end of the window out of all, the uncovered
        ones with since when; and the blind spots, longest first."""
        now = self.clock()
        end = min(end, now)
        iv = self._intervals(start, end)
        with self._lock:
            sites = list(self.sites)
            n = len(sites)
            scope = self._scope(center)
            sw = geo.sweep(self.pairs, self.min_cams, np.maximum(self.created, start), iv, end)
            live = end >= now - 2 * self.cfg.health.tick_s  # a window ending now: the blind spots as the tick sees them
            if live:
                unc = {sid: t for sid, t in self.uncovered.items() if sid in self.index}
                working = self.working.copy()
            else:
                unc = {sites[i].record.id: float(sw.uncovered_since[i]) for i in np.flatnonzero(~sw.covered_at_end)}
                working = np.full(n, -1, np.int64)
            centers_of = list(self._centers_of)
        covered_end = np.ones(n, np.bool_)
        for sid in unc:
            covered_end[self.index[sid]] = False
        kinds = list(geo.SiteKind)
        nk = len(kinds)
        kind_ix = np.fromiter((kinds.index(s.record.kind) for s in sites), np.int64, n)
        gsite = np.fromiter((i for i, cs in enumerate(centers_of) for _ in cs), np.int64)
        gcenter = np.fromiter((c for cs in centers_of for c in cs), np.int64)
        inscope = scope[gsite]
        gsite, gcenter = gsite[inscope], gcenter[inscope]
        gid = gcenter * nk + kind_ix[gsite]
        size = len(self.center_ids) * nk
        count = np.bincount(gid, minlength=size)
        cov = np.bincount(gid, weights=covered_end[gsite], minlength=size)
        cs_ = np.bincount(gid, weights=sw.covered_s[gsite], minlength=size)
        ms_ = np.bincount(gid, weights=sw.monitored_s[gsite], minlength=size)

        def spot(i: int) -> dict[str, Any]:
            r = sites[i].record
            since = unc[r.id]
            return {"id": r.id, "name": r.name, "kind": r.kind.value, "center": r.center, "since": iso(since),
                    "for_s": round(max(0.0, end - since), 3), "min_cameras": r.min_cameras,
                    "working": int(working[i]) if working[i] >= 0 else None, "key": r.key}

        by_group: dict[int, list[int]] = {}
        for i, c in zip(gsite.tolist(), gcenter.tolist(), strict=True):
            if sites[i].record.id in unc:
                by_group.setdefault(c * nk + int(kind_ix[i]), []).append(i)
        tree = self.reg.tree
        centers = []
        for ci, cid in enumerate(self.center_ids):
            row_ids = range(ci * nk, ci * nk + nk)
            total = int(count[ci * nk: ci * nk + nk].sum())
            if not total:
                continue
            c = tree.by_id[cid]
            kinds_out = []
            for g in row_ids:
                if not count[g]:
                    continue
                kind = kinds[g - ci * nk]
                rate = None if ms_[g] <= 0 else min(1.0, float(cs_[g] / ms_[g]))
                target = self.cfg.coverage.target(kind)
                spots = sorted(by_group.get(g, []), key=lambda i: unc[sites[i].record.id])
                kinds_out.append({
                    "kind": kind.value, "sites": int(count[g]), "covered": int(cov[g]), "rate": rate,
                    "target": target, "meets_target": None if rate is None else rate >= target - 1e-9,
                    "covered_s": round(float(cs_[g]), 3), "monitored_s": round(float(ms_[g]), 3),
                    "uncovered": [spot(i) for i in spots[:listed]], "uncovered_total": len(spots),
                })
            sl = slice(ci * nk, ci * nk + nk)
            mon = float(ms_[sl].sum())
            rate_c = None if mon <= 0 else min(1.0, float(cs_[sl].sum()) / mon)
            centers.append({"center": cid, "name": c.name, "level": c.level, "sites": total,
                            "covered": int(cov[sl].sum()), "rate": rate_c, "kinds": kinds_out})
        blind = sorted((i for i in range(n) if scope[i] and sites[i].record.id in unc),
                       key=lambda i: unc[sites[i].record.id])
        return {"from": iso(start), "to": iso(end), "center": center, "centers": centers,
                "blind_spots": [spot(i) for i in blind[:listed]], "blind_spots_total": len(blind)}

    def blind_spots(self, limit: int = 100, center: str | None = None) -> dict[str, Any]:
        """The sites uncovered now, longest first (what the wall lists)."""
        now = self.clock()
        with self._lock:
            scope = self._scope(center)
            out = []
            for sid, since in sorted(self.uncovered.items(), key=lambda kv: kv[1]):
                i = self.index.get(sid)
                if i is None or not scope[i]:
                    continue
                r = self.sites[i].record
                out.append({"id": sid, "name": r.name, "kind": r.kind.value, "center": r.center, "since": iso(since),
                            "for_s": round(max(0.0, now - since), 3), "min_cameras": r.min_cameras,
                            "working": int(self.working[i]), "key": r.key})
            return {"total": len(out), "sites": out[:limit]}

    def snapshot(self) -> CoverageSnapshot:
        with self._lock:
            kinds = list(geo.SiteKind)
            counts: dict[tuple[int, geo.SiteKind], list[int]] = {}
            rows = []
            for i, s in enumerate(self.sites):
                r = s.record
                covered = r.id not in self.uncovered
                rows.append((r.id, r.kind.value, r.center, covered, int(self.working[i])))
                for c in self._centers_of[i]:
                    tally = counts.setdefault((c, r.kind), [0, 0])
                    tally[0] += 1
                    tally[1] += covered
            groups = [GroupFigures(self.center_ids[c], k, a, b, self.cfg.coverage.target(k))
                      for (c, k), (a, b) in sorted(counts.items(), key=lambda kv: (kv[0][0], kinds.index(kv[0][1])))]
            return CoverageSnapshot(groups, rows)

    # -- views ---------------------------------------------------------------------------------------------
    def _site_view(self, i: int, now: float, cams: list[str] | None = None) -> dict[str, Any]:
        s = self.sites[i]
        r = s.record
        lon, lat = geo.representative(r.geometry)
        since = self.uncovered.get(r.id)
        out: dict[str, Any] = {
               "id": r.id, "name": r.name, "kind": r.kind.value, "center": r.center, "lon": lon, "lat": lat,
               "geometry": r.geometry, "min_cameras": r.min_cameras, "radius_m": r.radius_m, "key": r.key,
               "target": self.cfg.coverage.target(r.kind), "source": s.source, "created_at": iso(s.created_at),
               "working": int(self.working[i]) if i < len(self.working) else 0,
               "covered": since is None, "since": iso(since),
               "for_s": None if since is None else round(max(0.0, now - since), 3)}
        if cams is not None:
            out["cameras"] = cams
        return out

    def list_sites(self, center: str | None = None, kind: geo.SiteKind | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        with self._lock:
            scope = self._scope(center)
            per_site: dict[int, list[int]] = {}
            for si, c in zip(self.pairs.site.tolist(), self.pairs.cam.tolist(), strict=True):
                per_site.setdefault(si, []).append(c)
            with self.reg.lock:
                ids_ = list(self.health.ids)
            return [self._site_view(i, now, [ids_[c] for c in per_site.get(i, []) if c < len(ids_)])
                    for i, s in enumerate(self.sites) if scope[i] and (kind is None or s.record.kind == kind)]

    def site(self, site_id: str) -> dict[str, Any]:
        with self._lock:
            i = self.index.get(site_id)
            if i is None:
                raise UnknownSite(f"unknown site {site_id!r}")
            return self._site_view(i, self.clock(), self._cameras(i))

    def cameras(self) -> list[dict[str, Any]]:
        """Every placed device with its position, source, sites and state (the map's markers)."""
        with self._lock:
            sites_of: dict[int, list[str]] = {}
            for si, c in zip(self.pairs.site.tolist(), self.pairs.cam.tolist(), strict=True):
                sites_of.setdefault(c, []).append(self.sites[si].record.id)
            placed = [(did, pos) for did in self.places if (pos := self.position(did)) is not None]
            with self.reg.lock:
                index, h, info = self.health.index, self.health, self.reg.info
                out = []
                for did, (lon, lat, src) in placed:
                    i = index.get(did)
                    if i is None:
                        continue
                    out.append({"id": did, "name": info[i].name, "lon": lon, "lat": lat, "source": src,
                                "state": h.state_of(i), "sites": sites_of.get(i, [])})
            return out

    def map_view(self) -> dict[str, Any]:
        m = self.cfg.map
        with self._lock:
            pts = [geo.representative(s.record.geometry) for s in self.sites]
        b = geo.geometry_bounds(self.boundary) if self.boundary is not None else (
            geo.Bounds(min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))
            if pts else None)
        raw = m.boundary  # as configured: a town's feature keeps its name
        boundary = None if raw is None else raw if raw.get("type") in ("Feature", "FeatureCollection") else {
            "type": "Feature", "properties": {}, "geometry": raw}
        return {"tile_url": m.tile_url, "attribution": m.attribution, "min_zoom": m.min_zoom, "max_zoom": m.max_zoom,
                "boundary": boundary, "bounds": None if b is None else [[b.south, b.west], [b.north, b.east]]}

    # -- edits by an admin (audited) --------------------------------------------------------------------------
    def _check_site(self, raw: Mapping[str, Any], where: str) -> geo.SiteRecord:
        return geo.make_site(raw, where, self.center_ids, self.bounds)

    def put_site(self, who: Principal, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a site (not one of the config's)."""
        rec = self._check_site(raw, f"site {raw.get('id')}")
        now = self.clock()
        with self._lock:
            with self.sessions() as s:
                row = s.get(Site, rec.id)
                if row is not None and row.source == "config":
                    raise ConfigSite(f"site {rec.id!r} comes from the config file; change it there")
                action = "site.create" if row is None else "site.update"
                if row is None:
                    row = Site(id=rec.id, created_at=now)
                    s.add(row)
                self._fill(row, rec, "api", now)
                s.commit()
                self._replace([self._stored(row)])
            audit.record(self.sessions, who, at=now, action=action, target=rec.id,
                         detail={"name": rec.name, "kind": rec.kind.value, "center": rec.center,
                                 "geometry": rec.geometry["type"], "min_cameras": rec.min_cameras})
            self._layout_changed([rec.id])
            return self.site(rec.id)

    def _replace(self, stored: list[StoredSite]) -> None:
        by_id = {s.record.id: s for s in self.sites}
        by_id.update({s.record.id: s for s in stored})
        self.sites = sorted(by_id.values(), key=lambda s: s.record.id)

    def delete_site(self, who: Principal, site_id: str) -> None:
        now = self.clock()
        with self._lock:
            with self.writer.transaction(now) as tx:
                row = tx.session.get(Site, site_id)
                if row is None:
                    raise UnknownSite(f"unknown site {site_id!r}")
                if row.source == "config":
                    raise ConfigSite(f"site {site_id!r} comes from the config file; remove it there")
                tx.session.delete(row)
                for prow in tx.session.scalars(select(DevicePlace).where(DevicePlace.source != "config")):
                    if prow.sites and site_id in prow.sites:
                        prow.sites = [x for x in prow.sites if x != site_id]
                        self.places[prow.device_id][prow.source] = Place(prow.lon, prow.lat, tuple(prow.sites),
                                                                          prow.at, prow.by)
                self._resolve(tx, site_id, "site removed")
            self.book.open.discard(site_id)
            self.sites = [s for s in self.sites if s.record.id != site_id]
            audit.record(self.sessions, who, at=now, action="site.delete", target=site_id)
            self._layout_changed([site_id])

    def import_sites(self, who: Principal, text: str, fmt: str) -> dict[str, Any]:
        """Sites from GeoJSON or CSV, all or none: the first bad feature or line refuses the file."""
        parse = geo.parse_geojson_sites if fmt == "geojson" else geo.parse_csv_sites
        recs = parse(text, self.center_ids, self.bounds)
        now = self.clock()
        with self._lock:
            with self.sessions() as s:
                rows = {r.id: r for r in s.scalars(select(Site).where(Site.id.in_([x.id for x in recs])))}
                ours = sorted(x for x, r in rows.items() if r.source == "config")
                if ours:
                    raise ConfigSite(f"site(s) {', '.join(ours[:10])} come from the config file; change them there")
                for rec in recs:
                    row = rows.get(rec.id)
                    if row is None:
                        row = Site(id=rec.id, created_at=now)
                        s.add(row)
                    self._fill(row, rec, "api", now)
                s.commit()
                stored = [self._stored(s.get(Site, rec.id)) for rec in recs]  # type: ignore[arg-type]
            self._replace(stored)
            created = [r.id for r in recs if r.id not in rows]
            audit.record(self.sessions, who, at=now, action="site.import", target=fmt,
                         detail={"sites": len(recs), "created": len(created), "updated": len(recs) - len(created),
                                 "ids": [r.id for r in recs][:200]})
            self._layout_changed([r.id for r in recs])
        return {"imported": len(recs), "created": len(created), "updated": len(recs) - len(created)}

    def place(self, who: Principal, device_id: str, lon: float | None, lat: float | None,
              sites: list[str] | None) -> dict[str, Any]:
        """An admin places a camera (and optionally names the sites it covers): wins over every other source."""
        if not self.reg.known(device_id):
            raise NotFound(f"unknown device {device_id}")
        if (lon is None) != (lat is None):
            raise geo.GeoError(f"device {device_id}: give both lon and lat, or neither")
        if lon is not None:
            lon, lat = geo.check_point(lon, lat, f"device {device_id}", self.bounds)
        with self._lock:
            unknown = [x for x in sites or [] if x not in self.index]
            if unknown:
                raise geo.GeoError(f"device {device_id} is assigned to unknown site(s) {', '.join(unknown)}")
            now = self.clock()
            with self.sessions() as s:
                s.merge(DevicePlace(device_id=device_id, source="admin", lon=lon, lat=lat, sites=sites, at=now,
                                    by=who.name))
                s.commit()
            self.places.setdefault(device_id, {})["admin"] = Place(lon, lat, None if sites is None else tuple(sites),
                                                                    now, who.name)
            audit.record(self.sessions, who, at=now, action="device.place", target=device_id,
                         detail={"lon": lon, "lat": lat, "sites": sites})
            self._layout_changed([])
            return self.placement(device_id)

    def unplace(self, who: Principal, device_id: str) -> dict[str, Any]:
        """Withdraw an admin's placement: the config's or the device's own position applies again."""
        with self._lock:
            if "admin" not in self.places.get(device_id, {}):
                raise NotFound(f"device {device_id} has no placement by an admin")
            now = self.clock()
            with self.sessions() as s:
                row = s.get(DevicePlace, (device_id, "admin"))
                if row is not None:
                    s.delete(row)
                s.commit()
            del self.places[device_id]["admin"]
            audit.record(self.sessions, who, at=now, action="device.unplace", target=device_id)
            self._layout_changed([])
            return self.placement(device_id)

    def placement(self, device_id: str) -> dict[str, Any]:
        with self._lock:
            pos = self.position(device_id)
            with self.reg.lock:
                i = self.health.index.get(device_id)
            mine = [] if i is None else self.pairs.site[self.pairs.cam == i].tolist()
            sites = [self.sites[s].record.id for s in mine]
            return {"device_id": device_id, "lon": pos[0] if pos else None, "lat": pos[1] if pos else None,
                    "source": pos[2] if pos else None, "explicit_sites": self.explicit_sites(device_id),
                    "sites": sites,
                    "sources": {k: {"lon": p.lon, "lat": p.lat, "sites": p.sites, "at": iso(p.at), "by": p.by}
                                for k, p in self.places.get(device_id, {}).items()}}

    def place_reported(self, device_id: str, lon: float | None, lat: float | None, source: str = "gb28181") -> bool:
        """A device's own position (a GB/T 28181 catalog's Longitude/Latitude, an ONVIF GeoLocation).

        Weaker than the config's and an admin's. Missing, 0/0 (what devices send when unset), out of
        range or outside the district is ignored and logged; returns whether it was taken."""
        if source not in REPORTED:
            raise ValueError(f"source must be one of {REPORTED}")
        try:
            ids.parse(device_id)
            if lon is None or lat is None or (lon == 0 and lat == 0):
                return False
            lon, lat = geo.check_point(lon, lat, f"device {device_id} ({source})", self.bounds)
        except (ids.InvalidDeviceId, geo.GeoError) as exc:
            log.warning("position ignored: %s", exc)
            return False
        with self._lock:
            old = self.places.get(device_id, {}).get(source)
            if old is not None and (old.lon, old.lat) == (lon, lat):
                return True
            now = self.clock()
            with self.sessions() as s:
                s.merge(DevicePlace(device_id=device_id, source=source, lon=lon, lat=lat, sites=None, at=now, by=""))
                s.commit()
            self.places.setdefault(device_id, {})[source] = Place(lon, lat, None, now, "")
            if self.reg.known(device_id):
                self._layout_changed([])
        return True
