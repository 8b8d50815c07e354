"""Heartbeat ingestion at the hub over loopback HTTP: camera reports per second per core.

    .venv/bin/python bench/bench_heartbeat.py [--devices 20000] [--batch 1000] [--seconds 15]

A real hub process (`vms serve`, SQLite) receives batched heartbeats from a load generator in
another process. The figure that matters is reports per second of *hub* CPU time, read from
/proc, so the load generator's own CPU on this 2-core machine does not count against it.
Target (foundation issue): at least 20,000 camera reports per second on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import HubProcess, free_port, hub_config  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bodies(agent: int, devices: list[str], batch: int) -> list[bytes]:
    out = []
    for i in range(0, len(devices), batch):
        cams = [{"device_id": d, "connected": True, "last_packet_age_s": 0.04, "fps": 25.0, "bitrate_bps": 4e6,
                 "reconnects": 0} for d in devices[i: i + batch]]
        out.append(json.dumps({"protocol": 1, "seq": 0, "sent_at": 0.0, "cameras": cams}).encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=4, help="concurrent connections of the load generator")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = hub_config(Path(d) / "data")
        cfg_path = Path(d) / "hub.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        hub = HubProcess(cfg_path, free_port())
        per_agent = args.devices // args.agents
        agents = []
        for a in range(args.agents):
            town = a % 20 + 1
            tok = hub.token("agent", f"320585{town:02d}", name=f"agent-{a}")
            ids = [f"320585{town:02d}00132{a % 10}{n:06d}" for n in range(per_agent)]
            agents.append((tok, bodies(a, ids, args.batch)))
        hub.start()
        assert hub.proc is not None
        url = f"{hub.url}/api/v1/agents/heartbeat"
        # Warm-up: every device registered (the first report of a device writes it to the store).
        t = time.perf_counter()
        for tok, bs in agents:
            for b in bs:
                r = httpx.post(url, content=b, headers={"Authorization": f"Bearer {tok}",
                                                        "content-type": "application/json"}, timeout=60)
                r.raise_for_status()
        print(f"registered {args.devices} devices in {time.perf_counter() - t:.1f} s")
        stop = threading.Event()
        sent = [0] * args.clients

        def client(k: int) -> None:
            with httpx.Client(timeout=30) as c:
                i = k
                while not stop.is_set():
                    tok, bs = agents[i % len(agents)]
                    b = bs[(i // len(agents)) % len(bs)]
                    b = b.replace(b'"sent_at": 0.0', f'"sent_at": {time.time():.3f}'.encode(), 1)
                    r = c.post(url, content=b, headers={"Authorization": f"Bearer {tok}",
                                                         "content-type": "application/json"})
                    if r.status_code == 200:
                        sent[k] += args.batch
                    i += args.clients

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        cpu0, t0 = cpu_seconds(hub.proc.pid), time.perf_counter()
        for th in threads:
            th.start()
        time.sleep(args.seconds)
        stop.set()
        for th in threads:
            th.join()
        cpu1, t1 = cpu_seconds(hub.proc.pid), time.perf_counter()
        reports = sum(sent)
        wall = t1 - t0
        cpu = cpu1 - cpu0
        print(f"batches of {args.batch} cameras, {args.clients} connections, {wall:.1f} s")
        print(f"camera reports accepted: {reports} = {reports / wall:,.0f} per second (wall)")
        print(f"hub CPU: {cpu:.1f} s = {cpu / wall:.2f} cores busy")
        print(f"reports per hub CPU-second: {reports / cpu:,.0f}  (target >= 20,000 per core)")
        tick = subprocess.run(["grep", "-c", "tick failed", str(hub.log)], capture_output=True, text=True).stdout
        print(f"tick failures logged: {tick.strip()}")
        hub.stop()


if __name__ == "__main__":
    main()
