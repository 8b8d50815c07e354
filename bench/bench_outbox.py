"""Alert delivery with one dead and one healthy receiver: how long the healthy one waits for each alert.

    .venv/bin/python bench/bench_outbox.py [--alerts 20] [--every 0.5] [--backlog 200]

An in-process hub (real clock, SQLite, the hub's own outbox loop) with two webhook receivers on
loopback: a healthy one that records when each alert arrives, and a dead one -- a closed port, a
server answering 500, or one that accepts connections and never answers (its 5 s timeout) -- that
already has ``--backlog`` deliveries waiting (the issue's reproduction: 200). Alerts are raised
through the one alert writer, one every ``--every`` s. Baseline: the healthy receiver alone, same run.
Target (hardening issue, item 2): every alert reaches the healthy receiver within seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, hub_config  # noqa: E402
from vms.alerts import AlertKind  # noqa: E402
from vms.config import HubConfig  # noqa: E402
from vms.hub import Hub  # noqa: E402
from vms.services.alerting import NewAlert  # noqa: E402


class Receiver:
    """A webhook receiver on loopback: records arrival times by fingerprint, or answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.arrived: dict[str, float] = {}
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if status < 300:
                    rec.arrived.setdefault(body["alerts"][0]["fingerprint"], time.monotonic())
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret?access_token=secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dead_receiver(kind: str) -> tuple[str, Any]:
    if kind == "refused":
        return f"http://127.0.0.1:{free_port()}/hook/secret", None
    if kind == "http500":
        r = Receiver(500)
        return r.url, r
    s = socket.socket()  # "silent": connections sit in the backlog, no answer ever comes
    s.bind(("127.0.0.1", 0))
    s.listen(256)
    return f"http://127.0.0.1:{s.getsockname()[1]}/hook/secret", s


def hub_with(data: Path, receivers: list[dict[str, Any]]) -> Hub:
    cfg = hub_config(data, alerts={"receivers": receivers, "retry_initial_s": 1, "retry_max_s": 30,
                                   "receiver_down_after_s": 5})
    return Hub(HubConfig.model_validate(cfg))


def scenario(dead: str | None, args: argparse.Namespace) -> dict[str, Any]:
    healthy = Receiver()
    dead_url, dead_obj = dead_receiver(dead) if dead else (None, None)
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        receivers = [{"name": "crew", "kind": "webhook", "url": healthy.url}]
        if dead_url:
            dead_rx = {"name": "dead", "kind": "webhook", "url": dead_url, "timeout_s": 5}
            pre = hub_with(data, [dead_rx])  # the backlog: raised while the dead one was the only receiver
            for i in range(args.backlog):
                pre.alerts.raise_or_update(NewAlert(f"old{i}", AlertKind.STORAGE_LOW, f"old {i}", time.time()))
            pre.stop()
            receivers = [dead_rx, *receivers]
        hub = hub_with(data, receivers)
        loop = threading.Thread(target=hub._outbox_loop, daemon=True)  # the hub's own outbox thread
        loop.start()
        raised: dict[str, float] = {}
        for i in range(args.alerts):
            fp = f"new{i}"
            raised[fp] = time.monotonic()
            hub.alerts.raise_or_update(NewAlert(fp, AlertKind.STORAGE_LOW, f"new {i}", time.time()))
            time.sleep(args.every)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(fp in healthy.arrived for fp in raised):
            time.sleep(0.05)
        hub._stop.set()
        hub.outbox.wake()  # an idle outbox waits to be woken
        loop.join(15)
        with hub.sessions() as s:
            from sqlalchemy import select

            from vms.db.models import Alert
            down = s.scalars(select(Alert.state).where(Alert.kind == AlertKind.RECEIVER_DOWN.value)).all()
        hub.stop()
    healthy.stop()
    if dead_obj is not None:
        dead_obj.stop() if isinstance(dead_obj, Receiver) else dead_obj.close()
    lat = [healthy.arrived[fp] - t for fp, t in raised.items() if fp in healthy.arrived]
    return {"delivered": len(lat), "of": len(raised), "median_s": statistics.median(lat) if lat else None,
            "max_s": max(lat) if lat else None, "receiver_down": list(down)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=20)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--backlog", type=int, default=200)
    args = ap.parse_args()
    print(f"{args.alerts} alerts, one every {args.every} s; the dead receiver has {args.backlog} waiting")
    print(f"{'dead receiver':<16}{'delivered':>10}{'median s':>10}{'max s':>8}  receiver_down alert")
    for dead in (None, "refused", "http500", "silent"):
        r = scenario(dead, args)
        med = f"{r['median_s']:.2f}" if r["median_s"] is not None else "-"
        mx = f"{r['max_s']:.2f}" if r["max_s"] is not None else "-"
        print(f"{dead or 'none (baseline)':<16}{r['delivered']:>5} of {r['of']:<3}{med:>10}{mx:>8}  "
              f"{','.join(r['receiver_down']) or '-'}", flush=True)


if __name__ == "__main__":
    main()
