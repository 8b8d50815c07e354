"""Archive speed: storing a segment, a 10-minute 1080p 4 Mbps clip across its segments, and a retention
pass at scale.

    .venv/bin/python bench/bench_archive.py [--minutes 10] [--cameras 500] [--days 30] [--segment-seconds 60]
                                            [--store-segments 400] [--skip-store] [--skip-clip] [--skip-retention]

Store: ``--store-segments`` finished segment files on the archive's disk are stored one by one as the
hub's GB/T 28181 store worker stores them (``SegmentIngest.store_own``: duplicate check, rename,
directory fsync, the index row committed with ``synchronous=FULL``), CPU of the storing thread per
segment. Baseline, same run and disk: what durability alone costs, the same rename and directory
fsync and one row inserted and committed through the bare SQLite connection (a prepared statement,
no duplicate check). The ratio is the price of the index code above that floor.

Clip: 1080p25 High-profile (B-frames) 4 Mbps H.264 is encoded with PyAV, cut into 4 s keyframe
segments and stored through the hub's segment store; then the clip builder (verify every segment's
SHA-256, stream copy into fragmented MP4, hash the output) is timed against
``ffmpeg -f concat -c copy`` on the same segment files, in the same run. Targets: first byte < 1 s,
>= 500x real time, ratio (ffmpeg time / ours) >= 0.8.

Retention: an index of ``cameras`` x ``days`` of segments plus one expired hour is written to a real
SQLite store (no media files: the pass unlinks what is there), then one pass is timed. Target < 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from camsim.clips import ClipParams, encode_clip
from tests.test_archive_clip import split_segments
from vms.archive.clip import build_clip, plan_clip
from vms.config import HubConfig
from vms.db.models import Segment
from vms.hub import Hub
from vms.kernel.fsutil import fsync_dir
from vms.media.segment import Segment as Finished

CENTERS = [{"id": "district", "name": "District", "level": 1, "civil_code": "320585"}]
T0 = 1_790_000_000.0


def hub_in(d: Path) -> Hub:
    cfg = HubConfig.model_validate(
        {
            "storage": {"data_dir": str(d)},
            "centers": CENTERS,
            "archive": {"min_free_bytes": 0},
            "retention": {"emergency_free_bytes": 0, "emergency_target_free_bytes": 0},
        }
    )
    return Hub(cfg, clock=lambda: T0 + 40 * 86400)


def bench_clip(minutes: float, work: Path) -> None:
    src = work / "src.ts"
    t = time.perf_counter()
    encode_clip(ClipParams(1920, 1080, 25, 2.0, 4000, 2, 16.0), "normal", src)
    segs = split_segments(src, 4.0)
    print(f"encoded 16 s of 1080p25 4 Mbps in {time.perf_counter() - t:.1f} s: {len(segs)} segments")
    hub = hub_in(work / "clip")
    dev = "32058501001320000001"
    hub.registry.add_device(dev)
    n = round(minutes * 60 / 4)
    for i in range(n):
        data, dur = segs[i % len(segs)]
        hub.segments.ingest(dev, T0 + 4 * i, dur, data, hashlib.sha256(data).hexdigest(), "bench", T0)
    span = n * 4.0
    plan = plan_clip(hub.sessions, dev, T0, T0 + span)
    mb = plan.estimated_bytes / 1e6
    print(f"{n} segments, {span / 60:.1f} min, {mb:.0f} MB")
    listing = work / "list.txt"
    listing.write_text("".join(f"file '{hub.segments.root / p.path}'\n" for p in plan.pieces))
    ours, first, theirs = [], [], []
    for _ in range(3):
        out = work / "ours.mp4"
        t0 = time.perf_counter()
        seen: list[float] = []

        def note(_b: int, _f: float, seen: list[float] = seen) -> None:
            if not seen:
                seen.append(time.perf_counter())

        res = build_clip(plan, hub.segments.root, out, note)
        ours.append(time.perf_counter() - t0)
        first.append(seen[0] - t0)
        t0 = time.perf_counter()
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "concat",
                "-safe",
                "0",
                "-i",
                str(listing),
                "-c",
                "copy",
                "-movflags",
                "frag_keyframe+empty_moov+default_base_moof",
                str(work / "ffmpeg.mp4"),
            ],
            check=True,
        )
        theirs.append(time.perf_counter() - t0)
    o, f, th = statistics.median(ours), statistics.median(first), statistics.median(theirs)
    print(
        f"clip builder: first byte {f * 1000:.0f} ms, whole clip {o:.2f} s = {span / o:.0f}x real time "
        f"({mb / o:.0f} MB/s), {res.frames} frames, sha256 {res.sha256[:16]}..."
    )
    print(f"ffmpeg -f concat -c copy: {th:.2f} s = {span / th:.0f}x real time")
    print(f"ratio ffmpeg/ours: {th / o:.2f} (target >= 0.8); first byte target < 1 s; speed target >= 500x")
    hub.engine.dispose()


def bench_store(n: int, work: Path) -> None:
    cfg = HubConfig.model_validate(
        {"storage": {"data_dir": str(work / "store")}, "centers": CENTERS, "archive": {"min_free_bytes": 0},
         "analysis": {"enabled": False}}
    )
    hub = Hub(cfg, clock=lambda: T0 + 40 * 86400)
    dev = "32058501001320000001"
    hub.registry.add_device(dev)
    waiting = hub.segments.root / ".gb28181"
    waiting.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(2 * n + 20):  # ours (20 to warm up), then the floor's
        data = os.urandom(256 * 1024)
        path = waiting / f"{i}.ts"
        path.write_bytes(data)
        files.append((path, hashlib.sha256(data).hexdigest(), len(data)))
    os.sync()

    def ours(i: int) -> None:
        path, sha, size = files[i]
        out = hub.ingest.store_own("bench", Finished(path, dev, T0 + 2 * i, 2.0, sha, size))
        assert out.result.value == "stored", out

    raw = hub.engine.raw_connection()  # a pooled connection: synchronous=FULL like every commit of the hub
    cur = raw.cursor()
    cur.execute("CREATE TABLE bench_floor (id INTEGER PRIMARY KEY, device_id TEXT, start_at REAL, path TEXT, "
                "sha256 TEXT)")
    raw.commit()
    floor_dir = hub.segments.root / "floor"
    floor_dir.mkdir()

    def floor(i: int) -> None:
        path, sha, _size = files[i]
        final = floor_dir / path.name
        os.replace(path, final)
        fsync_dir(floor_dir)
        cur.execute("INSERT INTO bench_floor (device_id, start_at, path, sha256) VALUES (?, ?, ?, ?)",
                    (dev, T0 + 2 * i, final.name, sha))
        raw.commit()

    for i in range(20):
        ours(i)
    figures = []
    for fn, lo in ((ours, 20), (floor, n + 20)):
        c0, w0 = time.thread_time(), time.perf_counter()
        for i in range(lo, lo + n):
            fn(i)
        figures.append(((time.thread_time() - c0) / n, (time.perf_counter() - w0) / n))
    raw.close()
    (oc, ow), (fc, fw) = figures
    print(f"store a segment (SegmentIngest.store_own), {n} segments: {oc * 1000:.3f} ms CPU, {ow * 1000:.2f} ms wall")
    print(f"floor (rename, directory fsync, one durable SQLite insert): {fc * 1000:.3f} ms CPU, "
          f"{fw * 1000:.2f} ms wall")
    print(f"ratio store/floor, CPU: {oc / fc:.2f}")
    hub.engine.dispose()


def bench_retention(cameras: int, days: int, seg_s: float, work: Path) -> None:
    hub = hub_in(work / "ret")
    devs = [f"3205850100132{i:07d}" for i in range(1, cameras + 1)]
    for d in devs:
        hub.registry.add_device(d)
    now = hub.clock()
    first = now - days * 86400 - 3600  # one hour past the 30 days
    per_dev = int((now - first) / seg_s)
    t = time.perf_counter()
    raw = hub.engine.raw_connection()
    try:
        cur = raw.cursor()
        cols = "device_id, start_at, end_at, bytes, path, sha256, received_at, agent_id, deleting"
        sql = f"INSERT INTO {Segment.__tablename__} ({cols}) VALUES (?,?,?,?,?,?,?,?,0)"
        for d in devs:
            rows = [
                (d, first + k * seg_s, first + (k + 1) * seg_s, 2_000_000, f"{d}/x/{k}.ts", "0" * 64, now, "bench")
                for k in range(per_dev)
            ]
            cur.executemany(sql, rows)
        raw.commit()
    finally:
        raw.close()
    total = per_dev * cameras
    print(
        f"index: {cameras} cameras x {days} days + 1 h of {seg_s:g} s segments = {total:,} rows "
        f"(written in {time.perf_counter() - t:.0f} s)"
    )
    t = time.perf_counter()
    rep = hub.archive.retention.run(now)
    el = time.perf_counter() - t
    print(f"retention pass: {el:.2f} s, deleted {rep.deleted_segments:,} rows (target < 10 s)")
    t = time.perf_counter()
    rep2 = hub.archive.retention.run(now)
    print(f"retention pass with nothing to delete: {time.perf_counter() - t:.2f} s ({rep2.deleted_segments} rows)")
    t = time.perf_counter()
    hub.archive.refresh(now)
    print(f"accounting snapshot (metrics): {time.perf_counter() - t:.2f} s")
    hub.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--cameras", type=int, default=500)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--segment-seconds", type=float, default=60)
    ap.add_argument("--store-segments", type=int, default=400)
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--skip-clip", action="store_true")
    ap.add_argument("--skip-retention", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        if not a.skip_store:
            bench_store(a.store_segments, Path(tmp))
        if not a.skip_clip:
            bench_clip(a.minutes, Path(tmp))
        if not a.skip_retention:
            bench_retention(a.cameras, a.days, a.segment_seconds, Path(tmp))


if __name__ == "__main__":
    main()
