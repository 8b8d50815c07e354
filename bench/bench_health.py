"""Hub state at scale: tick time and memory for 100,000 devices, and the center summary and
availability report over 30 days of history.

    .venv/bin/python bench/bench_health.py [--devices 100000] [--days 30]

Prints figures; targets from the foundation issue: tick < 100 ms, memory < 500 MB, center summary
and 30-day availability report < 200 ms. The history is written to a real SQLite store and read
back by a freshly started hub, as after a restart.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from vms import reports
from vms.config import HubConfig
from vms.db.models import Device, StateInterval
from vms.health import INTACT, ONLINE, UPLOADING, state_name
from vms.hub import Hub

CENTERS = [{
    "id": "district", "name": "District", "level": 1, "civil_code": "320585",
    "children": [{"id": f"town{t:02d}", "name": f"Town {t}", "level": 2, "civil_code": f"320585{t:02d}"}
                 for t in range(1, 21)]
    + [{"id": "edu", "name": "Education", "level": 3, "civil_code": "320585", "industries": ["11"]}],
}]


def rss_mb() -> float:
    """Resident memory now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def seed_in_child(cfg: HubConfig, n: int, days: int, now: float) -> None:
    """Write the history from another process, so this one's memory is the hub's alone."""
    seeder = Hub(cfg)
    seed_store(seeder, device_ids(n), days, now, np.random.default_rng(1))
    seeder.stop()


def device_ids(n: int) -> list[str]:
    out = []
    for i in range(n):
        town = i % 20 + 1
        industry = "11" if i % 10 == 0 else "00"
        out.append(f"320585{town:02d}{industry}1320{i:06d}")
    return out


def seed_store(hub: Hub, ids: list[str], days: int, now: float, rng: np.random.Generator) -> int:
    """Devices plus `days` of intervals: each device has a few outages of minutes to hours."""
    t0 = now - days * 86400
    rows_dev = [{"id": d, "name": "", "location": "", "agent_id": None, "center_id": None, "created_at": t0}
                for d in ids]
    intervals = []
    up = ONLINE | UPLOADING | INTACT
    for d in ids:
        k = int(rng.integers(0, 6))
        starts = np.sort(rng.uniform(t0, now - 7200, k))
        t = t0
        for s in starts:
            if s <= t:
                continue
            length = float(rng.uniform(60, 7200))
            intervals.append((d, t, s, up))
            intervals.append((d, s, s + length, 0))
            t = s + length
        intervals.append((d, t, None, up))
    with hub.sessions() as s:
        s.execute(insert(Device), rows_dev)
        s.execute(insert(StateInterval), [
            {"device_id": d, "start_at": a, "end_at": b, "online": bool(f & ONLINE), "uploading": bool(f & UPLOADING),
             "intact": bool(f & INTACT), "state": state_name(f)} for d, a, b, f in intervals])
        s.commit()
    return len(intervals)


def timed(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        cfg = HubConfig.model_validate({"storage": {"data_dir": d}, "centers": CENTERS})
        base_rss = rss_mb()
        t = time.perf_counter()
        child = multiprocessing.get_context("fork").Process(
            target=seed_in_child, args=(cfg, args.devices, args.days, time.time()))
        child.start()
        child.join()
        print(f"store: {args.devices} devices, {args.days} days of intervals written in "
              f"{time.perf_counter() - t:.1f} s ({Path(d, 'vms.db').stat().st_size / 1e6:.0f} MB)")
        t = time.perf_counter()
        hub = Hub(cfg)
        print(f"hub start-up (load devices and {args.days} days of history): {time.perf_counter() - t:.2f} s")
        h = hub.health
        now = time.time()
        # Every device reports fresh signal and uploads; first tick establishes state.
        h.last_signal[: h.n] = now
        h.signal_since[: h.n] = now - 60
        h.last_upload[: h.n] = now
        hub.monitor.tick()
        steady = timed(lambda: h.evaluate(time.time()), 20)
        print(f"tick, {h.n} devices, no change:          {steady:7.2f} ms  (target < 100 ms)")
        changed = rng.choice(h.n, h.n // 100, replace=False)

        def one_percent_flip() -> None:
            h.last_signal[changed] = time.time() - 60 if h.last_signal[changed[0]] > time.time() - 30 else time.time()
            h.signal_since[changed] = time.time() - 60
            hub.monitor.tick()

        print(f"tick with 1% of devices changing (incl. store): {timed(one_percent_flip, 6):7.2f} ms")
        print(f"memory: hub process RSS {rss_mb():.0f} MB with {h.n} devices and {h.log.n} intervals in memory "
              f"(interpreter and libraries alone: {base_rss:.0f} MB; target < 500 MB)")
        summary = timed(hub.snapshots.centers)
        print(f"center summary (tree with counts and ratios):   {summary:7.2f} ms  (target < 200 ms)")
        end = time.time()
        rep = timed(lambda: reports.availability(hub.monitor, end - args.days * 86400, end, device_limit=100), 5)
        print(f"availability report, {args.days} days, all centers + worst 100 devices: {rep:7.2f} ms "
              f"(target < 200 ms)")
        full = timed(lambda: reports.availability(hub.monitor, end - args.days * 86400, end), 3)
        print(f"availability report, {args.days} days, every device listed: {full:7.2f} ms")
        hub.stop()


if __name__ == "__main__":
    main()
