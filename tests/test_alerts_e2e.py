"""End to end over loopback: a real hub process, an agent speaking HTTP, a real webhook receiver."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, WebhookSink

CAM = "32058501001320000001"
OTHER = "32058501001320000002"


class Agent:
    """Heartbeats every second like an edge agent; a camera can be made to stop sending."""

    def __init__(self, hub: HubProcess, token: str, cams: list[str]) -> None:
        self.hub, self.token, self.cams = hub, token, cams
        self.dark: dict[str, float] = {}
        self.stop_evt = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=3) as c:
            while not self.stop_evt.is_set():
                now = time.time()
                cams = [{"device_id": d, "connected": d not in self.dark,
                         "last_packet_age_s": (now - self.dark[d]) if d in self.dark else 0.04, "fps": 25}
                        for d in self.cams]
                with contextlib.suppress(httpx.HTTPError):  # hub down: a real agent keeps trying too
                    c.post(f"{self.hub.url}/api/v1/agents/heartbeat", json={"sent_at": now, "cameras": cams})
                self.stop_evt.wait(1)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_evt.set()
        self.thread.join(5)


def wait(pred: Any, timeout: float, step: float = 0.2) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def state(hub: HubProcess, device: str) -> str:
    r = httpx.get(f"{hub.url}/api/v1/devices/{device}", headers={"Authorization": f"Bearer {hub.tokens['duty']}"})
    return str(r.json()["state"]) if r.status_code == 200 else "absent"


def alerts(hub: HubProcess) -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/api/v1/alerts", headers={"Authorization": f"Bearer {hub.tokens['duty']}"})
    return list(r.json()["alerts"])


@pytest.fixture
def receiver() -> Iterator[WebhookSink]:
    sink = WebhookSink().start()
    yield sink
    sink.stop()


def test_dark_camera_flagged_within_10s_one_alert_webhook_and_resolve(make_hub_process: Any,
                                                                      receiver: WebhookSink) -> None:
    hub: HubProcess = make_hub_process(
        alerts={"receivers": [{"name": "crew", "kind": "webhook", "url": receiver.url}]})
    hub.token("duty")
    tok = hub.token("agent", "32058501", name="edge-1")
    hub.start()
    with Agent(hub, tok, [CAM, OTHER]) as agent:
        wait(lambda: state(hub, CAM) == "online" and state(hub, OTHER) == "online", 15)
        agent.dark[CAM] = time.time()
        took = wait(lambda: state(hub, CAM) == "offline", 10)
        assert took < 10
        receiver.wait_for(1)
        assert receiver.events() == [("firing", "device_offline")]
        assert receiver.received[0]["alerts"][0]["labels"]["device_id"] == CAM
        time.sleep(3)
        active = [a for a in alerts(hub) if a["state"] != "resolved"]
        assert [(a["kind"], a["device_id"]) for a in active] == [("device_offline", CAM)]
        assert state(hub, OTHER) == "online"
        del agent.dark[CAM]
        wait(lambda: all(a["state"] == "resolved" for a in alerts(hub)), 20)
        receiver.wait_for(2)
        assert receiver.events() == [("firing", "device_offline"), ("resolved", "device_offline")]


def test_hub_killed_and_restarted_loses_no_delivery(make_hub_process: Any, receiver: WebhookSink) -> None:
    hub: HubProcess = make_hub_process(
        alerts={"receivers": [{"name": "crew", "kind": "webhook", "url": receiver.url}],
                "retry_initial_s": 0.5, "retry_max_s": 2})
    hub.token("duty")
    tok = hub.token("agent", "32058501", name="edge-1")
    receiver.fail = True  # the crew's endpoint is down when the camera fails
    hub.start()
    with Agent(hub, tok, [CAM]) as agent:
        wait(lambda: state(hub, CAM) == "online", 15)
        agent.dark[CAM] = time.time()
        wait(lambda: state(hub, CAM) == "offline", 10)
        time.sleep(1.5)  # the outbox has tried and failed at least once
        hub.kill()  # SIGKILL: no clean shutdown
        receiver.fail = False
        hub.start()
        receiver.wait_for(1, timeout=20)
        assert receiver.events() == [("firing", "device_offline")]
        # After the restart the camera is still dark: no duplicate alert, and recovery resolves it.
        time.sleep(8)
        assert len([a for a in alerts(hub) if a["state"] != "resolved"]) == 1
        del agent.dark[CAM]
        receiver.wait_for(2, timeout=25)
        assert receiver.events() == [("firing", "device_offline"), ("resolved", "device_offline")]
