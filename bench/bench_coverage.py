"""Coverage at scale: 10,000 sites and 100,000 cameras, 30 days of state history.

    .venv/bin/python bench/bench_coverage.py [--sites 10000] [--cameras 100000] [--days 30]

Prints the time of the coverage report (per center and kind, time-weighted, with the blind spots)
from the hub's in-memory history (what a 30-day window reads), against two baselines measured in
the same run on the same data: the availability figures of every device for the same window (what
the existing report computes) and a plain per-site Python sweep, whose figures must equal the
vectorised ones. Target from the coverage issue: under 200 ms. Also the layout (which camera covers
which site) and one tick's evaluation of the blind spots.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vms import sites as geo
from vms.config import HubConfig
from vms.health import INTACT, ONLINE, UPLOADING
from vms.hub import Hub
from vms.services.coverage import Place, StoredSite

TOWNS = 20
CENTERS = [{
    "id": "district", "name": "District", "level": 1, "civil_code": "320585",
    "children": [{"id": f"town{t:02d}", "name": f"Town {t}", "level": 2, "civil_code": f"320585{t:02d}"}
                 for t in range(1, TOWNS + 1)]
    + [{"id": "edu", "name": "Education", "level": 3, "civil_code": "320585", "industries": ["11"]}],
}]
WEST, SOUTH, SPAN = 120.9, 31.3, 0.5  # a district about 50 km across


def timed(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs) * 1000


def make_sites(n: int, rng: np.random.Generator, now: float, days: int) -> list[StoredSite]:
    kinds = list(geo.SiteKind)
    out = []
    for i in range(n):
        lon, lat = WEST + rng.uniform(0, SPAN), SOUTH + rng.uniform(0, SPAN)
        if i % 5 == 0:  # a fifth are polygons (about 200 m across)
            d = 0.002
            g = {"type": "Polygon", "coordinates": [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d],
                                                      [lon, lat]]]}
        else:
            g = {"type": "Point", "coordinates": [lon, lat]}
        rec = geo.SiteRecord(f"s{i:05d}", f"site {i}", kinds[i % len(kinds)], f"town{i % TOWNS + 1:02d}", g,
                             1 + (i % 7 == 0), 100.0)
        out.append(StoredSite(rec, "api", now - days * 86400, now))
    return out


def seed(hub: Hub, n: int, sites: list[StoredSite], days: int, now: float, rng: np.random.Generator) -> int:
    """Devices with positions (most near a site) and their history: a few outages and defects each."""
    h = hub.health
    t0 = now - days * 86400
    for i in range(n):
        town = i % TOWNS + 1
        h.add(f"320585{town:02d}{'11' if i % 10 == 0 else '00'}1320{i:06d}", t0)
    anchor = np.array([geo.representative(sites[int(k)].record.geometry)
                       for k in rng.integers(0, len(sites), n)])
    near = rng.random(n) < 0.6
    jitter = rng.normal(0, 0.0004, (n, 2))  # about 40 m
    lon = np.where(near, anchor[:, 0] + jitter[:, 0], WEST + rng.uniform(0, SPAN, n))
    lat = np.where(near, anchor[:, 1] + jitter[:, 1], SOUTH + rng.uniform(0, SPAN, n))
    hub.coverage.places = {h.ids[i]: {"config": Place(float(lon[i]), float(lat[i]), None, t0, "")} for i in range(n)}
    good = ONLINE | UPLOADING | INTACT
    dev, st, en, fl = [], [], [], []
    for i in range(n):
        k = int(rng.integers(0, 6))
        t = t0
        for s in np.sort(rng.uniform(t0, now - 7200, k)):
            if s <= t:
                continue
            length = float(rng.uniform(60, 7200))
            bad = 0 if rng.random() < 0.7 else ONLINE | UPLOADING  # offline, or online with a defect
            dev += [i, i]
            st += [t, s]
            en += [s, s + length]
            fl += [good, bad]
            t = s + length
        h.known[i], h.open_start[i], h.flags[i] = True, t, good
    h.log.extend(dev, st, en, fl)
    return len(dev)


def naive(pairs: geo.Pairs, need: np.ndarray, start: float, iv: geo.Intervals, end: float) -> list[float]:
    """The same figures one site at a time in plain Python: merge each site's camera intervals."""
    by_cam: dict[int, list[tuple[float, float]]] = {}
    for d, s, e, g in zip(iv.dev.tolist(), iv.start.tolist(), iv.end.tolist(), iv.good.tolist(), strict=True):
        if g:
            by_cam.setdefault(d, []).append((max(s, start), min(e, end)))
    cams: dict[int, list[int]] = {}
    for s, c in zip(pairs.site.tolist(), pairs.cam.tolist(), strict=True):
        cams.setdefault(s, []).append(c)
    out = []
    for site in range(len(need)):
        events: list[tuple[float, int]] = []
        for c in cams.get(site, []):
            for a, b in by_cam.get(c, []):
                if b > a:
                    events += [(a, 1), (b, -1)]
        heapq.heapify(events)
        count, covered, last = 0, 0.0, start
        while events:
            t, dlt = heapq.heappop(events)
            if count >= need[site]:
                covered += t - last
            count, last = count + dlt, t
        out.append(covered)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--cameras", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        cfg = HubConfig.model_validate({"storage": {"data_dir": d}, "centers": CENTERS})
        hub = Hub(cfg)
        now = time.time()
        sites = make_sites(args.sites, rng, now, args.days)
        t = time.perf_counter()
        n_iv = seed(hub, args.cameras, sites, args.days, now, rng)
        print(f"history: {args.cameras} cameras, {n_iv} closed intervals over {args.days} days "
              f"(made in {time.perf_counter() - t:.1f} s)")
        cov = hub.coverage
        cov.sites = sites
        t = time.perf_counter()
        with cov._lock:
            cov._rebuild()
        pairs = cov.pairs
        with_cam = np.count_nonzero(np.bincount(pairs.site, minlength=len(sites)))
        print(f"layout: {len(pairs.site)} camera-site pairs, {with_cam} of {len(sites)} sites with a camera; "
              f"built with the blind spots in {time.perf_counter() - t:.2f} s")
        start, end = now - args.days * 86400, now
        cov.clock = hub.monitor.clock = lambda: end  # the window ends at this instant for every run
        rep = timed(lambda: cov.report(start, end), 5)
        print(f"coverage report, {args.days} days, {len(sites)} sites x {args.cameras} cameras: {rep:7.1f} ms "
              f"(target < 200 ms)")
        av = timed(lambda: hub.monitor.availability(start, end), 5)
        print(f"baseline: availability of every device, same window:          {av:7.1f} ms")
        iv = cov._intervals(start, end)
        sweep = timed(lambda: geo.sweep(pairs, cov.min_cams, np.maximum(cov.created, start), iv, end), 5)
        print(f"  of which the sweep alone (vms/sites.py):                     {sweep:7.1f} ms")
        t = time.perf_counter()
        slow = naive(pairs, cov.min_cams, start, iv, end)
        took = (time.perf_counter() - t) * 1000
        fast = geo.sweep(pairs, cov.min_cams, np.maximum(cov.created, start), iv, end).covered_s
        same = np.allclose(fast, slow, atol=1e-3)
        print(f"baseline: plain Python sweep, site by site:                   {took:7.1f} ms "
              f"({took / sweep:.0f}x the vectorised sweep; figures equal: {same})")
        tick = timed(lambda: cov._evaluate(end), 20)
        print(f"tick: working cameras per site and the blind spots, no change: {tick:7.2f} ms")
        r = cov.report(start, end)
        root = r["centers"][0]
        print(f"result: {root['covered']} of {root['sites']} sites covered now, district rate "
              f"{root['rate']:.4f}; {r['blind_spots_total']} blind spots")
        if not same:
            raise SystemExit("the vectorised figures differ from the plain sweep")
        hub.stop()


if __name__ == "__main__":
    main()
