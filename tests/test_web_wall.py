"""The web pages in headless Chromium against a real hub, camera simulator and edge agent.

One hub, one simulator with two cameras and one agent serve every test in this module (the gate
camera with a sub stream that the agent relays for live tiles, the school camera without); each
test opens its own browser context with the token of the role it plays. Set
``VMS_SCREENSHOTS=docs/screenshots`` to keep screenshots of the main views.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from camsim.clips import ClipParams
from camsim.sim import SUB_PARAMS, Simulator
from tests.conftest import HubProcess, free_port, hub_config, write_config

pw = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
GATE = "32058501001320000001"  # 城厢镇
SCHOOL = "32058502111320000002"  # 沙溪镇, education (industry 11)
SPARE = "32058501001320000009"  # 城厢镇, configured but never reported: its centers fall short
SHOTS = os.environ.get("VMS_SCREENSHOTS")

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed", allow_module_level=True)


def wait(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


class Rig:
    def __init__(self, hub: HubProcess, sim: Simulator, browser: Any) -> None:
        self.hub, self.sim, self.browser = hub, sim, browser

    def api(self, path: str, role: str = "admin", **params: Any) -> Any:
        r = httpx.get(self.hub.url + path, params=params, timeout=10,
                      headers={"Authorization": f"Bearer {self.hub.tokens[role]}"})
        r.raise_for_status()
        return r.json()

    def states(self) -> dict[str, str]:
        return {d["id"]: d["state"] for d in self.api("/api/v1/devices")["devices"]}

    def page(self, role: str, hash_: str = "") -> Any:
        """A fresh browser context logged in through the login form as ``role``."""
        ctx = self.browser.new_context(viewport={"width": 1600, "height": 900}, locale="en-US")
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.errors = errors
        page.goto(self.hub.url + "/")
        page.fill("input[name=token]", self.hub.tokens[role])
        page.click("form.login button[type=submit]")
        page.wait_for_selector("button.logout")
        if hash_:
            page.goto(f"{self.hub.url}/web/#{hash_}")
        return page

    def shot(self, page: Any, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            import cv2  # the screenshot, scaled down to keep the repository small
            import numpy as np

            path = str(Path(SHOTS) / f"{name}.png")
            img = cv2.imdecode(np.frombuffer(page.screenshot(scale="css"), np.uint8), cv2.IMREAD_COLOR)
            img = cv2.resize(img, (1200, round(img.shape[0] * 1200 / img.shape[1])), interpolation=cv2.INTER_AREA)
            cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 9])


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    d = tmp_path_factory.mktemp("web")
    cfg = hub_config(d / "data", devices=[{"id": SPARE, "name": "Spare"}])
    hub = HubProcess(write_config(d / "hub.yaml", cfg), free_port())
    for role in ("admin", "duty", "maintenance", "police"):
        hub.token(role)
    agent_token = hub.token("agent", "320585", name="edge-1")
    sim = Simulator([GATE, SCHOOL], d / "camsim", rtsp_port=free_port(), control_port=free_port(),
                    onvif_base_port=None, params=ClipParams(duration_s=4.0, bitrate_kbps=800),
                    sub_params=SUB_PARAMS)
    agent: subprocess.Popen[bytes] | None = None
    hub.start()
    sim.start()
    try:
        cfg = {"hub_url": hub.url, "token": agent_token, "data_dir": str(d / "agent"), "segment_seconds": 2,
               "cameras": [{"url": sim.rtsp_url(GATE), "sub_url": sim.rtsp_url(GATE, sub=True), "device_id": GATE,
                            "name": "North gate"},
                           {"url": sim.rtsp_url(SCHOOL), "device_id": SCHOOL, "name": "School yard"}]}
        (d / "agent.yaml").write_text(yaml.safe_dump(cfg))
        with (d / "agent.log").open("ab") as log:
            agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(d / "agent.yaml")],
                                     stdout=log, stderr=log)
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            r = Rig(hub, sim, browser)
            # Degraded is uploading with a picture defect, which the analysis may flag on the looped clips.
            wait(lambda: all(r.states().get(c) in ("uploading", "degraded") for c in (GATE, SCHOOL)), 60,
                 "both cameras uploading", step=0.5)
            yield r
            browser.close()
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        sim.stop()
        hub.stop()


Rates = dict[str, dict[str, tuple[float | None, str]]]


def wall_rates(page: Any) -> Rates:
    raw = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.center[data-center]')].map(c =>
        [c.dataset.center, Object.fromEntries([...c.querySelectorAll('[data-rate]')].map(r =>
            [r.dataset.rate, [r.dataset.value, r.querySelector('.rate-value').textContent]]))]))""")
    return {c: {k: (float(v) if v else None, text) for k, (v, text) in rs.items()} for c, rs in raw.items()}


def api_rates(rig: Rig) -> Rates:
    out: Rates = {}

    def walk(c: dict[str, Any]) -> None:
        out[c["id"]] = {k: (r, f"{r * 100:.1f}%" if r is not None else "—")
                        for k in ("online", "upload", "intact") for r in [c[f"{k}_ratio"]]}
        for ch in c["children"]:
            walk(ch)

    for root in rig.api("/api/v1/centers")["centers"]:
        walk(root)
    return out


def test_login_and_wall_shows_the_center_tree_with_the_apis_rates(rig: Rig) -> None:
    page = rig.page("duty")
    page.wait_for_selector(".wall .center[data-center=taicang]")
    assert page.get_attribute("button.logout", "class") == "logout"
    navs = [a.get_attribute("data-nav") for a in page.query_selector_all("nav a")]
    assert navs == ["wall", "map", "camera", "reports"]
    # Both cameras relay media, the spare never reported: 城厢镇 is at 1 of 2, the district at 2 of 3.
    expected = api_rates(rig)
    assert set(expected) == {"taicang", "chengxiang", "shaxi", "education"}
    assert expected["chengxiang"]["upload"] == (0.5, "50.0%") and expected["taicang"]["online"][1] == "66.7%"
    assert expected["shaxi"]["upload"] == (1.0, "100.0%")
    wait(lambda: wall_rates(page) == expected, 5, f"wall rates {wall_rates(page)} == API {expected}")
    assert page.locator(".center[data-center=chengxiang] .rate.bad").count() == 3  # below target: red
    assert page.locator(".center[data-center=shaxi] .rate.good:is([data-rate=online], [data-rate=upload])").count() == 2
    assert page.inner_text("[data-count=devices] .n") == "3"
    wait(lambda: SPARE in problem_list(page) and problem_list(page) == api_problems(rig), 10,
         "the wall's dark and degraded cameras (the never-seen spare among them) match the API's")
    page.click("button.lang")  # Chinese labels
    page.wait_for_selector("text=三级视频监控中心")
    assert "在线率" in page.inner_text(".center[data-center=taicang]")
    page.click("button.lang")
    assert not page.errors
    page.context.close()


def problem_list(page: Any) -> list[str]:
    return [li.get_attribute("data-device") for li in page.query_selector_all(".problems li[data-device]")]


def api_problems(rig: Rig) -> list[str]:
    """Offline or degraded devices, longest first, by the API."""
    bad = [d for d in rig.api("/api/v1/devices")["devices"] if d["state"] in ("offline", "degraded")]
    return [d["id"] for d in sorted(bad, key=lambda d: d["since"])]


def live_routes(rig: Rig) -> bool:
    paths = httpx.get(rig.hub.url + "/openapi.json", timeout=10).json()["paths"]
    return any(p.startswith("/api/v1/live/") for p in paths)


def test_live_tiles_show_moving_pictures(rig: Rig) -> None:
    """In a grid of 4 both cameras play by WebRTC: the gate camera its sub stream (Baseline,
    small), the school camera, which has no sub stream, its Baseline main stream. A small label
    says which stream a tile shows."""
    if not live_routes(rig):
        pytest.skip("the hub has no live relay routes (/api/v1/live/...) yet")
    wait(lambda: rig.api(f"/api/v1/live/{GATE}", "duty")["sub"]["live"], 30, "the gate camera's sub stream live")
    page = rig.page("duty", f"/wall?grid=4&cams={GATE},{SCHOOL}&cycle=0")
    tiles = [page.locator(f".tile[data-device='{d}']") for d in (GATE, SCHOOL)]
    for tile in tiles:
        tile.and_(page.locator("[data-status=playing]")).wait_for(timeout=40_000)
    first = page.evaluate("vmsWall.stats()")[:2]
    shots1 = [tile.locator("video").screenshot() for tile in tiles]
    page.wait_for_timeout(3000)
    shots2 = [tile.locator("video").screenshot() for tile in tiles]
    later = page.evaluate("vmsWall.stats()")[:2]
    assert [x["device"] for x in later] == [GATE, SCHOOL]
    assert [(x["mode"], x["stream"]) for x in later] == [("webrtc", "sub"), ("webrtc", "main")], later
    sizes = [(SUB_PARAMS.width, SUB_PARAMS.height), (640, 360)]
    for a, b, s1, s2, size in zip(first, later, shots1, shots2, sizes, strict=True):
        assert b["frames"] >= a["frames"] + 50, (a, b)  # 25 fps cameras: at least 50 frames in 3 s
        assert b["mediaTime"] > a["mediaTime"] + 1.5, (a, b)
        assert (b["width"], b["height"]) == size
        assert s1 != s2, f"the picture of {b['device']} did not change in 3 s"
    assert [page.get_attribute(f".tile[data-device='{d}']", "data-stream") for d in (GATE, SCHOOL)] == ["sub", "main"]
    assert page.inner_text(f".tile[data-device='{GATE}'] .tile-stream").endswith("sub stream")
    assert page.inner_text(f".tile[data-device='{SCHOOL}'] .tile-stream").endswith("main stream")
    rig.shot(page, "wall")
    assert not page.errors
    page.context.close()


def test_single_tile_plays_the_main_stream_and_goes_straight_to_hls_for_bframes(rig: Rig) -> None:
    """A single tile shows the main stream. The gate camera's main stream has B-frames, which
    Chromium's WebRTC decodes only at keyframes: the page asks for no WebRTC session at all and
    plays HLS at once (the hub would refuse the offer anyway)."""
    if not live_routes(rig):
        pytest.skip("the hub has no live relay routes (/api/v1/live/...) yet")
    assert rig.api(f"/api/v1/live/{GATE}", "duty")["bframes"] is True
    ctx = rig.browser.new_context(viewport={"width": 1600, "height": 900}, locale="zh-CN")
    ctx.add_init_script(f"sessionStorage.setItem('vms.token', {rig.hub.tokens['duty']!r});")
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    offers: list[str] = []
    page.on("request", lambda r: offers.append(r.url) if r.url.split("?")[0].endswith("/webrtc") else None)
    page.goto(f"{rig.hub.url}/web/#/wall?grid=1&cams={GATE}&cycle=0")
    tile = page.locator(f".tile[data-device='{GATE}'][data-status=playing]")
    tile.wait_for(timeout=30_000)
    a = page.evaluate("vmsWall.stats()")[0]
    page.wait_for_timeout(2000)
    b = page.evaluate("vmsWall.stats()")[0]
    assert (b["mode"], b["stream"], b["width"], b["height"]) == ("hls", "main", 640, 360), b
    assert b["frames"] >= a["frames"] + 25, (a, b)
    assert offers == [], offers
    assert page.inner_text(f".tile[data-device='{GATE}'] .tile-stream").endswith("主码流")
    # Back to a grid of 4: the same tile switches to the sub stream.
    page.select_option(".wall-controls select", "4")
    page.locator(f".tile[data-device='{GATE}'][data-stream=sub][data-status=playing]").wait_for(timeout=30_000)
    assert page.inner_text(f".tile[data-device='{GATE}'] .tile-stream").endswith("子码流")
    assert not errors
    ctx.close()


def test_dark_camera_goes_offline_on_the_wall_and_is_acknowledged_in_the_alerts_view(rig: Rig) -> None:
    wall = rig.page("duty", f"/wall?grid=4&cams={GATE},{SCHOOL}&cycle=0")
    wall.wait_for_selector(f".tile[data-device='{GATE}']")
    assert wall.get_attribute(f".tile[data-device='{GATE}']", "data-state") in ("uploading", "degraded")
    t0 = time.monotonic()
    rig.sim.set_fault(GATE, "dark")
    # The tile says offline, with since-when, instead of a frozen frame; the camera heads the problem list.
    wall.wait_for_selector(f".tile[data-device='{GATE}'][data-state=offline] .tile-overlay.offline", timeout=10_000)
    took = time.monotonic() - t0
    overlay = wall.inner_text(f".tile[data-device='{GATE}'] .tile-overlay")
    assert "OFFLINE" in overlay and "since" in overlay
    assert wall.eval_on_selector(f".tile[data-device='{GATE}'] video", "v => v.srcObject === null && !v.src")
    wait(lambda: GATE in problem_list(wall) and problem_list(wall) == api_problems(rig), 5, "problem list as API")
    # Its alert appears on the wall and is announced (banner, and sound where the browser allows).
    wall.wait_for_selector(".banner.flash[data-alert]", timeout=5_000)
    alert_id = int(wall.get_attribute(".banner", "data-alert"))
    alert = rig.api(f"/api/v1/alerts/{alert_id}")
    assert (alert["kind"], alert["device_id"], alert["state"]) == ("device_offline", GATE, "open")
    assert wall.query_selector(f".wall-alerts li[data-alert='{alert_id}']")
    assert [(a["id"], a["sound"]) for a in wall.evaluate("vmsWall.announced()")] == [(alert_id, True)]
    assert took < 10, took
    rig.shot(wall, "wall-offline")

    # Maintenance acknowledges it in the alerts view; the API shows who and why.
    page = rig.page("maintenance", "/alerts")
    row = page.locator(f"tr[data-alert='{alert_id}']")
    row.wait_for()
    row.locator("input.comment").fill("crew on the way")
    row.locator("button.ack").click()
    page.wait_for_selector(f"tr[data-alert='{alert_id}'][data-state=acknowledged]")
    after = rig.api(f"/api/v1/alerts/{alert_id}")
    assert after["state"] == "acknowledged" and after["acknowledged_by"].startswith("maintenance-")
    assert any(e["action"] == "acknowledged" and e["comment"] == "crew on the way" for e in after["events"])
    # The wall hears of it by push.
    wall.wait_for_selector(f".wall-alerts li.acknowledged[data-alert='{alert_id}']", timeout=5_000)
    rig.shot(page, "alerts")

    # The camera comes back: the tile plays again (or waits for live media) and the alert resolves.
    rig.sim.clear(GATE)
    wall.wait_for_selector(f".tile[data-device='{GATE}']:not([data-state=offline])", timeout=30_000)
    page.wait_for_selector(f"tr[data-alert='{alert_id}']", state="detached", timeout=30_000)  # gone from 'active'
    assert rig.api(f"/api/v1/alerts/{alert_id}")["state"] == "resolved"
    assert not wall.errors and not page.errors
    wall.context.close()
    page.context.close()


def test_only_police_and_admin_reach_clip_export(rig: Rig) -> None:
    for role in ("duty", "maintenance"):
        page = rig.page(role, f"/clip/{GATE}")
        page.wait_for_selector("[data-forbidden=clip]")
        assert page.query_selector("form[data-form=clip]") is None
        assert "clip" not in [a.get_attribute("data-nav") for a in page.query_selector_all("nav a")]
        page.goto(f"{rig.hub.url}/web/#/camera/{GATE}")
        page.wait_for_selector(".camera-view .details table")
        assert page.query_selector("form[data-form=clip]") is None
        assert page.query_selector("[data-recordings=forbidden]")  # the search route is police/admin only
        page.context.close()
    page = rig.page("police", f"/camera/{GATE}")
    page.wait_for_selector("form[data-form=clip] textarea[name=reason]")
    assert page.get_attribute(".details td[data-state]", "data-state") == rig.states()[GATE]
    assert "132" in page.inner_text(".details") and "320585" in page.inner_text(".details")
    page.wait_for_selector(".timeline rect[data-state]")
    page.wait_for_selector(".recordings[data-recordings=ready] .rec-span")
    if SHOTS:
        page.wait_for_selector(".big-tile .tile-overlay.hidden", state="attached", timeout=30_000)
    rig.shot(page, "camera")
    page.context.close()
    # The API refuses the clip route to roles without the right, whatever the page shows.
    r = httpx.get(f"{rig.hub.url}/api/v1/devices/{GATE}/clip.mp4", timeout=10,
                  params={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z", "reason": "test"},
                  headers={"Authorization": f"Bearer {rig.hub.tokens['duty']}"})
    if r.status_code == 404 and r.json().get("detail") == "Not Found":
        pytest.skip("the archive's clip route is not in this hub yet; the page-side check passed")
    assert r.status_code == 403, r.text


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ts(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def recorded_spans(rec: dict[str, Any]) -> list[tuple[float, float]]:
    """What the API's gap list leaves of its window."""
    cursor, out = ts(rec["start"]), []
    for g in rec["gaps"]:
        if ts(g["start"]) > cursor:
            out.append((cursor, ts(g["start"])))
        cursor = max(cursor, ts(g["end"]))
    if ts(rec["end"]) > cursor:
        out.append((cursor, ts(rec["end"])))
    return out


def test_camera_view_shows_the_recorded_spans_the_api_lists(rig: Rig) -> None:
    # An hour up to the end of the newest segment the hub holds, so that none of it is still on its way.
    def newest() -> list[dict[str, Any]]:
        now = time.time()
        return rig.api(f"/api/v1/devices/{GATE}/recordings", "police", start=utc(now - 3600), end=utc(now + 1),
                       limit=20000)["segments"]

    wait(newest, 20, f"a recording of {GATE}", step=0.5)
    end = int(ts(newest()[-1]["end"]))
    start, end_s = utc(end - 3600), utc(end)
    page = rig.page("police", f"/camera/{GATE}?from={start}&to={end_s}")
    page.wait_for_selector(".recordings[data-recordings=ready] .rec-span")
    everything = rig.api(f"/api/v1/devices/{GATE}/recordings", "police", start=start, end=end_s, limit=20000)
    motion = rig.api(f"/api/v1/devices/{GATE}/recordings", "police", start=start, end=end_s, min_motion=0.02)
    summary = page.evaluate("() => ({...document.querySelector('.rec-summary').dataset})")
    assert (summary["start"], summary["end"]) == (everything["start"], everything["end"])
    assert int(summary["segments"]) == everything["segments_total"] > 0
    assert int(summary["gaps"]) == len(everything["gaps"])
    assert int(summary["motion"]) == len(motion["segments"])
    assert int(summary["quality"]) == len(everything["quality_events"])
    # The recorded spans run from the first segment to the last, broken where the API lists gaps.
    spans = [(ts(a), ts(b)) for a, b in page.evaluate(
        "() => [...document.querySelectorAll('.rec-span')].map(r => [r.dataset.start, r.dataset.end])")]
    expected = recorded_spans(everything)
    assert len(spans) == int(summary["spans"]) == len(expected) > 0
    assert all(abs(p - q) < 0.002 for s, e in zip(spans, expected, strict=True) for p, q in zip(s, e, strict=True))
    segs = everything["segments"]
    assert abs(spans[0][0] - max(ts(segs[0]["start"]), ts(start))) < 0.002
    assert abs(spans[-1][1] - min(ts(segs[-1]["end"]), ts(end_s))) < 0.002
    # Clicking the longest span fills the clip form with its start and end (to whole seconds).
    longest = max(range(len(spans)), key=lambda i: spans[i][1] - spans[i][0])
    page.locator(".rec-span").nth(longest).click()
    page.wait_for_selector("form[data-form=clip][data-picked]")
    filled = page.evaluate("""() => ['start', 'end'].map(n =>
        new Date(document.querySelector(`form[data-form=clip] input[name=${n}]`).value).getTime() / 1000)""")
    a, b = spans[longest]
    assert filled[0] == int(a) and filled[1] == -int(-b // 1), (filled, spans[longest])
    assert not page.errors
    page.context.close()


def test_reports_view_matches_the_api_and_downloads_csv(rig: Rig) -> None:
    page = rig.page("duty", "/reports?period=24h")
    page.wait_for_selector("table[data-table=centers] tr[data-center=taicang]")
    rep = rig.api("/api/v1/reports/availability", period="24h")
    assert page.locator("table[data-table=centers] tbody tr").count() == len(rep["centers"]) == 4
    assert page.locator(".chart rect").count() >= 12
    with page.expect_download() as dl:
        page.click("button.csv")
    text = Path(dl.value.path()).read_text()
    assert text.startswith("center,name,level,devices") and "taicang" in text and GATE in text
    # Retention compliance per center and per device, as the API reports it; the spare never recorded.
    page.wait_for_selector("table[data-table=compliance] tr[data-center=taicang]")
    page.wait_for_selector(f"table[data-table=retention] tr[data-device='{SPARE}']")
    comp = rig.api("/api/v1/storage/compliance", "duty")
    shown = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        'table[data-table=compliance] tbody tr')].map(r =>
        [r.dataset.center, r.querySelector('.meeting').textContent]))""")
    assert shown == {c["center"]: f"{c['meeting_retention']} / {c['devices']}" for c in comp["centers"]}
    verdict = {d["device_id"]: d["meets_retention"] for c in comp["centers"] for d in c["device_rows"]}
    rows = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        'table[data-table=retention] tbody tr')].map(r => [r.dataset.device, r.classList.contains('compliant')]))""")
    assert rows == verdict and set(rows) == {GATE, SCHOOL, SPARE} and rows[SPARE] is False
    assert page.get_attribute(f"table[data-table=retention] tr[data-device='{SPARE}']", "class") == "noncompliant"
    assert page.locator("table[data-table=compliance] tr.noncompliant").count() == sum(
        c["meeting_retention"] < c["devices"] for c in comp["centers"]) > 0
    with page.expect_download() as dl:
        page.click("button.csv-compliance")
    table = list(csv.DictReader(Path(dl.value.path()).read_text().splitlines()))
    assert {r["device_id"]: r["meets_retention"] == "true" for r in table} == verdict
    rig.shot(page, "reports")
    assert not page.errors
    page.context.close()


def test_event_stream_takes_a_reader_token_in_the_header_or_a_ticket_in_the_query(rig: Rig) -> None:
    """EventSource sends no headers: the page fetches a short-lived ticket with its token in the header
    and opens the stream with the ticket; a person's own token in the URL is refused, saying why."""
    url = rig.hub.url + "/api/v1/events"
    police = {"Authorization": f"Bearer {rig.hub.tokens['police']}"}
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, params={"token": "vms_nope_nope"}, timeout=5).status_code == 401
    own = httpx.get(url, params={"token": rig.hub.tokens["police"]}, timeout=5)
    assert own.status_code == 401 and "POST /api/v1/events/ticket" in own.json()["detail"]
    agent = httpx.get(url, headers={"Authorization": f"Bearer {rig.hub.tokens['edge-1']}"}, timeout=5)
    assert agent.status_code == 403
    assert httpx.post(url + "/ticket", headers={"Authorization": f"Bearer {rig.hub.tokens['edge-1']}"},
                      timeout=5).status_code == 403
    ticket = httpx.post(url + "/ticket", headers=police, timeout=5).json()["ticket"]
    forged = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
    assert httpx.get(url, params={"token": forged}, timeout=5).status_code == 401
    media = httpx.post(f"{rig.hub.url}/api/v1/live/{GATE}/media-token", headers=police,
                       timeout=5).json()["token"]
    assert httpx.get(url, params={"token": media}, timeout=5).status_code == 401  # a camera's, not the events'
    with httpx.stream("GET", url, params={"token": ticket}, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        event = next(line for line in lines if line.startswith("event:"))
        data = next(lines)
    assert event == "event: snapshot"
    snap = json.loads(data.removeprefix("data: "))
    assert snap["me"]["role"] == "police" and snap["counts"]["devices"] == 3
    assert [c["id"] for c in snap["centers"]] == ["taicang"]
    assert httpx.get(rig.hub.url + "/api/v1/session", timeout=5,
                     headers={"Authorization": f"Bearer {rig.hub.tokens['police']}"}).json()["views"] == [
        "wall", "map", "camera", "clip"]
