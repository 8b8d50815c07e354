"""The hub's health model, history and alerts, driven by a hand-moved clock over a real store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Clock, WebhookSink, hub_config
from vms import auth
from vms.auth import Principal
from vms.config import HubConfig
from vms.hub import Hub
from vms.kernel.protocol import CameraStats, Heartbeat
from vms.services.heartbeats import HeartbeatRejected

CAM = "32058501001320000001"
TOWN_A = "32058501"


def make_hub(tmp_path: Path, clock: Clock, database_url: str | None = None, **sections: Any) -> Hub:
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", database_url, **sections))
    return Hub(cfg, clock=clock)


def agent(hub: Hub, name: str = "agent-a", *prefixes: str) -> Principal:
    _, p = auth.create(hub.sessions, "agent", name, list(prefixes or (TOWN_A,)))
    hub.heartbeats.register(p, 1, "test", "host")
    return p


def beat(hub: Hub, who: Principal, cams: list[str], age: float = 0.0, fps: float = 25.0, **kw: Any) -> Any:
    stats = [CameraStats(device_id=c, connected=True, last_packet_age_s=age, fps=fps, bitrate_bps=2e6) for c in cams]
    return hub.heartbeats.heartbeat(who, Heartbeat(sent_at=hub.clock() - kw.get("skew", 0.0), cameras=stats))


def run(hub: Hub, clock: Clock, seconds: int, who: Principal | None = None, cams: list[str] | None = None) -> None:
    """Advance one second at a time, ticking; with ``who``/``cams``, heartbeat each second first."""
    for _ in range(seconds):
        clock.advance(1)
        if who is not None and cams:
            beat(hub, who, cams)
        hub.monitor.tick()


def alerts(hub: Hub) -> list[Any]:
    from sqlalchemy import select

    from vms.db.models import Alert

    with hub.sessions() as s:
        return list(s.scalars(select(Alert).order_by(Alert.id)))


def test_silent_camera_is_flagged_within_10s_once_and_resolves(tmp_path: Path, clock: Clock,
                                                               database_url: str | None) -> None:
    hub = make_hub(tmp_path, clock, database_url)
    a = agent(hub)
    run(hub, clock, 10, a, [CAM])
    assert hub.health.state_of(0) == "online"
    stopped = clock.t
    for _ in range(10):
        run(hub, clock, 1)
        beat_age = clock.t - stopped  # the agent still heartbeats, reporting the growing packet age
        beat(hub, a, [CAM], age=beat_age)
        if hub.health.state_of(0) == "offline":
            break
    assert hub.health.state_of(0) == "offline"
    assert clock.t - stopped <= 10
    rows = alerts(hub)
    assert [(r.kind, r.state, r.device_id) for r in rows] == [("device_offline", "open", CAM)]
    assert rows[0].since_at == pytest.approx(stopped)
    run(hub, clock, 30)  # still dark: no second alert
    assert len(alerts(hub)) == 1
    run(hub, clock, 15, a, [CAM])
    assert hub.health.state_of(0) == "online"
    rows = alerts(hub)
    assert [(r.kind, r.state, r.resolved_by) for r in rows] == [("device_offline", "resolved", "system")]
    hub.stop()


def test_missed_heartbeat_and_a_blip_do_not_flap(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    a = agent(hub)
    run(hub, clock, 10, a, [CAM])
    for _ in range(20):  # heartbeats only every 4 s (one of two lost), packets flowing
        run(hub, clock, 4)
        beat(hub, a, [CAM], age=0.5)
    assert hub.health.state_of(0) == "online"
    # Signal back for a single heartbeat after an outage is not enough to count as online.
    run(hub, clock, 20)
    assert hub.health.state_of(0) == "offline"
    beat(hub, a, [CAM])
    run(hub, clock, 1)
    assert hub.health.state_of(0) == "offline"
    run(hub, clock, 10)
    assert hub.health.state_of(0) == "offline"
    assert len(alerts(hub)) == 1
    hub.stop()


def test_thirty_day_uptime_with_known_outages_is_exact(tmp_path: Path, clock: Clock, database_url: str | None) -> None:
    hub = make_hub(tmp_path, clock, database_url)
    a = agent(hub)
    t0 = clock.t
    beat(hub, a, [CAM])
    hub.monitor.tick()
    run(hub, clock, 3, a, [CAM])  # steady: online since t0
    outages = [(2 * 86400 + 0.0, 3600.0), (9 * 86400 + 500.0, 7200.0), (20 * 86400 + 77.0, 1800.0)]
    for start, length in outages:
        # online up to the outage: a heartbeat right before the tick keeps it fresh across the jump
        clock.t = t0 + start
        beat(hub, a, [CAM])
        hub.monitor.tick()
        run(hub, clock, 8)  # silence: goes offline at the last packet, t0 + start
        clock.t = t0 + start + length
        hub.monitor.tick()
        beat(hub, a, [CAM])  # signal back at exactly start + length
        run(hub, clock, 4, a, [CAM])
    clock.t = t0 + 30 * 86400
    beat(hub, a, [CAM])
    hub.monitor.tick()
    down = sum(length for _, length in outages)
    av = hub.monitor.availability(t0, t0 + 30 * 86400)
    fig = hub.monitor.device_figures(av, 0)
    assert fig["monitored_s"] == pytest.approx(30 * 86400)
    assert fig["online_s"] == pytest.approx(30 * 86400 - down, abs=1e-6)
    assert fig["online_rate"] == pytest.approx(1 - down / (30 * 86400), abs=1e-12)
    hub.stop()
    # The same figure from the store after a restart (history read back, not kept in memory only).
    again = make_hub(tmp_path, clock, database_url)
    fig2 = again.monitor.device_figures(again.monitor.availability(t0, t0 + 30 * 86400), 0)
    assert fig2["online_s"] == pytest.approx(30 * 86400 - down, abs=1e-6)
    # A window inside one outage and one with no outage.
    av3 = again.monitor.availability(t0 + 2 * 86400 + 600, t0 + 2 * 86400 + 1200)
    assert again.monitor.device_figures(av3, 0)["online_s"] == pytest.approx(0)
    av4 = again.monitor.availability(t0 + 3 * 86400, t0 + 4 * 86400)
    assert again.monitor.device_figures(av4, 0)["online_rate"] == pytest.approx(1.0)
    again.stop()


def test_restart_gap_counts_as_unknown_not_up(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    a = agent(hub)
    t0 = clock.t
    run(hub, clock, 100, a, [CAM])
    online_from = t0 + 1  # first heartbeat
    hub.stop()
    down_at = clock.t
    clock.advance(600)  # hub down for ten minutes
    hub2 = make_hub(tmp_path, clock)
    a2 = Principal(a.token_id, a.name, a.role, a.prefixes)
    run(hub2, clock, 100, a2, [CAM])
    fig = hub2.monitor.device_figures(hub2.monitor.availability(t0, clock.t), 0)
    # Monitored from the device's first report; the ten minutes plus the second before the first heartbeat
    # after the restart are unknown, and unknown time does not count as up.
    assert fig["monitored_s"] == pytest.approx(clock.t - online_from)
    assert fig["unknown_s"] == pytest.approx(600 + 1)
    assert fig["online_s"] == pytest.approx((down_at - online_from) + (clock.t - (down_at + 600 + 1)))
    hub2.stop()


def opened_logged(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """(level, kind) of each "alert opened" log line."""
    return [(r.levelno, r.getMessage().split("(")[1].split(")")[0]) for r in caplog.records
            if r.getMessage().startswith("alert opened (")]


def test_agent_going_dark_raises_one_grouped_alert(
    tmp_path: Path, clock: Clock, webhook: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vms.services.alerting")
    hub = make_hub(tmp_path, clock, alerts={"receivers": [{"name": "crew", "kind": "webhook", "url": webhook.url}]})
    a = agent(hub)
    cams = [f"3205850100132{n:07d}" for n in range(1, 21)]
    run(hub, clock, 6, a, cams)
    run(hub, clock, 10)  # the agent itself goes silent
    rows = alerts(hub)
    assert [(r.kind, r.agent_id, len(r.members)) for r in rows] == [("agent_offline", "agent-a", 20)]
    # The agent comes back but one camera stays dark: the group resolves, that camera keeps an alert.
    run(hub, clock, 12, a, cams[1:])
    rows = alerts(hub)
    assert [(r.kind, r.state) for r in rows] == [("agent_offline", "resolved"), ("device_offline", "open")]
    assert rows[1].device_id == cams[0] and rows[1].since_at == rows[0].since_at
    hub.outbox.drain(clock.t)
    assert webhook.events() == [("firing", "agent_offline"), ("resolved", "agent_offline"),
                                ("firing", "device_offline")]
    # Logged once each as a matter for the crew (critical: a warning), not as an error of the hub.
    assert opened_logged(caplog) == [(logging.WARNING, "agent_offline"), (logging.WARNING, "device_offline")]
    hub.stop()


def test_many_cameras_of_one_center_going_dark_is_one_site_alert(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    a = agent(hub, "agent-a", "320585")
    town_a = [f"3205850100132{n:07d}" for n in range(1, 7)]
    town_b = ["32058502001320000001"]
    run(hub, clock, 6, a, town_a + town_b)
    run(hub, clock, 10, a, town_b)  # agent alive, six cameras of chengxiang dark at once
    rows = alerts(hub)
    assert [(r.kind, r.center_id, len(r.members)) for r in rows] == [("site_offline", "chengxiang", 6)]
    hub.stop()


def test_low_frame_rate_degrades_and_opens_alert(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vms.services.alerting")
    hub = make_hub(tmp_path, clock)
    a = agent(hub)
    run(hub, clock, 6, a, [CAM])
    for _ in range(3):
        clock.advance(1)
        beat(hub, a, [CAM], fps=1.0)
        hub.monitor.tick()
    assert hub.health.state_of(0) == "degraded"
    rows = alerts(hub)
    assert [(r.kind, r.state) for r in rows] == [("device_degraded", "open")]
    assert "low_fps" in rows[0].title
    assert opened_logged(caplog) == [(logging.INFO, "device_degraded")]  # a warning-severity alert: info
    run(hub, clock, 10, a, [CAM])
    assert [(r.kind, r.state) for r in alerts(hub)] == [("device_degraded", "resolved")]
    fig = hub.monitor.device_figures(hub.monitor.availability(clock.t - 19, clock.t), 0)
    assert fig["online_rate"] == pytest.approx(1.0)
    assert fig["intact_rate"] == pytest.approx(16 / 19, abs=0.06)
    hub.stop()


def test_agent_claims_outside_prefix_duplicates_and_skew(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    a = agent(hub, "agent-a", TOWN_A)
    b = agent(hub, "agent-b", "320585")
    reply = beat(hub, a, [CAM, "32058502001320000001", CAM])
    assert reply.accepted == 1
    reasons = {r.device_id: r.reason for r in reply.rejected}
    assert "outside this agent's prefixes" in reasons["32058502001320000001"]
    assert "twice" in reasons[CAM]
    dup = beat(hub, b, [CAM])
    assert dup.accepted == 0 and "already reported by live agent 'agent-a'" in dup.rejected[0].reason
    skewed = beat(hub, a, [CAM], skew=3600)
    assert skewed.accepted == 1 and skewed.warning and "off by +3600" in skewed.warning
    assert skewed.clock_skew_s == pytest.approx(3600)
    # A skewed clock does not change freshness: packet ages are measured on the agent.
    run(hub, clock, 6)
    with pytest.raises(HeartbeatRejected, match="protocol 2"):
        hub.heartbeats.heartbeat(a, Heartbeat(protocol=2, sent_at=clock.t))
    hub.stop()


def test_outbox_retries_in_order_and_survives_restart(tmp_path: Path, clock: Clock, webhook: WebhookSink) -> None:
    receivers = {"receivers": [{"name": "crew", "kind": "webhook", "url": webhook.url}], "retry_initial_s": 1}
    hub = make_hub(tmp_path, clock, alerts=receivers)
    a = agent(hub)
    webhook.fail = True
    run(hub, clock, 6, a, [CAM])
    run(hub, clock, 10)  # offline: firing queued
    run(hub, clock, 12, a, [CAM])  # back: resolved queued
    for _ in range(3):
        hub.outbox.drain(clock.advance(400))
    assert webhook.received == []
    hub.stop()
    webhook.fail = False
    hub2 = make_hub(tmp_path, clock, alerts=receivers)
    hub2.outbox.drain(clock.advance(400))
    assert webhook.events() == [("firing", "agent_offline"), ("resolved", "agent_offline")]
    first = webhook.received[0]
    assert first["version"] == "4" and first["alerts"][0]["labels"]["agent_id"] == "agent-a"
    assert first["alerts"][0]["startsAt"].endswith("Z") and first["alerts"][0]["endsAt"].startswith("0001")
    assert webhook.received[1]["alerts"][0]["endsAt"] > first["alerts"][0]["startsAt"]
    hub2.stop()


def test_acknowledge_and_resolve_by_hand(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    a = agent(hub)
    _, crew = auth.create(hub.sessions, "maintenance", "wang")
    run(hub, clock, 6, a, [CAM])
    run(hub, clock, 10)
    (row,) = alerts(hub)
    hub.alerts.acknowledge(row.id, crew, "on my way")
    with pytest.raises(ValueError, match="only open alerts"):
        hub.alerts.acknowledge(row.id, crew, "again")
    hub.monitor.resolve_by_hand(row.id, crew, "camera replaced, will come back later")
    run(hub, clock, 30)  # still dark: silenced, no new alert
    assert [(r.state, r.acknowledged_by, r.resolved_by) for r in alerts(hub)] == [("resolved", "wang", "wang")]
    run(hub, clock, 12, a, [CAM])
    run(hub, clock, 10)  # back, then dark again: a new alert
    assert [r.state for r in alerts(hub)] == ["resolved", "open"]
    hub.stop()


def test_configured_camera_that_never_reports_goes_offline_after_start_up_grace(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock, devices=[{"id": CAM, "name": "gate"}])
    run(hub, clock, 14)  # agents get 15 s after a hub start before silence counts
    assert hub.health.state_of(0) == "unknown" and alerts(hub) == []
    run(hub, clock, 2)
    assert hub.health.state_of(0) == "offline"
    assert [(r.kind, r.title) for r in alerts(hub)] == [("device_offline", f"gate ({CAM}) offline")]
    hub.stop()


def test_apprise_receiver_delivers_to_a_real_endpoint(tmp_path: Path, clock: Clock, webhook: WebhookSink) -> None:
    """The channels crews read (DingTalk, WeCom, e-mail ...) go through apprise; its json:// plugin
    posts to our loopback receiver, so the whole apprise path runs for real."""
    url = webhook.url.replace("http://", "json://")
    hub = make_hub(tmp_path, clock, alerts={"receivers": [{"name": "crew-chat", "kind": "apprise", "urls": [url]}]})
    a = agent(hub)
    run(hub, clock, 6, a, [CAM])
    run(hub, clock, 10)
    assert hub.outbox.drain(clock.t) == 1
    (msg,) = webhook.received
    assert msg["title"].startswith("[FIRING]") and "agent agent-a silent" in msg["title"]
    assert CAM in msg["message"]
    hub.stop()


def test_report_cli_reads_beside_a_running_hub(tmp_path: Path, clock: Clock) -> None:
    import csv
    import io
    import json

    from tests.conftest import vms_cli, write_config

    hub = make_hub(tmp_path, clock)
    a = agent(hub)
    run(hub, clock, 6, a, [CAM, "32058501001320000002"])
    run(hub, clock, 20, a, [CAM])
    cfg = write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "data"))
    out = vms_cli("report", "--config", str(cfg), "--from", str(clock.t - 26), "--to", str(clock.t),
                  "--format", "json")
    rep = json.loads(out.stdout)
    rows = {d["device_id"]: d for d in rep["devices"]}
    assert rows[CAM]["online_rate"] == pytest.approx(1.0)
    assert rows["32058501001320000002"]["state"] == "offline"
    assert rep["devices"][0]["device_id"] == "32058501001320000002"  # worst first
    text = vms_cli("report", "--config", str(cfg), "--period", "1h", "--center", "chengxiang").stdout
    assert list(csv.reader(io.StringIO(text)))[1][0] == "chengxiang"
    bad = vms_cli("report", "--config", str(cfg), "--center", "nowhere", check=False)
    assert bad.returncode == 2 and "unknown center 'nowhere'" in bad.stderr
    hub.stop()
