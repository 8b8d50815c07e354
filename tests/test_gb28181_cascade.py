"""Cascade between two of our hubs over real SIP: a town center registers with the district center.

The district accepts the town as a lower platform, reads its catalog (the town's cameras join the
district's tree) and subscribes to it; a camera going dark at the town is offline at the district
within 10 s, told by NOTIFY. Both are real ``vms serve`` processes on loopback; an agent speaking
HTTP makes the town's camera online and then dark.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, free_port, wait_until
from tests.test_alerts_e2e import Agent

DISTRICT = "32058500002000000001"
TOWN = "32058501002000000001"
PASSWORD = "town-to-district"
CAM = "32058501001320000001"


def district_and_town(make_hub_process: Any, **link: Any) -> tuple[HubProcess, HubProcess]:
    """A district hub that takes lower platforms, and a town hub (one camera) registering with it
    with ``link`` settings; both started."""
    district_sip = free_port()
    district: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": DISTRICT, "host": "127.0.0.1", "port": district_sip,
                 "passwords": {TOWN: PASSWORD}, "auto_accept": True, "record": False,
                 "keepalive_interval_s": 5, "keepalive_misses": 2})
    town: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": TOWN, "host": "127.0.0.1", "port": free_port(), "record": False},
        devices=[{"id": CAM, "name": "南门 1", "location": "城厢镇 南门"}],
        superiors=[{"name": "district", "server_id": DISTRICT, "host": "127.0.0.1", "port": district_sip,
                    "password": PASSWORD, "share": ["chengxiang"], **link}])
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
