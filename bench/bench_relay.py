"""Relay CPU and memory per camera: the edge agent against `ffmpeg -c copy -f segment`, same run.

    .venv/bin/python bench/bench_relay.py [--cameras 8,16,32] [--profiles baseline,high]
                                          [--window-s 20] [--windows 3] [--bare]
                                          [--before-src DIR] [--agent-src DIR]

For each profile and camera count N, a camera simulator (GStreamer RTSP server, one mount per
camera looping a pre-encoded 1080p25 4 Mbps H.264 clip) serves N mounts. At the same time, on the
same mounts:

- the agent: one worker process running the agent's own ingest threads, segmenters and spool
  (`edge_agent.ingest.CameraIngest`, `vms.media.segmenter.Segmenter`, `edge_agent.spool.Spool`),
  cutting 4 s MPEG-TS segments with temp name, fsync, sha256 and rename. There is **no uplink**
  (the segments are acked once the bench has deleted them, see below);
- with `--before-src DIR`, a second agent worker running the `edge_agent` package found in DIR (a
  copy of the code before a change), so before and after are measured in the same run;
- N `ffmpeg -rtsp_transport tcp -i URL -c copy -f segment -segment_time 4` processes (Debian's
  ffmpeg; it aborts on B-frame streams, which the report then says);
- with `--bare`, a bare PyAV relay (demux, cut on keyframes, mux; nothing else) as a floor.

Every contender writes each segment to a new file, and the bench process itself deletes finished
segments of all of them 2 s after they were last written, so deleting is charged to none: the
agent deletes only after an upload (and uploads are not measured), and an ffmpeg recorder leaves
deleting to some other process. (Before, ffmpeg wrapped around 4 file names, so it truncated files
whose pages had never been written back, while the agent paid for unlinking synced ones.)

CPU is process CPU time (utime+stime from /proc) over measurement windows after a warm-up; the
figure per camera is the median over windows, in % of one core. The RTSP server's own CPU is
reported separately and not included. Memory per camera is the agent worker's PSS growth from
before its cameras start to the end, divided by N; for ffmpeg, the mean PSS per process. The
spread of the agent/ffmpeg ratio over the windows is printed too: the machine may be shared.

What is counted where: the agent pays for its durability (fdatasync of each segment and of the
spool directory, in its own process); ffmpeg writes without syncing, and any writeback of its
files is done by kernel threads, which no contender is charged for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if os.environ.get("VMS_BENCH_AGENT_SRC"):  # another checkout's edge_agent, for before/after figures
    sys.path.insert(0, os.environ["VMS_BENCH_AGENT_SRC"])

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEGMENT_S = 4.0
RTSP_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000", "allowed_media_types": "video"}


# --------------------------------------------------------------------------- /proc helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pss_mb(pid: int) -> float:
    """Proportional set size in MB (shared pages split among the processes sharing them)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- workers (child side)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _wait_for_go() -> None:
    """Block until the parent writes a line (it measures our base memory first)."""
    sys.stdin.readline()


def _time_guarantees(module: Any, names: tuple[str, ...]) -> list[float]:
    """Wrap ``module``'s durability and checksum calls to add up the CPU (thread time) they take."""
    total = [0.0]
    lock = threading.Lock()

    def timed(fn: Any) -> Any:
        def call(*args: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args)
            finally:
                with lock:
                    total[0] += time.thread_time() - t0
        return call

    for name in names:
        setattr(module, name, timed(getattr(module, name)))
    return total


def agent_worker(urls: list[str], work: Path) -> None:
    """The agent's ingest path for every URL, with a local ack thread instead of an uplink."""
    import edge_agent
    import vms.media.segmenter as segmenter_module
    from edge_agent.ingest import CameraIngest
    from edge_agent.spool import Spool
    from vms.media.segmenter import Segmenter

    print(f"edge_agent from {list(edge_agent.__path__)}", file=sys.stderr, flush=True)
    # What plain ffmpeg does not do: the segment's sha256 and fdatasync, and the directory fsync.
    guarantees = (_time_guarantees(segmenter_module, ("sync_and_hash", "fsync_dir"))
                  if hasattr(segmenter_module, "sync_and_hash") else None)
    spool = Spool(work / "spool", quota_bytes=50 * 10**9, live_window_s=3 * SEGMENT_S)
    kw = {}
    if os.environ.get("VMS_BENCH_READ_BATCH_S"):  # --read-batch-s, for this worker only
        kw["read_batch_s"] = float(os.environ["VMS_BENCH_READ_BATCH_S"])
    ingests = [CameraIngest(f"3205850100132{i:07d}", url, Segmenter(f"3205850100132{i:07d}", spool, SEGMENT_S),
                            **kw) for i, url in enumerate(urls)]
    _emit({"state": "base"})
    _wait_for_go()
    for ing in ingests:
        ing.start()
        time.sleep(0.02)  # a freshly started server dislikes many connects in the same instant
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    acked = 0
    while not stop.wait(1.0):
        for seg in spool.segments():
            if not seg.path.exists():  # deleted by the bench, standing in for an upload
                spool.ack(seg)
                acked += 1
        snaps = [ing.snapshot() for ing in ingests]
        _emit({"packets": sum(s.packets for s in snaps), "connected": sum(s.connected for s in snaps),
               "segments": acked, "dropped": sum(ing.segmenter.dropped_packets for ing in ingests),
               "write_errors": spool.write_errors, "guarantees_cpu_s": guarantees[0] if guarantees else None})
    for ing in ingests:
        ing.stop()


def bare_worker(urls: list[str], work: Path) -> None:
    """Floor: PyAV demux and stream copy into keyframe-cut MPEG-TS files; no checks, no fsync."""
    import av

    packets = [0] * len(urls)
    stop = threading.Event()

    def relay(i: int, url: str) -> None:
        out_dir = work / f"bare{i}"
        out_dir.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            try:
                with av.open(url, options=RTSP_OPTIONS) as c:
                    vs = c.streams.video[0]
                    tb = float(vs.time_base or 1 / 90000)
                    out: Any = None
                    ost: Any = None
                    start = 0
                    n = 0
                    for pkt in c.demux(vs):
                        if stop.is_set():
                            break
                        if pkt.size == 0 or pkt.pts is None:
                            continue
                        if pkt.is_keyframe and (out is None or (pkt.pts - start) * tb >= SEGMENT_S):
                            if out is not None:
                                out.close()
                            out = av.open(str(out_dir / f"{n:06d}.ts"), "w", format="mpegts")
                            ost = out.add_stream_from_template(vs)
                            start, n = pkt.pts, n + 1
                        if out is None:
                            continue
                        pkt.stream = ost
                        out.mux(pkt)
                        packets[i] += 1
                    if out is not None:
                        out.close()
            except av.FFmpegError:
                time.sleep(0.5)

    _emit({"state": "base"})
    _wait_for_go()
    for i, url in enumerate(urls):
        threading.Thread(target=relay, args=(i, url), daemon=True).start()
        time.sleep(0.02)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1.0):
        _emit({"packets": sum(packets)})


# --------------------------------------------------------------------------- parent side


class Worker:
    """A worker child process speaking JSON lines; keeps the latest status."""

    def __init__(self, kind: str, urls: list[str], work: Path, label: str = "", agent_src: str = "",
                 env: dict[str, str] | None = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "urls.json").write_text(json.dumps(urls))
        self.kind = label or kind  # the name in the report
        env = dict(os.environ, **(env or {}))
        if agent_src:
            env["VMS_BENCH_AGENT_SRC"] = agent_src
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--work", str(work)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=(work / "worker.log").open("w"), env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} worker died: {(work / 'worker.log').read_text()[-2000:]}")
        self.base_pss = pss_mb(self.proc.pid)
        self.base_rss = rss_mb(self.proc.pid)
        self.status: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.status = json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Window:
    cpu: dict[str, float] = field(default_factory=dict)  # contender -> CPU seconds in the window
    packets: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    guarantees: float | None = None  # CPU seconds of the agent's sha256 + fdatasync + dir fsync


def ffmpeg_procs(urls: list[str], work: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i, url in enumerate(urls):
        d = work / f"ff{i}"
        d.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", url, "-map", "0:v",
             "-c", "copy", "-f", "segment", "-segment_time", str(int(SEGMENT_S)),
             "-reset_timestamps", "1", str(d / "%06d.ts")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(d / "ffmpeg.log").open("wb")))
        time.sleep(0.02)
    return procs


def delete_finished(root: Path, stop: threading.Event, age_s: float = 2.0) -> None:
    """Delete every contender's segments once written (not the agent's temp files): see the top."""
    while not stop.wait(0.5):
        old = time.time() - age_s
        for p in root.rglob("*.ts"):
            with contextlib.suppress(OSError):
                if ".tmp" not in p.parts and p.stat().st_mtime < old:
                    p.unlink()


def run_point(profile: str, n: int, args: argparse.Namespace, clip_params: Any) -> dict[str, Any]:
    """One (profile, N) point: start the server and all contenders, measure windows, stop all."""
    from camsim.net import free_ports
    from camsim.sim import Simulator, device_ids

    work = Path(args.work_dir) / f"{profile}-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rtsp_port, control_port = free_ports(2)
    sim = Simulator(device_ids(n), Path(args.work_dir), rtsp_port=rtsp_port, control_port=control_port,
                    onvif_base_port=None, params=clip_params, mix_profiles=False, variants=["normal"],
                    log_path=work / "rtsp_server.log")
    workers: list[Worker] = []
    ffs: list[subprocess.Popen[bytes]] = []
    cleaning = threading.Event()
    threading.Thread(target=delete_finished, args=(work, cleaning), daemon=True).start()
    try:
        sim.start()
        assert sim.proc is not None
        urls = [sim.rtsp_url(d) for d in sim.cameras]
        # Prime every mount so the clients below do not race the pipelines' first start.
        import av

        for u in urls:
            for attempt in range(3):
                try:
                    with av.open(u, options=RTSP_OPTIONS) as c:
                        next(c.demux(video=0))
                    break
                except (av.FFmpegError, StopIteration):
                    time.sleep(0.5 * (attempt + 1))
        batch = {} if args.read_batch_s is None else {"VMS_BENCH_READ_BATCH_S": str(args.read_batch_s)}
        workers.append(Worker("agent", urls, work / "agent", env=batch))
        if args.before_src:
            workers.append(Worker("agent", urls, work / "before", label="before",
                                  agent_src=str(Path(args.before_src).resolve())))
        if args.bare:
            workers.append(Worker("bare", urls, work / "bare"))
        for w in workers:
            w.go()
        ffs = ffmpeg_procs(urls, work / "ffmpeg")
        time.sleep(args.warmup_s)
        # A window must not hold connection set-up or the catch-up burst after it: wait for all.
        relays = [w for w in workers if "connected" in w.status]
        waited = 0
        while waited < 60 and any(w.status.get("connected", 0) < n for w in relays):
            time.sleep(1)
            waited += 1
        for w in relays:
            if w.status.get("connected", 0) < n:
                print(f"  warning: {w.kind} has {w.status.get('connected')} of {n} cameras connected", flush=True)
        if waited:
            time.sleep(5)
        ff_alive = [p for p in ffs if p.poll() is None]
        windows: list[Window] = []
        for _ in range(args.windows):
            pids = {w.kind: w.proc.pid for w in workers}
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            before["ffmpeg"] = sum(cpu_seconds(p.pid) for p in ff_alive)
            before["server"] = cpu_seconds(sim.proc.pid)
            pk0 = {w.kind: int(w.status.get("packets", 0)) for w in workers}
            g0 = workers[0].status.get("guarantees_cpu_s")
            t0 = time.monotonic()
            time.sleep(args.window_s)
            win = Window(wall=time.monotonic() - t0)
            for k, p in pids.items():
                win.cpu[k] = cpu_seconds(p) - before[k]
            ff_alive = [p for p in ff_alive if p.poll() is None]
            win.cpu["ffmpeg"] = sum(cpu_seconds(p.pid) for p in ff_alive) - before["ffmpeg"]
            win.cpu["server"] = cpu_seconds(sim.proc.pid) - before["server"]
            win.packets = {w.kind: int(w.status.get("packets", 0)) - pk0[w.kind] for w in workers}
            g1 = workers[0].status.get("guarantees_cpu_s")
            win.guarantees = None if g0 is None or g1 is None else g1 - g0
            windows.append(win)
        ff_alive = [p for p in ffs if p.poll() is None]
        mem = {w.kind: (pss_mb(w.proc.pid) - w.base_pss, rss_mb(w.proc.pid) - w.base_rss) for w in workers}
        ff_pss = [pss_mb(p.pid) for p in ff_alive]
        ff_failed = len(ffs) - len(ff_alive)
        ff_err = ""
        if ff_failed:
            dead = next(i for i, p in enumerate(ffs) if p.poll() is not None)
            log = (work / "ffmpeg" / f"ff{dead}" / "ffmpeg.log").read_text(errors="replace").strip()
            ff_err = log.splitlines()[-1] if log else f"exit {ffs[dead].returncode}"
        return {"profile": profile, "n": n, "windows": windows, "mem": mem, "ff_pss": ff_pss,
                "ff_alive": len(ff_alive), "ff_failed": ff_failed, "ff_err": ff_err,
                "agent_status": dict(workers[0].status)}
    finally:
        for ff in ffs:
            if ff.poll() is None:
                ff.terminate()
        for ff in ffs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                ff.wait(10)
        for w in workers:
            w.stop()
        sim.stop()
        cleaning.set()
        shutil.rmtree(work, ignore_errors=True)


def pct_per_cam(cpu_s: float, wall: float, n: int) -> float:
    return 100.0 * cpu_s / wall / max(n, 1)


def report(res: dict[str, Any]) -> None:
    n, wins = res["n"], res["windows"]
    kinds = [k for k in wins[0].cpu if k not in ("ffmpeg", "server")]
    med = {k: statistics.median(pct_per_cam(w.cpu[k], w.wall, n) for w in wins) for k in [*kinds, "server"]}
    ff_n = res["ff_alive"]
    line = [f"{res['profile']:8s} N={n:3d}"]
    for k in kinds:
        exp = 25 * n * statistics.median(w.wall for w in wins)
        got = statistics.median(w.packets[k] for w in wins)
        pss, rss = res["mem"][k]
        line.append(f"{k} {med[k]:.3f}%/cam ({got / exp:.0%} of packets) mem {pss / n:.1f} MB PSS "
                    f"({rss / n:.1f} MB RSS)/cam")
    if ff_n:
        ff = statistics.median(pct_per_cam(w.cpu["ffmpeg"], w.wall, ff_n) for w in wins)
        line.append(f"ffmpeg {ff:.3f}%/cam mem {statistics.mean(res['ff_pss']):.1f} MB PSS/proc")
        for k in kinds:
            per_win = [pct_per_cam(w.cpu[k], w.wall, n) / pct_per_cam(w.cpu["ffmpeg"], w.wall, ff_n) for w in wins]
            line.append(f"ratio {k}/ffmpeg {med[k] / ff:.2f} (windows {min(per_win):.2f}-{max(per_win):.2f})")
    else:
        line.append(f"ffmpeg: all {res['ff_failed']} processes failed ({res['ff_err'][:120]})")
    if ff_n and all(w.guarantees is not None for w in wins):
        g = statistics.median(pct_per_cam(w.guarantees or 0.0, w.wall, n) for w in wins)
        line.append(f"of the agent's CPU, sha256 + fdatasync + dir fsync (which ffmpeg does not do): {g:.3f}%/cam; "
                    f"without them agent/ffmpeg would be {(med['agent'] - g) / ff:.2f}")
    if "before" in med:
        per_win = [w.cpu["agent"] / w.cpu["before"] for w in wins]
        line.append(f"ratio agent/before {med['agent'] / med['before']:.2f} "
                    f"(windows {min(per_win):.2f}-{max(per_win):.2f})")
    line.append(f"streams/core (agent) ≈ {100 / med['agent']:.0f}")
    line.append(f"server {med['server']:.3f}%/cam (not included)")
    if res["ff_failed"] and ff_n:
        line.append(f"{res['ff_failed']} ffmpeg failed: {res['ff_err'][:80]}")
    print("  " + "\n    ".join(line), flush=True)
    for k in [*kinds, "ffmpeg"]:
        per = n if k != "ffmpeg" else max(ff_n, 1)
        print(f"    windows {k} %/cam: " + ", ".join(f"{pct_per_cam(w.cpu[k], w.wall, per):.3f}" for w in wins),
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", default="8,16,32", help="comma-separated camera counts")
    ap.add_argument("--profiles", default="baseline,high", help="baseline (no B-frames), high (B-frames)")
    ap.add_argument("--window-s", type=float, default=20.0)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--bare", action="store_true", help="also run a bare PyAV relay as a floor")
    ap.add_argument("--work-dir", default="/tmp/vms-bench", help="clips are cached here")
    ap.add_argument("--clip-s", type=float, default=10.0, help="length of the looped clip")
    ap.add_argument("--agent-src", help="directory holding another edge_agent package to measure instead "
                    "(e.g. an older checkout), for before/after figures")
    ap.add_argument("--before-src", help="directory holding another edge_agent package (e.g. a copy from before a "
                    "change) to measure alongside the current one, in the same run")
    ap.add_argument("--read-batch-s", type=float, help="the agent's read_batch_s (default: the agent's default; "
                    "0 reads every packet as it arrives)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        work = Path(args.work)
        urls = json.loads((work / "urls.json").read_text())
        {"agent": agent_worker, "bare": bare_worker}[args.worker](urls, work)
        return

    from camsim.clips import ClipParams, ensure_clip

    if args.agent_src:
        os.environ["VMS_BENCH_AGENT_SRC"] = str(Path(args.agent_src).resolve())
        print(f"agent code from {os.environ['VMS_BENCH_AGENT_SRC']}", flush=True)

    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg CLI not found")
    counts = [int(x) for x in args.cameras.split(",")]
    print(f"relay bench: 1080p25 4 Mbps H.264 clips, {SEGMENT_S:.0f} s segments, windows "
          f"{args.windows}x{args.window_s:.0f} s after {args.warmup_s:.0f} s warm-up; agent without uplink "
          f"(segments deleted by the bench); CPU in % of one core per camera, median of windows", flush=True)
    for profile in args.profiles.split(","):
        params = ClipParams(width=1920, height=1080, fps=25, gop_s=2.0, bitrate_kbps=4000,
                            bframes=2 if profile == "high" else 0, duration_s=args.clip_s)
        t0 = time.monotonic()
        ensure_clip(params, "normal", Path(args.work_dir) / "clips")
        if time.monotonic() - t0 > 1:
            print(f"  made {profile} clip in {time.monotonic() - t0:.0f} s", flush=True)
        for n in counts:
            report(run_point(profile, n, args, params))


if __name__ == "__main__":
    main()
