"""Cascade between two of our hubs over real SIP: a town center registers with the district center.

The district accepts the town as a lower platform, reads its catalog (the town's cameras join the
district's tree) and subscribes to it; a camera going dark at the town is offline at the district
within 10 s, told by NOTIFY. Both are real ``vms serve`` processes on loopback; an agent speaking
HTTP makes the town's camera online and then dark.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import HubProcess, free_port, wait_until
from tests.test_alerts_e2e import Agent
from tests.test_gb28181_access import Device, item
from tests.test_gb28181_cascade_sipp import Feeder, make_segments

DISTRICT = "32058500002000000001"
TOWN = "32058501002000000001"
PASSWORD = "town-to-district"
CAM = "32058501001320000001"


def district_and_town(make_hub_process: Any, district_gb: dict[str, Any] | None = None,
                      hubs: dict[str, Any] | None = None, town_gb: dict[str, Any] | None = None,
                      **link: Any) -> tuple[HubProcess, HubProcess]:
    """A district hub that takes lower platforms, and a town hub (one camera) registering with it
    with ``link`` settings; both started. ``district_gb``, ``town_gb``: more of each one's ``gb28181``;
    ``hubs``: more config sections of both."""
    district_sip = free_port()
    district: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": DISTRICT, "host": "127.0.0.1", "port": district_sip,
                 "passwords": {TOWN: PASSWORD}, "auto_accept": True, "record": False,
                 "keepalive_interval_s": 5, "keepalive_misses": 2, **(district_gb or {})}, **(hubs or {}))
    town: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": TOWN, "host": "127.0.0.1", "port": free_port(), "record": False,
                 **(town_gb or {})},
        devices=[{"id": CAM, "name": "南门 1", "location": "城厢镇 南门"}],
        superiors=[{"name": "district", "server_id": DISTRICT, "host": "127.0.0.1", "port": district_sip,
                    "password": PASSWORD, "share": ["chengxiang"], **link}], **(hubs or {}))
    district.token("admin")
    for role in ("duty", "admin"):
        town.token(role)
    town.token("agent", "32058501", name="edge-1")
    district.start()
    town.start()
    return district, town


def tokens(district: HubProcess, town: HubProcess) -> tuple[dict[str, str], dict[str, str], str]:
    """The district's and the town's admin headers, and the town agent's token."""
    return ({"Authorization": f"Bearer {district.tokens['admin']}"},
            {"Authorization": f"Bearer {town.tokens['admin']}"}, town.tokens["edge-1"])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_town_registers_with_district_shares_its_catalog_and_a_dark_camera_is_offline_there_in_10_s(
    transport: str, make_hub_process: Any
) -> None:
    district, town = district_and_town(make_hub_process, transport=transport, keepalive_interval_s=2)
    d_admin, t_admin, agent_token = tokens(district, town)

    def at_district() -> dict[str, Any]:
        r = httpx.get(f"{district.url}/api/v1/devices/{CAM}", headers=d_admin)
        return dict(r.json()) if r.status_code == 200 else {}

    def context() -> str:
        return (f"town links: {httpx.get(f'{town.url}/api/v1/superiors', headers=t_admin).text}\n"
                f"district GB: {httpx.get(f'{district.url}/api/v1/gb28181/devices', headers=d_admin).text}\n"
                f"district log: {(district.log.read_text() if district.log else '')[-2500:]}\n"
                f"town log: {(town.log.read_text() if town.log else '')[-2500:]}")

    with Agent(town, agent_token, [CAM]) as agent:
        wait_until(lambda: at_district().get("state") == "online", 30, "the town camera online at the district",
                   context)
        assert at_district()["name"] == "南门 1"
        # Online without video at the town (an agent's heartbeat, no segment): VLOST told, not uploading here.
        town_state = httpx.get(f"{town.url}/api/v1/devices/{CAM}", headers=t_admin).json()["state"]
        assert town_state == "online"
        wait_until(lambda: httpx.get(f"{district.url}/api/v1/gb28181/devices", headers=d_admin).json()["devices"][0]
                   ["channels"] == {CAM: "VLOST"}, 10, "VLOST told to the district", context)
        links = httpx.get(f"{town.url}/api/v1/superiors", headers=t_admin).json()
        assert links[0]["state"] == "registered" and links[0]["subscriptions"] == ["Catalog"], links
        reg = httpx.get(f"{district.url}/api/v1/gb28181/devices", headers=d_admin).json()["devices"]
        assert [r["device_id"] for r in reg] == [TOWN]
        assert reg[0]["peer"].startswith(f"{transport}:")
        tree = httpx.get(f"{district.url}/api/v1/centers/chengxiang", headers=d_admin).json()
        assert tree["counts"]["devices"] == 1  # the camera, not the town platform that carries it
        agent.dark[CAM] = time.time()
        dark = time.monotonic()
        wait_until(lambda: at_district().get("state") == "offline", 15, "offline at the district", context)
        took = time.monotonic() - dark
    assert took < 10, f"offline at the district {took:.1f} s after the camera went dark"


def test_district_down_for_a_while_then_back_gets_the_town_its_catalog_and_its_changes_again(
    make_hub_process: Any
) -> None:
    district, town = district_and_town(make_hub_process, keepalive_interval_s=1, keepalive_misses=2)
    d_admin, t_admin, agent_token = tokens(district, town)

    def link() -> dict[str, Any]:
        return dict(httpx.get(f"{town.url}/api/v1/superiors", headers=t_admin).json()[0])

    def at_district() -> str:
        r = httpx.get(f"{district.url}/api/v1/devices/{CAM}", headers=d_admin)
        return str(r.json()["state"]) if r.status_code == 200 else "absent"

    with Agent(town, agent_token, [CAM]) as agent:
        wait_until(lambda: at_district() == "online", 30, "the town camera online at the district")
        district.stop()
        wait_until(lambda: link()["state"] != "registered", 15, "the town sees the district gone")
        time.sleep(15)  # down for a while: the town keeps trying, backing off to retry_max_s
        assert link()["state"] == "failing" and link()["failures"] >= 2
        alerts = httpx.get(f"{town.url}/api/v1/alerts", headers=t_admin).json()["alerts"]
        assert [a["kind"] for a in alerts if a["state"] != "resolved"] == ["superior_down"]
        district.start()
        back = time.monotonic()
        wait_until(lambda: link()["state"] == "registered", 15, "registered again", lambda: str(link()))
        assert time.monotonic() - back < 12  # the next try, retry_max_s (10 s) at most
        wait_until(lambda: link()["subscriptions"] == ["Catalog"], 15, "the district subscribed again")
        wait_until(lambda: at_district() == "online", 20, "the camera online at the district again")
        agent.dark[CAM] = time.time()
        dark = time.monotonic()
        wait_until(lambda: at_district() == "offline", 15, "offline at the district")
        assert time.monotonic() - dark < 10
    alerts = httpx.get(f"{town.url}/api/v1/alerts", headers=t_admin).json()["alerts"]
    assert [a["state"] for a in alerts if a["kind"] == "superior_down"] == ["resolved"]


def test_district_plays_a_town_camera_live_through_the_cascade_while_watched_and_after_the_town_restarts(
    make_hub_process: Any, tmp_path: Path
) -> None:
    """The district's wall asks for a town camera's live playlist: the district invites the town (the
    footage comes through the cascade as PS over RTP), serves it as HLS, hangs up when nobody has
    watched for ``watch_idle_s``, and plays again by itself after the town hub restarted."""
    import av

    district, town = district_and_town(make_hub_process, {"watch_idle_s": 5},
                                       {"analysis": {"enabled": False}, "live": {"stale_after_s": 6}},
                                       keepalive_interval_s=2)
    d_admin, t_admin, agent_token = tokens(district, town)
    duty = {"Authorization": f"Bearer {district.token('duty')}"}
    segments = make_segments(tmp_path, 4)

    def streams() -> dict[str, Any]:
        reg = httpx.get(f"{district.url}/api/v1/gb28181/devices", headers=d_admin).json()["devices"]
        return dict(reg[0]["streams"]) if reg else {}

    def context() -> str:
        return (f"district streams: {streams()}\n"
                f"district log: {(district.log.read_text() if district.log else '')[-3000:]}\n"
                f"town log: {(town.log.read_text() if town.log else '')[-3000:]}")

    def playlist() -> httpx.Response:
        return httpx.get(f"{district.url}/api/v1/live/{CAM}/index.m3u8", headers=duty, timeout=30)

    def newest(text: str) -> str:
        return [ln for ln in text.splitlines() if ln and not ln.startswith("#")][-1]

    with Feeder(town, agent_token, CAM, segments):
        wait_until(lambda: httpx.get(f"{district.url}/api/v1/devices/{CAM}", headers=d_admin).json().get("state")
                   == "uploading", 45, "the town camera uploading at the district (told ON)", context)
        assert streams() == {}  # nothing is invited while nobody watches
        asked = time.monotonic()
        r = playlist()  # waits for the first segment through the cascade
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{context()}"
        first_s = time.monotonic() - asked
        assert first_s < 8.5, first_s
        seg = httpx.get(f"{district.url}/api/v1/live/{CAM}/{newest(r.text)}", headers=duty)
        assert seg.status_code == 200, seg.text
        (tmp_path / "d.ts").write_bytes(seg.content)
        with av.open(str(tmp_path / "d.ts")) as c:  # FFmpeg's demuxer and decoder: the town's real video
            v = c.streams.video[0]
            frames = sum(1 for _ in c.decode(v))
            assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", 640, 360)
        assert frames >= 25, frames
        assert streams()[CAM]["watched"] is True and streams()[CAM]["state"] == "playing"
        audit = httpx.get(f"{town.url}/api/v1/audit", headers=t_admin).json()["entries"]
        assert any(e["action"] == "cascade.play" and e["target"] == CAM and e["actor"] == "superior:district"
                   for e in audit)

        # Nobody watches: the district hangs up; the camera's state stays the town's word.
        wait_until(lambda: CAM not in streams(), 15, "the district hangs up an unwatched stream", context)
        assert httpx.get(f"{district.url}/api/v1/devices/{CAM}", headers=d_admin).json()["state"] == "uploading"

        # Watched again, then the town restarts under it: the district plays again by itself.
        assert playlist().status_code == 200
        town.stop()
        time.sleep(3)
        town.start()
        back = time.monotonic()
        before = newest(playlist().text) if playlist().status_code == 200 else ""

        def fresh() -> bool:
            r = playlist()  # the wall's reloads keep the stream watched
            return r.status_code == 200 and newest(r.text) != before

        wait_until(fresh, 45, "live again at the district after the town restarted", context)
        took = time.monotonic() - back
    assert took < 30, f"live again {took:.1f} s after the town came back"


def test_district_police_pull_a_town_cameras_clip_fetched_from_the_town_by_download(
    make_hub_process: Any, tmp_path: Path
) -> None:
    """The footage stays at the town; a police liaison at the district asks for a clip of a town camera
    and the district fetches that span from the town's recording (RecordInfo, Download INVITE), keeps it
    and serves the clip. Both sides audit the pull; a second pull of the same span fetches nothing."""
    import av

    district, town = district_and_town(make_hub_process, hubs={"analysis": {"enabled": False}},
                                       keepalive_interval_s=2)
    d_admin, t_admin, agent_token = tokens(district, town)
    police = {"Authorization": f"Bearer {district.token('police')}"}
    segments = make_segments(tmp_path, 4)

    def pulls_at_town() -> list[dict[str, Any]]:
        entries = httpx.get(f"{town.url}/api/v1/audit", headers=t_admin).json()["entries"]
        return [e for e in entries if e["action"] == "cascade.download"]

    with Feeder(town, agent_token, CAM, segments) as feeder:
        began = time.time()
        wait_until(lambda: time.time() - began > 14 and httpx.get(
            f"{district.url}/api/v1/devices/{CAM}", headers=d_admin).json().get("state") == "uploading",
            60, "14 s recorded at the town, told to the district", lambda: str(feeder.answers[-3:]) + httpx.get(
                f"{district.url}/api/v1/devices/{CAM}", headers=d_admin).text + httpx.get(
                f"{town.url}/api/v1/devices/{CAM}", headers=t_admin).text)
        # Both ends late in their second: GB/T 28181 bodies carry whole seconds, and neither end may be
        # cut back to the second before it.
        start = int(began) + 2.9
        end = start + 8
        assert httpx.get(f"{district.url}/api/v1/gb28181/devices", headers=d_admin).json()["devices"][0][
            "streams"] == {}  # nothing streams from the town: the district has no footage of its own
        rec = httpx.get(f"{district.url}/api/v1/devices/{CAM}/recordings", headers=police, timeout=20,
                        params={"start": f"{start:.3f}", "end": f"{end:.3f}"}).json()
        assert rec["segments_total"] == 0 and TOWN in rec["elsewhere_note"], rec
        assert sum(g["seconds"] for g in rec["elsewhere"]) >= 7.9, rec  # what the town recorded, from RecordInfo
        asked = time.monotonic()
        r = httpx.get(f"{district.url}/api/v1/devices/{CAM}/clip.mp4", headers=police, timeout=60,
                      params={"start": f"{start:.3f}", "end": f"{end:.3f}", "case": "2026-118"})
        took = time.monotonic() - asked
        log = district.log.read_text()[-3000:] if district.log else ""
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{log}"
    (tmp_path / "clip.mp4").write_bytes(r.content)
    with av.open(str(tmp_path / "clip.mp4")) as c:  # FFmpeg's demuxer: a playable clip of the town's video
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        assert (v.codec_context.width, v.codec_context.height) == (640, 360)
    assert frames >= 7 * 25, frames  # about 8 s of 25 fps video
    assert took < 20, f"the clip took {took:.1f} s (8 s of footage downloaded at 4x)"
    assert [(e["actor"], e["target"]) for e in pulls_at_town()] == [("superior:district", CAM)]
    d_audit = httpx.get(f"{district.url}/api/v1/audit", headers=d_admin).json()["entries"]
    assert any(e["target"] == CAM and e["action"].startswith("clip") for e in d_audit), d_audit[-5:]
    again = httpx.get(f"{district.url}/api/v1/devices/{CAM}/clip.mp4", headers=police, timeout=60,
                      params={"start": f"{start + 2:.3f}", "end": f"{end - 2:.3f}", "case": "2026-118"})
    assert again.status_code == 200
    assert len(pulls_at_town()) == 1  # kept at the district: not fetched twice
    rec = httpx.get(f"{district.url}/api/v1/devices/{CAM}/recordings", headers=police, timeout=20,
                    params={"start": f"{start:.3f}", "end": f"{end:.3f}"}).json()
    assert rec["recorded_s"] >= 7, rec  # now kept here too


def test_a_camera_accepted_at_the_town_later_is_added_at_the_district_and_deleted_when_rejected(
    make_hub_process: Any
) -> None:
    """The catalog was sent at registration; a camera the town accepts afterwards reaches the district
    as a catalog ADD (its name and place with it), and one the town takes out of service as a DEL."""
    district, town = district_and_town(make_hub_process, keepalive_interval_s=2)
    d_admin, t_admin, agent_token = tokens(district, town)
    new = "32058501001320000009"

    def at_district(device: str) -> dict[str, Any]:
        r = httpx.get(f"{district.url}/api/v1/devices/{device}", headers=d_admin)
        return dict(r.json()) if r.status_code == 200 else {}

    def channels() -> dict[str, str]:
        reg = httpx.get(f"{district.url}/api/v1/gb28181/devices", headers=d_admin).json()["devices"]
        return dict(reg[0]["channels"]) if reg else {}

    with Agent(town, agent_token, [CAM]):
        wait_until(lambda: at_district(CAM).get("state") in ("online", "uploading"), 30, "the first camera there")
        r = httpx.post(f"{town.url}/api/v1/agents/cameras", headers={"Authorization": f"Bearer {agent_token}"},
                       json={"cameras": [{"device_id": new, "source": "onvif", "name": "北门 2",
                                          "location": "城厢镇 北门", "address": "127.0.0.1:8000"}]})
        assert r.status_code == 200 and r.json()["cameras"][0]["state"] == "pending", r.text
        time.sleep(3)
        assert new not in channels()  # pending at the town: not shared
        r = httpx.post(f"{town.url}/api/v1/discovered/{new}/accept", headers=t_admin, json={"comment": "北门 新装"})
        assert r.status_code == 200, r.text
        wait_until(lambda: new in channels(), 15, "the accepted camera added at the district", lambda: (
            f"{channels()}\ntown: {httpx.get(f'{town.url}/api/v1/devices/{new}', headers=t_admin).text}\n"
            f"{httpx.get(f'{town.url}/api/v1/superiors', headers=t_admin).text}"))
        wait_until(lambda: at_district(new).get("name") == "北门 2", 10, "its catalog item (name) at the district")
        r = httpx.post(f"{town.url}/api/v1/discovered/{new}/reject", headers=t_admin, json={"comment": "拆除"})
        assert r.status_code == 200, r.text
        wait_until(lambda: new not in channels(), 10, "the rejected camera deleted at the district")
        assert CAM in channels()


def test_an_nvr_registering_at_the_town_reaches_the_district_as_its_channels_alone(make_hub_process: Any) -> None:
    """An NVR registers with the town by SIP while the district listens to the town's catalog. The
    district gets the NVR's channels and never the NVR: it used to be added there at registration and
    deleted once the town read its catalog, and so showed as a retired device of the district's."""
    nvr, channel = "32058501001180000001", "32058501001310000011"
    district, town = district_and_town(make_hub_process, keepalive_interval_s=2,
                                       town_gb={"passwords": {nvr: "nvr-secret"}, "auto_accept": True})
    d_admin, t_admin, _ = tokens(district, town)

    def at_district(device: str) -> int:
        return httpx.get(f"{district.url}/api/v1/devices/{device}", headers=d_admin).status_code

    wait_until(lambda: at_district(CAM) == 200, 30, "the town's catalog at the district")
    wait_until(lambda: "Catalog" in httpx.get(f"{town.url}/api/v1/superiors", headers=t_admin).json()[0]
               ["subscriptions"], 15, "the district subscribed to the town's catalog")
    dev = Device(yaml.safe_load(town.config.read_text())["gb28181"]["port"], nvr)
    try:
        assert dev.register("nvr-secret").status == 200
        wait_until(lambda: httpx.get(f"{town.url}/api/v1/devices/{nvr}", headers=t_admin).status_code == 200, 10,
                   "the NVR a device at the town")
        time.sleep(3)  # the town's changes reach the district within a second or two
        dev.answer_catalog([{**item(channel, "西门 通道 1"), "ParentID": nvr}])
        wait_until(lambda: at_district(channel) == 200, 15, "the NVR's channel at the district")
        time.sleep(2)
        assert at_district(nvr) == 404
        counts = httpx.get(f"{district.url}/api/v1/centers/chengxiang", headers=d_admin).json()["counts"]
        assert counts["devices"] == 2, counts  # the town's camera and the channel
    finally:
        dev.close()


def test_the_district_wall_in_chromium_plays_a_town_camera_through_the_cascade(
    make_hub_process: Any, tmp_path: Path
) -> None:
    """A duty officer at the district opens the wall on a town camera: the tile plays moving pictures
    that came from the town through the cascade (real headless Chromium, the page as it ships)."""
    pw = pytest.importorskip("playwright.sync_api")
    from tests.test_web_wall import CHROMIUM, CHROMIUM_ARGS

    district, town = district_and_town(make_hub_process, hubs={"analysis": {"enabled": False}},
                                       keepalive_interval_s=2)
    d_admin, _t_admin, agent_token = tokens(district, town)
    duty = district.token("duty")
    with Feeder(town, agent_token, CAM, make_segments(tmp_path, 4)):
        wait_until(lambda: httpx.get(f"{district.url}/api/v1/devices/{CAM}", headers=d_admin).json().get("state")
                   == "uploading", 45, "the town camera uploading at the district")
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport={"width": 1280, "height": 720}, locale="zh-CN")
            ctx.add_init_script(f"sessionStorage.setItem('vms.token', {duty!r});")
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{district.url}/web/#/wall?grid=1&cams={CAM}&cycle=0")
            page.locator(f".tile[data-device='{CAM}'][data-status=playing]").wait_for(timeout=40_000)
            a = page.evaluate("vmsWall.stats()")[0]
            page.wait_for_timeout(3000)
            b = page.evaluate("vmsWall.stats()")[0]
            # The camera view at the district shows what the town recorded, to be pulled from there.
            admin = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
            admin.add_init_script(f"sessionStorage.setItem('vms.token', {district.tokens['admin']!r});")
            page = admin.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{district.url}/web/#/camera/{CAM}")
            page.wait_for_selector(".recordings[data-recordings=ready] rect.rec-elsewhere", timeout=30_000)
            summary = page.inner_text(".rec-summary")
            browser.close()
    assert TOWN in summary, summary
    assert (b["width"], b["height"]) == (640, 360), b
    assert b["frames"] >= a["frames"] + 40, (a, b)  # 25 fps: moving pictures, not a still
    assert not errors, errors
