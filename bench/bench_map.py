"""The district map with 10,000 cameras in headless Chromium: frame times while panning.

    .venv/bin/python bench/bench_map.py [--cameras 10000] [--sites 1000]

A real hub process with that many placed cameras (all unknown: grey) and sites; the map page is
dragged across the district, and every frame's interval is recorded in the page. Printed against
baselines from the same run: the same map without camera markers (vectors only), and without
clustering (every marker drawn, on a canvas). Target from the coverage issue: the map stays
responsive (frames near 16.7 ms while panning).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import HubProcess, free_port, hub_config, write_config
from tests.test_web_wall import CHROMIUM, CHROMIUM_ARGS

WEST, SOUTH, SPAN = 121.0, 31.4, 0.2
RECORD = """() => { window.__frames = []; let last = performance.now();
  const step = (t) => { window.__frames.push(t - last); last = t; if (window.__rec) requestAnimationFrame(step); };
  window.__rec = true; requestAnimationFrame(step); }"""


def config(d: Path, cameras: int, sites: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(3)
    devs = [{"id": f"3205850{1 + i % 2}001320{i:06d}", "lon": round(WEST + float(rng.uniform(0, SPAN)), 6),
             "lat": round(SOUTH + float(rng.uniform(0, SPAN)), 6)} for i in range(cameras)]
    kinds = ["school", "hospital", "community", "shop_street", "main_road"]
    site_list = [{"id": f"s{i}", "name": f"site {i}", "kind": kinds[i % 5], "center": "chengxiang",
                  "lon": round(WEST + float(rng.uniform(0, SPAN)), 6),
                  "lat": round(SOUTH + float(rng.uniform(0, SPAN)), 6)} for i in range(sites)]
    ring = [[WEST, SOUTH], [WEST + SPAN, SOUTH], [WEST + SPAN, SOUTH + SPAN], [WEST, SOUTH + SPAN], [WEST, SOUTH]]
    return hub_config(d / "data", devices=devs, sites=site_list,
                      map={"boundary": {"type": "Polygon", "coordinates": [ring]}})


def pan(page: Any, drags: int = 12) -> dict[str, float]:
    box = page.locator("[data-map=district]").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.evaluate(RECORD)
    for i in range(drags):
        dx = 250 if i % 2 == 0 else -250
        page.mouse.move(cx, cy)
        page.mouse.down()
        for k in range(1, 21):
            page.mouse.move(cx + dx * k / 20, cy + (k % 5))
        page.mouse.up()
        page.wait_for_timeout(120)  # the markers are drawn again at the end of each drag
    frames = page.evaluate("() => { window.__rec = false; return window.__frames.slice(2); }")
    frames.sort()
    return {"frames": len(frames), "median": statistics.median(frames), "p95": frames[int(len(frames) * 0.95)],
            "max": frames[-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cameras", type=int, default=10_000)
    ap.add_argument("--sites", type=int, default=1_000)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as d:
        hub = HubProcess(write_config(Path(d) / "hub.yaml", config(Path(d), args.cameras, args.sites)), free_port())
        token = hub.token("duty")
        hub.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                ctx = browser.new_context(viewport={"width": 1600, "height": 900})
                ctx.add_init_script(f"sessionStorage.setItem('vms.token', {token!r});")
                for label, hash_, strip in (("clustered (the default)", "/map", False),
                                            ("baseline: every marker, no clustering (canvas)", "/map?cluster=0", False),
                                            ("baseline: vectors only, no camera markers", "/map", True)):
                    page = ctx.new_page()
                    page.goto(f"{hub.url}/web/#{hash_}")
                    page.wait_for_selector("[data-map=district][data-ready='1']", timeout=60_000)
                    if strip:
                        page.evaluate("vmsMap.camLayer.remove()")
                    shown = page.get_attribute("[data-map=district]", "data-shown")
                    render = page.evaluate("() => { const t = performance.now(); vmsMap.render(); "
                                           "return performance.now() - t; }")
                    r = pan(page)
                    print(f"{label:48s} markers drawn {shown if not strip else 0:>5}, redraw {render:6.1f} ms; "
                          f"frames while panning: median {r['median']:5.1f} ms, p95 {r['p95']:5.1f} ms, "
                          f"max {r['max']:6.1f} ms ({r['frames']} frames)")
                    page.close()
                browser.close()
        finally:
            hub.stop()


if __name__ == "__main__":
    main()
