"""Fault injection against a real hub process (`vms serve`): is anything acknowledged ever lost?

    .venv/bin/python bench/bench_faults.py [--kills 50] [--parts kills,alerts,clips] [--seconds 20]
                                          [--downloads 20] [--clip-mbit M]

kills: agent uploads run without pause (a recent camera, kept, and a camera whose footage is 40 days
old, which retention passes delete every second in batches of two) while the hub is killed with
SIGKILL ``--kills`` times: half at a random moment of the uploads, half while a retention pass is
deleting (a row marked, or rows just gone). Every fifth restart is preceded by what a power cut
leaves behind, in turn: segment files whose index rows were lost, index rows whose files were lost,
and a torn last WAL frame (the file cut inside its last frame). The uploader acts like an agent: it
retries until the hub answers 201 (stored) or 200 (duplicate), and only then counts a segment as
acknowledged. At the end, with the hub stopped: every acknowledged segment of the kept camera must
have its row and a file whose SHA-256 matches (target: all, 0 lost); every acknowledged old one must
be stored intact or deleted whole by retention; no row may name a missing file.

alerts: a hub with two webhook receivers, one dead (``--dead``: a closed port, one answering 500, or
one that never answers) and one healthy; ten cameras go dark one after another and come back. Each
alert's delay from its opening at the hub to its arrival at the healthy receiver (target: every
alert, within seconds).

clips: heartbeat and segment-upload latency at the hub, first alone, then with the machine kept busy
by other work at the lowest CPU priority (what a busy machine alone does to the figures), then while
20 clip downloads (10-minute clips, 20 police users) run at the hub's ``archive.clip_send_mbit_s``
(``--clip-mbit``; 0 sends as fast as the machine can). The probe keeps one HTTP client open, as an
agent's uplink does. The downloads run in a process of their own and read like ``curl -o /dev/null``
(a user whose clip is refused asks again after 0.5 s) at the clip workers' niceness (in the field the
clients are other machines), so that the bench times the hub, not its own client; the machine's load
average is printed beside, since other work on a shared machine moves the figures. In each phase a
process outside the hub times the durable steps of an upload on the same disk (write, fsync, rename,
fsync the folder): an acknowledged upload cannot be faster than this machine's fsync.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import multiprocessing.queues
import os
import random
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_outbox import dead_receiver  # noqa: E402
from tests.conftest import HubProcess, WebhookSink, free_port, hub_config, write_config  # noqa: E402
from tests.rtsp_fixture import make_clip  # noqa: E402
from tests.test_alerts_e2e import Agent  # noqa: E402
from tests.test_archive_clip import split_segments, upload  # noqa: E402
from vms.archive.clip import WORKER_NICE  # noqa: E402
from vms.kernel.fsutil import fsync_dir  # noqa: E402

KEPT = "32058501001320000001"  # recent footage: every acknowledged segment must survive
OLD = "32058501001320000002"  # 40 days old: retention deletes it while the hub is being killed
DAY = 86400.0
QUIET = {"analysis": {"enabled": False}, "archive": {"min_free_bytes": 0},
         "retention": {"emergency_free_bytes": 0, "emergency_target_free_bytes": 0}}
REPAIRED = re.compile(r"archive repaired: (\d+) interrupted deletions finished, (\d+) rows without file removed, "
                      r"(\d+) files without row: (\d+) re-indexed, (\d+) quarantined")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def start(hub: HubProcess, patience_s: float = 180.0) -> None:
    """``hub.start()``, given more time on a loaded machine: its own wait gives up after 30 s while the
    process may still be starting (start-up repair, migrations, another job's load)."""
    try:
        hub.start()
        return
    except AssertionError:
        if hub.proc is None or hub.proc.poll() is not None:
            raise
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline and hub.proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{hub.url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"hub did not start within {30 + patience_s:.0f} s; log: {hub.log}")


def new_hub(work: Path, name: str, **sections: Any) -> HubProcess:
    d = work / name
    d.mkdir(parents=True)
    merged = {**QUIET, **sections}
    return HubProcess(write_config(d / "hub.yaml", hub_config(d / "data", **merged)), free_port())


# ------------------------------------------------------------------------------------------------ kills


@dataclass
class Uploader:
    """Uploads one camera's segments in order, as an agent does: a segment is retried until the hub
    says stored (201) or duplicate (200); only then is it acknowledged and the next one sent."""

    hub: HubProcess
    device: str
    segs: list[tuple[bytes, float]]
    first_start: float
    acked: dict[float, str] = field(default_factory=dict)  # start -> sha256
    refused: dict[int, int] = field(default_factory=dict)  # status -> count (neither stored nor retried)
    retries: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Uploader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        i, start = 0, self.first_start
        while not self.stop.is_set():
            data, dur = self.segs[i % len(self.segs)]
            try:
                r = upload(self.hub, self.device, start, data, dur)
            except httpx.HTTPError:  # the hub is down or was killed mid-request: retry the same segment
                self.retries += 1
                self.stop.wait(0.1)
                continue
            if r.status_code in (200, 201):
                self.acked[start] = hashlib.sha256(data).hexdigest()
            elif r.status_code in (429, 503) or r.status_code >= 500:
                self.retries += 1
                self.stop.wait(0.1)
                continue
            else:
                self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
            i += 1
            start = round(start + dur, 3)

    def join(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)


def db_path(hub: HubProcess) -> Path:
    return hub.config.parent / "data" / "vms.db"


def recordings(hub: HubProcess) -> Path:
    return hub.config.parent / "data" / "recordings"


def retention_busy(hub: HubProcess, before: int | None) -> tuple[bool, int | None]:
    """(a retention deletion is under way, OLD's row count): a row marked, or rows gone since ``before``."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_path(hub)}?mode=ro", uri=True, timeout=1)) as c:
            marked = c.execute("SELECT count(*) FROM segments WHERE deleting").fetchone()[0]
            n = c.execute("SELECT count(*) FROM segments WHERE device_id = ?", (OLD,)).fetchone()[0]
    except sqlite3.Error:
        return False, before
    return bool(marked) or (before is not None and n < before), n


def plant(hub: HubProcess, kind: str, rng: random.Random) -> str:
    """What a power cut leaves behind, planted while the hub is down; says what was planted."""
    db = db_path(hub)
    if kind == "torn WAL frame":
        wal = db.with_name(db.name + "-wal")
        size = wal.stat().st_size if wal.exists() else 0
        page = int.from_bytes(db.read_bytes()[16:18], "big") or 65536
        frame = 24 + page
        if size < 32 + frame:
            return "torn WAL frame: no frame to tear (WAL empty)"
        with open(wal, "r+b") as f:
            f.truncate(size - frame // 2)
            os.fsync(f.fileno())
        return f"torn WAL frame: WAL cut from {size} to {size - frame // 2} bytes"
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT id, path FROM segments WHERE device_id = ? AND NOT deleting", (KEPT,)).fetchall()
        if kind == "files without rows":
            picked = rng.sample(rows, min(3, len(rows)))
            c.executemany("DELETE FROM segments WHERE id = ?", [(i,) for i, _ in picked])
            c.commit()
            return f"files without rows: {len(picked)} index rows of stored segments deleted"
        cols = [r[1] for r in c.execute("PRAGMA table_info(segments)") if r[1] != "id"]
        # A row like a stored one, for a segment whose file never reached the disk (never acknowledged).
        swap = {"path": ":path", "sha256": ":sha", "start_at": "start_at + :shift", "agent_start": "NULL"}
        values = ", ".join(swap.get(col, col) for col in cols)
        made = 0
        for k, (i, path) in enumerate(rng.sample(rows, min(3, len(rows)))):
            c.execute(f"INSERT INTO segments ({', '.join(cols)}) SELECT {values} FROM segments WHERE id = :id",
                      {"path": path.replace(".ts", f"-lost{k}.ts"), "sha": os.urandom(32).hex(),
                       "shift": 0.0005 + k * 1e-5, "id": i})
            made += 1
        c.commit()
        return f"rows without files: {made} index rows naming files that are not there"


def check_archive(hub: HubProcess, ups: dict[str, Uploader]) -> dict[str, Any]:
    """With the hub stopped: acknowledged segments against index rows and files on disk."""
    root = recordings(hub)
    with contextlib.closing(sqlite3.connect(db_path(hub))) as c:
        rows = c.execute("SELECT device_id, agent_start, start_at, sha256, path, deleting FROM segments").fetchall()
    by_key = {(d, round(a if a is not None else s, 3), sha): p for d, a, s, sha, p, _ in rows}
    out: dict[str, Any] = {"rows": len(rows), "marked": sum(1 for r in rows if r[5])}
    out["rows_without_file"] = sum(1 for r in rows if not (root / r[4]).is_file())
    indexed = {r[4] for r in rows}
    out["files_without_row"] = sum(
        1 for p in root.rglob("*.ts") if not any(part.startswith(".") for part in p.relative_to(root).parts)
        and str(p.relative_to(root)) not in indexed)
    q = root / ".quarantine"
    out["quarantined"] = sum(1 for p in q.rglob("*.ts")) if q.is_dir() else 0
    for dev, up in ups.items():
        stored = intact = gone = broken = 0
        for start, sha in up.acked.items():
            path = by_key.get((dev, round(start, 3), sha))
            if path is None:
                gone += 1
                continue
            stored += 1
            f = root / path
            if f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() == sha:
                intact += 1
            else:
                broken += 1
        out[dev] = {"acked": len(up.acked), "stored": stored, "intact": intact, "absent": gone, "broken": broken}
    return out


def part_kills(work: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    hub = new_hub(work, "kills", retention={"interval_s": 1, "batch_size": 2, "emergency_free_bytes": 0,
                                            "emergency_target_free_bytes": 0})
    hub.token("agent", "320585", name="agent")
    segs = split_segments(make_clip(work / "kill-src.ts", seconds=8, gop=25), 1.0)
    start(hub)
    now = time.time()
    ups = {KEPT: Uploader(hub, KEPT, segs, float(int(now - 2 * DAY))).start(),
           OLD: Uploader(hub, OLD, segs, float(int(now - 40 * DAY))).start()}
    plants = ["files without rows", "rows without files", "torn WAL frame"]
    planted: list[str] = []
    repaired = [0, 0, 0, 0, 0]
    busy_kills = done = 0
    stopped = ""
    t_all = time.monotonic()
    print(f"kills: {kills} SIGKILLs of `vms serve`, uploads of 2 cameras running, retention every 1 s", flush=True)
    try:
        for k in range(kills):
            assert hub.log is not None
            log_from = hub.log.stat().st_size
            if k % 2 == 0:  # a random moment of the uploads
                time.sleep(rng.uniform(0.3, 2.5))
            else:  # while retention deletes
                deadline, n, hit = time.monotonic() + 6, None, False
                while time.monotonic() < deadline and not hit:
                    hit, n = retention_busy(hub, n)
                    if not hit:
                        time.sleep(0.005)
                busy_kills += hit
                time.sleep(rng.uniform(0, 0.02))
            hub.kill()
            if (k + 1) % 5 == 0:
                planted.append(plant(hub, plants[(k // 5) % len(plants)], rng))
            try:
                start(hub)
            except (AssertionError, RuntimeError) as exc:  # report what was measured so far
                stopped = str(exc).splitlines()[0]
                break
            done += 1
            text = hub.log.read_text(errors="replace")[log_from:]
            for m in REPAIRED.finditer(text):
                repaired = [a + int(b) for a, b in zip(repaired, m.groups(), strict=True)]
            if (k + 1) % 10 == 0:
                print(f"  {k + 1} kills, {len(ups[KEPT].acked) + len(ups[OLD].acked)} segments acknowledged",
                      flush=True)
    finally:
        for up in ups.values():
            up.join()
        hub.stop()
    took = time.monotonic() - t_all
    res = check_archive(hub, ups)
    if stopped:
        print(f"  STOPPED after {done} kills: {stopped}")
    print(f"  {done} kills in {took:.0f} s ({done - done // 2} at random upload moments, {done // 2} aimed at "
          f"retention passes: {busy_kills} caught one deleting); upload retries {sum(u.retries for u in ups.values())}")
    for p in planted:
        print(f"  planted before a restart: {p}")
    print(f"  start-up repairs: {repaired[0]} interrupted deletions finished, {repaired[1]} rows without file "
          f"removed, {repaired[2]} files without row ({repaired[3]} re-indexed, {repaired[4]} quarantined)")
    kept, old = res[KEPT], res[OLD]
    print(f"  kept camera: acknowledged {kept['acked']}, stored {kept['stored']}, intact {kept['intact']}, "
          f"lost {kept['absent'] + kept['broken']}   (target: equal, 0 lost)")
    print(f"  old camera:  acknowledged {old['acked']}, deleted whole by retention {old['absent']}, stored intact "
          f"{old['intact']}, damaged {old['broken']}")
    print(f"  index after restart: {res['rows']} rows, {res['rows_without_file']} naming a missing file, "
          f"{res['files_without_row']} files without a row, {res['marked']} left marked; "
          f"{res['quarantined']} files quarantined")
    refused = {d: u.refused for d, u in ups.items() if u.refused}
    if refused:
        print(f"  refused uploads (status: count): {refused}")


# ------------------------------------------------------------------------------------------------ alerts


def part_alerts(work: Path, dead: str) -> None:
    sink = WebhookSink().start()
    dead_url, dead_obj = dead_receiver(dead)
    hub = new_hub(work, "alerts", alerts={
        "receivers": [{"name": "dead", "kind": "webhook", "url": dead_url, "timeout_s": 5},
                      {"name": "crew", "kind": "webhook", "url": sink.url}],
        "retry_initial_s": 1, "retry_max_s": 30, "receiver_down_after_s": 5})
    hub.token("duty")
    token = hub.token("agent", "32058501", name="edge-1")
    start(hub)
    arrived: dict[tuple[str, int], float] = {}
    stop = threading.Event()

    def stamp() -> None:  # arrival times, to the poll interval
        seen = 0
        while not stop.is_set():
            for body in sink.received[seen:]:
                a = body["alerts"][0]
                arrived.setdefault((a["status"], int(a["generatorURL"].rsplit("/", 1)[1])), time.time())
                seen += 1
            time.sleep(0.01)

    threading.Thread(target=stamp, daemon=True).start()
    cams = [f"3205850100132{n:07d}" for n in range(1, 13)]

    def alerts() -> list[dict[str, Any]]:
        r = httpx.get(f"{hub.url}/api/v1/alerts", headers={"Authorization": f"Bearer {hub.tokens['duty']}"},
                      params={"limit": 5000}, timeout=10)
        return list(r.json()["alerts"])

    try:
        with Agent(hub, token, cams) as agent:
            time.sleep(8)  # all online
            for d in cams[:10]:
                agent.dark[d] = time.time()
                time.sleep(1.0)
            time.sleep(10)
            for d in cams[:10]:
                agent.dark.pop(d, None)
                time.sleep(0.5)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = alerts()
                want = {("firing", a["id"]) for a in rows} | {("resolved", a["id"]) for a in rows if a["resolved_at"]}
                if rows and want <= arrived.keys() and all(a["resolved_at"] for a in rows
                                                          if a["kind"] == "device_offline"):
                    break
                time.sleep(0.5)
            rows = alerts()
    finally:
        stop.set()
        hub.stop()
        sink.stop()
        if dead_obj is not None:
            dead_obj.stop() if hasattr(dead_obj, "stop") else dead_obj.close()
    lat = []
    missing = []
    for a in rows:
        opened = datetime.fromisoformat(a["opened_at"]).timestamp()
        if ("firing", a["id"]) in arrived:
            lat.append(arrived[("firing", a["id"])] - opened)
        else:
            missing.append(f"{a['kind']} #{a['id']}")
    resolved = [a for a in rows if a["resolved_at"]]
    told_resolved = sum(1 for a in resolved if ("resolved", a["id"]) in arrived)
    kinds: dict[str, int] = {}
    for a in rows:
        kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
    print(f"alerts: one dead receiver ({dead}) and one healthy; 10 cameras dark one a second, then back")
    print(f"  alerts opened at the hub: {len(rows)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
    print(f"  healthy receiver got {len(lat)} of {len(rows)} (firing), {told_resolved} of {len(resolved)} "
          f"resolutions; missing: {', '.join(missing) or 'none'}")
    if lat:
        print(f"  delay from opening to arrival: median {statistics.median(lat):.2f} s, "
              f"p95 {pct(lat, 0.95):.2f} s, max {max(lat):.2f} s   (target: every alert within seconds)")


# ------------------------------------------------------------------------------------------------ clips


def download_users(port: int, path: str, params: dict[str, str], tokens: list[str], stop: Any,
                   results: Any) -> None:
    """One thread per police user, each pulling the clip again and again (a pause after a refusal),
    until ``stop``; puts (requests by status, bytes received) on ``results``. Runs in its own process.

    A plain socket read into one buffer, as ``curl -o /dev/null`` would: the client's own CPU stays
    small, so on a two-core machine it takes little from the hub it loads. A status of 0 is a 200
    whose chunked body did not end (cut short), -1 a connection error."""
    # In the field the clients are other machines: here they share two cores with the hub, so they run
    # at the clip workers' niceness and take the CPU the hub leaves, not the CPU it needs.
    os.nice(WORKER_NICE)
    status: dict[int, int] = {}
    got = [0]
    lock = threading.Lock()

    def pull(i: int) -> None:
        query = urllib.parse.urlencode({**params, "case": f"B-{i}"})
        request = (f"GET {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {tokens[i]}"
                   "\r\nConnection: close\r\n\r\n").encode()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while not stop.is_set():
            code, size, tail = -1, 0, b""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                    sock.sendall(request)
                    while n := sock.recv_into(view):
                        if size == 0:
                            code = int(bytes(view[9:12]))
                        size += n
                        tail = (tail + bytes(view[max(0, n - 5):n]))[-5:]
            except (OSError, ValueError):
                code = -1
            if code == 200 and tail != b"0\r\n\r\n":
                code = 0
            with lock:
                status[code] = status.get(code, 0) + 1
                got[0] += size
            if code != 200:
                stop.wait(0.5)

    threads = [threading.Thread(target=pull, args=(i,), daemon=True) for i in range(len(tokens))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(150)
    results.put((status, got[0]))


def spin(stop: Any) -> None:
    """A busy loop at the lowest CPU priority, until ``stop``: the machine kept busy without taking
    from the hub, the reference for what a busy machine alone does to the figures."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while not stop.is_set():
        sum(range(10_000))


def durable_steps(folder: Path, size: int, stop: Any, results: Any) -> None:
    """An upload's durable steps without the hub (write ``size`` bytes, fsync, rename, fsync the folder),
    10 times a second until ``stop``, in a process of its own; puts the step times on ``results``.

    The machine's own fsync latency in the same phase: what the hub's ``file`` step cannot be below."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    took: list[float] = []
    k = 0
    while not stop.is_set():
        a = time.perf_counter()
        part, final = folder / f"{k}.part", folder / f"{k}.ts"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, final)
        fsync_dir(folder)
        took.append(time.perf_counter() - a)
        final.unlink()
        k += 1
        stop.wait(0.1)
    results.put(took)


def store_steps(hub: HubProcess) -> dict[str, tuple[float, float, float]]:
    """The hub's own ``vms_segment_store_seconds`` per step: (count, sum, count within 10 ms)."""
    r = httpx.get(f"{hub.url}/metrics", headers={"Authorization": f"Bearer {hub.tokens['maintenance']}"}, timeout=10)
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(r.text):
        if fam.name != "vms_segment_store_seconds":
            continue
        for smp in fam.samples:
            step = out.setdefault(smp.labels["step"], [0.0, 0.0, 0.0])
            if smp.name.endswith("_count"):
                step[0] = smp.value
            elif smp.name.endswith("_sum"):
                step[1] = smp.value
            elif smp.name.endswith("_bucket") and float(smp.labels["le"]) == 0.01:
                step[2] = smp.value
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def steps_between(a: dict[str, tuple[float, float, float]], b: dict[str, tuple[float, float, float]]) -> str:
    """Mean time of each store step between two readings, and the share of steps over 10 ms."""
    parts = []
    for step in sorted(b):
        n = b[step][0] - a.get(step, (0.0, 0.0, 0.0))[0]
        if n <= 0:
            continue
        mean = (b[step][1] - a.get(step, (0.0, 0.0, 0.0))[1]) / n
        slow = 1 - (b[step][2] - a.get(step, (0.0, 0.0, 0.0))[2]) / n
        parts.append(f"{step} {mean * 1000:5.1f} ms ({slow:4.0%} > 10 ms)")
    return ", ".join(parts)


def part_clips(work: Path, seconds: float, downloads: int, clip_mbit: float | None) -> None:
    archive = {**QUIET["archive"], **({} if clip_mbit is None else {"clip_send_mbit_s": clip_mbit})}
    hub = new_hub(work, "clips", archive=archive)
    hub.token("agent", "320585", name="agent")
    hub.token("maintenance")
    for i in range(downloads):
        hub.token("police", name=f"police-{i}")
    start(hub)
    segs = split_segments(make_clip(work / "clip-src.ts", seconds=20, gop=25, bitrate=1_000_000), 2.0)
    t0 = float(int(time.time() - 3 * 3600))
    t, n = t0, 0
    while t < t0 + 600:  # ten minutes of footage
        data, dur = segs[n % len(segs)]
        assert upload(hub, KEPT, t, data, dur).status_code == 201
        t, n = round(t + dur, 3), n + 1
    clip_end = t
    probe_dev = "32058501001320000003"
    hb_body = {"sent_at": 0.0, "cameras": [{"device_id": f"3205850100132000{k:04d}", "connected": True,
                                            "last_packet_age_s": 0.04, "fps": 25} for k in range(10, 15)]}
    next_start = [float(int(time.time() - 3600))]

    ctx = multiprocessing.get_context("spawn")
    outside: list[list[float]] = []

    def measure(span: float) -> tuple[list[float], list[float], int]:
        """Heartbeat and upload latencies for ``span`` s, with the machine's own durable steps beside
        (appended to ``outside``)."""
        done = ctx.Event()
        took: multiprocessing.queues.Queue[list[float]] = ctx.Queue()
        size = sum(len(d) for d, _ in segs) // len(segs)
        prober = ctx.Process(target=durable_steps, args=(work / "outside", size, done, took), daemon=True)
        prober.start()
        try:
            return _measure(span)
        finally:
            done.set()
            outside.append(took.get(timeout=30))
            prober.join(10)

    def _measure(span: float) -> tuple[list[float], list[float], int]:
        hb: list[float] = []
        up: list[float] = []
        failed = 0
        end = time.monotonic() + span
        with httpx.Client(headers={"Authorization": f"Bearer {hub.tokens['agent']}"}, timeout=30) as c:
            k = 0
            while time.monotonic() < end:
                body = {**hb_body, "sent_at": time.time()}
                a = time.perf_counter()
                r = c.post(f"{hub.url}/api/v1/agents/heartbeat", json=body)
                hb.append(time.perf_counter() - a)
                failed += r.status_code != 200
                if k % 2 == 0:
                    # One client kept open, as an agent's uplink does: a new client per request would time
                    # its own set-up (TLS context, about 20 ms of CPU) instead of the hub.
                    data, dur = segs[k % len(segs)]
                    headers = {"X-VMS-SHA256": hashlib.sha256(data).hexdigest()}
                    params = {"start": next_start[0], "duration": dur}
                    a = time.perf_counter()
                    r = c.put(f"{hub.url}/api/v1/agents/segments/{probe_dev}", params=params, content=data,
                              headers=headers)
                    up.append(time.perf_counter() - a)
                    failed += r.status_code != 201
                    next_start[0] = round(next_start[0] + dur, 3)
                k += 1
                time.sleep(0.1)
        return hb, up, failed

    steps = [store_steps(hub)]
    base_hb, base_up, base_failed = measure(seconds)
    base_load = os.getloadavg()[0]
    steps.append(store_steps(hub))
    stop_spin = ctx.Event()
    spinners = [ctx.Process(target=spin, args=(stop_spin,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in spinners:
        p.start()
    time.sleep(2)
    steps.append(store_steps(hub))
    busy_hb, busy_up, busy_failed = measure(seconds)
    busy_load = os.getloadavg()[0]
    steps.append(store_steps(hub))
    stop_spin.set()
    for p in spinners:
        p.join(10)
    # The downloads run in a process of their own: threads of this one would share its GIL with the
    # probe above, and the figures would then time the bench's own client instead of the hub.
    stop = ctx.Event()
    results: multiprocessing.queues.Queue[tuple[dict[int, int], int]] = ctx.Queue()
    params = {"start": str(t0), "end": str(clip_end), "reason": "bench"}
    tokens = [hub.tokens[f"police-{i}"] for i in range(downloads)]
    loader = ctx.Process(target=download_users, args=(hub.port, f"/api/v1/devices/{KEPT}/clip.mp4", params, tokens,
                                                      stop, results), daemon=True)
    loader.start()
    began = time.monotonic()
    time.sleep(2)
    steps.append(store_steps(hub))
    load_hb, load_up, load_failed = measure(seconds)
    clips_load = os.getloadavg()[0]
    steps.append(store_steps(hub))
    stop.set()
    served_s = time.monotonic() - began
    status, got = results.get(timeout=180)
    loader.join(30)
    hub.stop()
    print(f"clips: heartbeat and upload latency at the hub, alone and with {downloads} clip downloads running "
          f"(10-minute clips, {downloads} police users)")
    for k, (name, hb, up, failed) in enumerate((("alone", base_hb, base_up, base_failed),
                                                ("busy", busy_hb, busy_up, busy_failed),
                                                (f"{downloads} clips", load_hb, load_up, load_failed))):
        print(f"  {name:<10} heartbeat p50 {pct(hb, 0.5) * 1000:6.1f} ms  p95 {pct(hb, 0.95) * 1000:6.1f} ms  "
              f"max {max(hb) * 1000:6.1f} ms | upload p50 {pct(up, 0.5) * 1000:6.1f} ms  "
              f"p95 {pct(up, 0.95) * 1000:6.1f} ms  max {max(up) * 1000:6.1f} ms | failed {failed}")
        print(f"  {'':<10} of which storing, at the hub: {steps_between(steps[2 * k], steps[2 * k + 1])}")
        mine = outside[k]
        print(f"  {'':<10} the same durable steps outside the hub (this machine's fsync): p50 "
              f"{pct(mine, 0.5) * 1000:.1f} ms  p95 {pct(mine, 0.95) * 1000:.1f} ms  max {max(mine) * 1000:.1f} ms")
    codes = ", ".join(f"{'error' if c < 0 else 'cut short' if c == 0 else c}: {n}" for c, n in sorted(status.items()))
    rate = "the hub's default" if clip_mbit is None else f"{clip_mbit:g}"
    print(f"  clip requests by status: {codes}; {got / 1e6:.0f} MB served, {got * 8 / 1e6 / served_s:.0f} Mbit/s "
          f"(archive.clip_send_mbit_s: {rate})")
    # The machine's own load says how far other work on it (not the hub) moved the figures.
    print(f"  load average (1 min) at the end of each phase: alone {base_load:.1f}, busy {busy_load:.1f}, "
          f"{downloads} clips {clips_load:.1f} on {os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--parts", default="kills,alerts,clips")
    ap.add_argument("--dead", default="refused", choices=["refused", "http500", "silent"])
    ap.add_argument("--seconds", type=float, default=20.0, help="latency window of the clips part, each phase")
    ap.add_argument("--downloads", type=int, default=20)
    ap.add_argument("--clip-mbit", type=float, default=None,
                    help="the hub's archive.clip_send_mbit_s for the clips part (default: the hub's own; 0: no limit)")
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if "kills" in parts:
            part_kills(work, args.kills, args.seed)
        if "alerts" in parts:
            part_alerts(work, args.dead)
        if "clips" in parts:
            part_clips(work, args.seconds, args.downloads, args.clip_mbit)


if __name__ == "__main__":
    main()
