"""How soon a camera records again after an outage: seconds from its return to its next segment.

    .venv/bin/python bench/bench_resume.py [--outages 5] [--down 20] [--up 8]

A real GStreamer RTSP server on loopback is killed for ``--down`` seconds and started again on its
port, ``--outages`` times. Two ingests record it side by side: the agent as it is (retries of a
camera that recorded capped at ``healthy_backoff_cap_s`` = 3 s, an RTSP DESCRIBE probe every 1 s) and,
as the baseline of the same run, the agent before (backoff doubling to 10 s, no probe). Per outage
it prints the seconds from the server's return to the start of each one's first new segment, and
the full opens each made while the camera was away.
Target (hardening issue, item 11): recording again within 5 s of the camera's return.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.ingest import HEALTHY_AFTER_S, CameraIngest  # noqa: E402
from edge_agent.spool import Spool  # noqa: E402
from tests.rtsp_fixture import RtspServer, free_port, make_clip, wait_for  # noqa: E402
from vms.media.segmenter import Segmenter  # noqa: E402

DEV = "32058501001320000001"
TARGET_S = 5.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outages", type=int, default=5)
    ap.add_argument("--down", type=float, default=20.0, help="seconds the shortest outage lasts")
    ap.add_argument("--spread", type=float, default=20.0,
                    help="outages last --down plus up to this much more, at random (a fixed length can fall "
                    "just before or just after a backoff retry)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--up", type=float, default=HEALTHY_AFTER_S + 3, help="seconds recording between outages")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # each failed retry logs a warning: hundreds per run
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        clip = make_clip(Path(d) / "clip.ts")
        port = free_port()
        server = RtspServer({"/cam": clip}, port=port).start()
        # (healthy backoff cap, probe interval): the agent's defaults, and the agent before (no probe, 10 s)
        kinds = {"now": (3.0, 1.0), "before": (10.0, 0.0)}
        rec: dict[str, tuple[CameraIngest, Spool]] = {}
        for name, (cap, probe) in kinds.items():
            spool = Spool(Path(d) / name, 10**9)
            rec[name] = (CameraIngest(DEV, server.url("/cam"), Segmenter(DEV, spool, 1.0), healthy_backoff_cap_s=cap,
                                      probe_interval_s=probe), spool)
            rec[name][0].start()
        delays: dict[str, list[float]] = {k: [] for k in kinds}
        print(f"{args.outages} outages of {args.down:g}-{args.down + args.spread:g} s, RTSP server killed and "
              "started again on its port")
        print(f"{'outage':>6}  {'lasted':>6}  {'now: resumed after':>18}  {'full opens':>10}  "
              f"{'before: resumed after':>21}  {'full opens':>10}")
        try:
            for n in range(1, args.outages + 1):
                ok = wait_for(lambda: all(i.snapshot().connected for i, _ in rec.values()), 60)
                if not ok:
                    raise SystemExit("an ingest did not reconnect within 60 s")
                time.sleep(args.up)
                server.stop()
                opens0 = {k: i.snapshot().reconnects for k, (i, _) in rec.items()}
                down = args.down + rng.uniform(0, args.spread)
                time.sleep(down)
                opens = {k: i.snapshot().reconnects - opens0[k] for k, (i, _) in rec.items()}
                server = RtspServer({"/cam": clip}, port=port).start()
                back = time.time()
                row = []
                for k, (_, spool) in rec.items():
                    wait_for(lambda s=spool, b=back: any(x.start >= b - 0.5 for x in s.segments()), 60)
                    first = min((x.start for x in spool.segments() if x.start >= back - 0.5), default=back + 60)
                    delays[k].append(first - back)
                    row += [f"{first - back:>17.1f}s", f"{opens[k]:>10}"]
                print(f"{n:>6}  {down:>5.1f}s  {row[0]:>18}  {row[1]}  {row[2]:>21}  {row[3]}")
        finally:
            for ing, _ in rec.values():
                ing.stop()
            for ing, _ in rec.values():
                ing.join(8)
            server.stop()
        for k, v in delays.items():
            if v:
                print(f"{k:>6}: resumed after median {statistics.median(v):.1f} s, worst {max(v):.1f} s")
        worst = max(delays["now"], default=float("nan"))
        print(f"target: every resume within {TARGET_S:g} s -> {'met' if worst < TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
