"""Hub outage with 16 cameras: how long the backlog takes to drain, and live latency meanwhile.

    .venv/bin/python bench/bench_backlog.py [--cameras 16] [--outage-s 600] [--baseline-s 60]

A camera simulator serves the cameras (1080p25 4 Mbps H.264 looped clips, half of them High profile
with B-frames), a real agent process (`edge-agent run --config`) relays them in 4 s segments to a
real hub process (`vms serve`). After a baseline period the hub is stopped for `--outage-s`
seconds and started again; the agent's spool sends live segments first and the backlog
oldest-first. Printed: the backlog at restart, the drain time, and the latency of live segments
(segment end -> stored at the hub, from the hub's index) before the outage, during the drain and
after it, plus a check that the stored recording has no holes across the outage.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from camsim.clips import ClipParams  # noqa: E402
from camsim.net import free_ports  # noqa: E402
from camsim.sim import Simulator, device_ids  # noqa: E402
from tests.conftest import HubProcess, free_port, hub_config, write_config  # noqa: E402

PREFIX = "32058501001320"
SEGMENT_S = 4.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rows(db: Path, since: float = 0.0) -> list[tuple[str, float, float, float, int]]:
    """(device, start, end, received_at, bytes) of stored segments ending after `since`."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as c:
        return c.execute("SELECT device_id, start_at, end_at, received_at, bytes FROM segments "
                         "WHERE end_at > ? ORDER BY device_id, start_at", (since,)).fetchall()


def spool_backlog(spool: Path, before: float) -> tuple[int, int]:
    """Queued segments (count, bytes) in the agent's spool that ended before `before`."""
    n = size = 0
    for p in spool.glob("*.ts"):
        parts = p.name.split("_")
        try:
            end = (int(parts[1]) + int(parts[2])) / 1e6
            if end <= before:
                n += 1
                size += p.stat().st_size
        except (IndexError, ValueError, OSError):
            continue
    return n, size


def stats(values: list[float]) -> str:
    if not values:
        return "n=0"
    v = sorted(values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return f"n={len(v)} median {statistics.median(v):.2f} s, p95 {p95:.2f} s, max {v[-1]:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--outage-s", type=float, default=600.0)
    ap.add_argument("--baseline-s", type=float, default=60.0)
    ap.add_argument("--after-s", type=float, default=30.0, help="keep measuring this long after the drain")
    ap.add_argument("--kbps", type=int, default=4000)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--max-inflight", type=int, default=4, help="agent uploads in flight at once")
    ap.add_argument("--work-dir", default="/tmp/vms-bench", help="clips are cached here")
    ap.add_argument("--keep", action="store_true", help="keep the run's hub and agent directories")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="backlog-", dir=args.work_dir))
    params = ClipParams(width=args.width, height=args.height, fps=25, gop_s=2.0, bitrate_kbps=args.kbps,
                        bframes=2, duration_s=10.0)
    cams = device_ids(args.cameras, prefix=PREFIX)
    rtsp_port, control_port = free_ports(2)
    sim = Simulator(cams, args.work_dir, rtsp_port=rtsp_port, control_port=control_port, onvif_base_port=None,
                    params=params, variants=["normal"], log_path=work / "rtsp_server.log")
    hub_dir = work / "hub"
    hub_dir.mkdir()
    hub = HubProcess(write_config(hub_dir / "hub.yaml", hub_config(hub_dir / "data")), free_port())
    agent: subprocess.Popen[bytes] | None = None
    try:
        sim.start()
        token = hub.token("agent", PREFIX[:8], name="edge-bench")
        hub.start()
        cfg = {"hub_url": hub.url, "token": token, "data_dir": str(work / "agent"), "segment_seconds": SEGMENT_S,
               "id_prefix": PREFIX, "spool_quota_bytes": 100 * 10**9, "max_inflight": args.max_inflight,
               "cameras": [{"url": sim.rtsp_url(d), "device_id": d} for d in cams]}
        (work / "agent.yaml").write_text(yaml.safe_dump(cfg))
        with (work / "agent.log").open("ab") as log:
            agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config",
                                      str(work / "agent.yaml"), "--log-level", "WARNING"],
                                     stdout=log, stderr=log, cwd=ROOT)
        db = hub_dir / "data" / "vms.db"
        spool = work / "agent" / "spool"
        print(f"backlog bench: {args.cameras} cameras {args.width}x{args.height} {args.kbps} kbps "
              f"(half High profile with B-frames), {SEGMENT_S:.0f} s segments, agent max_inflight "
              f"{args.max_inflight}, outage {args.outage_s:.0f} s", flush=True)

        def all_uploading() -> bool:
            try:
                return len({r[0] for r in rows(db, time.time() - 10)}) == args.cameras
            except sqlite3.Error:
                return False

        deadline = time.monotonic() + 90
        while not all_uploading():
            if time.monotonic() > deadline:
                raise SystemExit(f"not all cameras reached the hub; see {work}/agent.log")
            time.sleep(1)
        base_from = time.time()
        time.sleep(args.baseline_s)
        base_to = time.time()
        time.sleep(2 * SEGMENT_S)  # the baseline's last segments land before the hub goes down

        hub.stop()
        down_at = time.time()
        print(f"hub stopped at +0 s; waiting {args.outage_s:.0f} s", flush=True)
        time.sleep(args.outage_s)
        backlog_n, backlog_bytes = spool_backlog(spool, time.time())
        hub.start()
        up_at = time.time()
        agent_cpu0, hub_cpu0 = cpu_seconds(agent.pid), cpu_seconds(hub.proc.pid if hub.proc else 0)
        print(f"hub back after {up_at - down_at:.0f} s; backlog in the spool: {backlog_n} segments, "
              f"{backlog_bytes / 1e6:.0f} MB", flush=True)
        last_report = time.monotonic()
        while True:
            left, left_bytes = spool_backlog(spool, up_at)
            if left == 0:
                break
            if time.monotonic() - last_report > 30:
                print(f"  +{time.time() - up_at:.0f} s: {left} backlog segments left "
                      f"({left_bytes / 1e6:.0f} MB)", flush=True)
                last_report = time.monotonic()
            if agent.poll() is not None:
                raise SystemExit(f"agent exited; see {work}/agent.log")
            time.sleep(0.5)
        drained_at = time.time()
        drain_s = drained_at - up_at
        agent_cpu = cpu_seconds(agent.pid) - agent_cpu0
        hub_cpu = cpu_seconds(hub.proc.pid if hub.proc else 0) - hub_cpu0
        time.sleep(args.after_s)
        end_at = time.time()
        time.sleep(2 * SEGMENT_S)  # let the last live segments land

        all_rows = rows(db, base_from - SEGMENT_S)

        def latencies(lo: float, hi: float) -> list[float]:
            return [r[3] - r[2] for r in all_rows if lo <= r[2] < hi]

        print(f"drain: {backlog_n} segments ({backlog_bytes / 1e6:.0f} MB) delivered in {drain_s:.1f} s "
              f"({backlog_n / max(drain_s, 1e-9):.1f} segments/s, {backlog_bytes / 1e6 / max(drain_s, 1e-9):.1f} MB/s "
              f"on top of live); {drain_s / max(args.outage_s, 1e-9):.2f} s of drain per second of outage")
        print(f"  CPU during the drain: agent {100 * agent_cpu / drain_s:.0f}% of a core, hub "
              f"{100 * hub_cpu / drain_s:.0f}%")
        print("live latency (segment end -> stored at the hub):")
        print(f"  before the outage: {stats(latencies(base_from, base_to))}")
        print(f"  during the drain:  {stats(latencies(up_at, drained_at))}")
        print(f"  after the drain:   {stats(latencies(drained_at, end_at))}")
        holes = []
        for dev, grp in itertools.groupby(all_rows, key=lambda r: r[0]):
            segs = [r for r in grp if r[2] <= end_at]
            holes += [(dev, a[2], b[1]) for a, b in itertools.pairwise(segs) if b[1] - a[2] > 1.0]
        covered = [r for r in all_rows if down_at <= r[2] <= up_at]
        print(f"recording across the outage: {len(covered)} segments stored that ended while the hub "
              f"was down; holes > 1 s: {len(holes)}" + (f" e.g. {holes[:3]}" if holes else ""))
        try:
            dropped = yaml.safe_load((spool / "state.json").read_text()).get("dropped_segments", 0)
        except OSError:
            dropped = 0
        print(f"spool drops: {dropped}")
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
        hub.stop()
        sim.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
