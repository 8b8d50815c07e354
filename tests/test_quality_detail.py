"""What the hub keeps of the analysis: each defect's metric, the camera's normal and the threshold in
its event and its alert; each camera's normal across hub restarts. Real hubs, real SQLite, real
analysis workers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import Clock, hub_config, wait_until
from vms import auth
from vms.analysis.config import Thresholds
from vms.analysis.sampler import Event, Report
from vms.api import create_app
from vms.auth import Principal
from vms.config import HubConfig
from vms.db.models import Alert, QualityEvent
from vms.hub import Hub
from vms.kernel.protocol import CameraStats, Heartbeat
from vms.services.quality import NORMAL_FILE

DEV = "32058501001320000001"
PREFIX = "32058501"
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64 + b"\xff\xd9"


def _online(hub: Hub, clock: Clock, who: Principal, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1)
        cam = CameraStats(device_id=DEV, connected=True, last_packet_age_s=0.0, fps=25.0, bitrate_bps=2e6)
        hub.heartbeats.heartbeat(who, Heartbeat(sent_at=clock(), cameras=[cam]))
        hub.monitor.tick()


async def test_a_raised_check_carries_metric_normal_and_threshold_to_event_alert_and_api(
    tmp_path: Path, clock: Clock
) -> None:
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data"))
    hub = Hub(cfg, clock=clock)
    duty, _ = auth.create(hub.sessions, "duty", "duty")
    _, who = auth.create(hub.sessions, "agent", "agent-a", [PREFIX])
    hub.heartbeats.register(who, 1, "test", "host")
    _online(hub, clock, who, 8)
    assert hub.health.state_of(hub.health.index[DEV]) == "online"

    at = clock() - 1
    figures = {"value": 812.5, "normal": 2410.0, "threshold": 1205.0}  # a blur score far under this camera's own
    hub.quality.on_report(Report(DEV, None, at, events=[Event("blur", True, at, snapshot=JPEG, **figures)],
                                 raised={"blur": at}))
    _online(hub, clock, who, 2)
    assert hub.health.state_of(hub.health.index[DEV]) == "degraded"

    with hub.sessions() as s:
        (ev,) = s.scalars(select(QualityEvent).where(QualityEvent.device_id == DEV)).all()
        (alert,) = s.scalars(select(Alert).where(Alert.kind == "device_degraded")).all()
    assert (ev.check, ev.state, ev.value) == ("blur", "raised", figures["value"])
    assert ev.detail == {"normal": figures["normal"], "threshold": figures["threshold"]}
    assert alert.detail["checks"] == {"blur": figures}
    assert alert.detail["quality"] == {"blur": figures["value"]}
    assert alert.detail["snapshot_url"].endswith(f"/quality/events/{ev.id}/snapshot")

    app = create_app(hub, run_threads=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers={"Authorization": f"Bearer {duty}"}) as c:
        r = await c.get("/api/v1/alerts", params={"kind": "device_degraded"})
        assert r.status_code == 200, r.text
        (shown,) = r.json()["alerts"]
        assert shown["detail"]["checks"]["blur"] == figures
        r = await c.get(f"/api/v1/devices/{DEV}/quality")
        assert r.status_code == 200, r.text
        q = r.json()
        (defect,) = q["defects"]
        assert {k: defect[k] for k in figures} == figures
        (event,) = q["events"]
        assert event["value"] == figures["value"]
        assert event["detail"] == {"normal": figures["normal"], "threshold": figures["threshold"]}

    # An absolute guard has a threshold and no normal; a cleared check keeps its figures too.
    hub.quality.apply(DEV, Event("blur", False, clock(), 2300.0, normal=2400.0, threshold=1200.0))
    hub.quality.apply(DEV, Event("black_screen", True, clock(), 12.0, normal=None, threshold=24.0))
    with hub.sessions() as s:
        details = {(r.check, r.state): r.detail for r in s.scalars(select(QualityEvent))}
    assert details[("blur", "cleared")] == {"normal": 2400.0, "threshold": 1200.0}
    assert details[("black_screen", "raised")] == {"normal": None, "threshold": 24.0}
    hub.stop()

    # A restarted hub restores the raised check with its figures: the next alert still carries them.
    again = Hub(cfg, clock=clock)
    again.quality.start()
    try:
        assert again.quality.alert_detail(DEV)["checks"] == {
            "black_screen": {"value": 12.0, "normal": None, "threshold": 24.0}
        }
    finally:
        again.quality.stop()
        again.stop()


def _luma_samples(normal: tuple[tuple[str, int, float], ...]) -> int:
    return {m: n for m, n, _ in normal}["luma"]


def test_a_restarted_hub_goes_on_from_each_cameras_normal(tmp_path: Path, black_segments: list[bytes]) -> None:
    """Four clean one-keyframe segments, a restart, one more: the camera's normal has five samples
    (four kept on disk, one new), not one as if the camera were new."""
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", analysis={"workers": 1}))
    who = Principal("t", "agent-1", auth.Role.agent, (PREFIX,))
    base = time.time() - 60

    def store(hub: Hub, k: int) -> None:
        data = black_segments[k]
        out = hub.ingest.store(who.name, DEV, base + 2 * k, 2.0, data, hashlib.sha256(data).hexdigest(), None)
        assert out.result.name == "STORED"

    def analysed(hub: Hub, n: int) -> None:
        pool = hub.quality.pool
        assert pool is not None
        wait_until(lambda: pool.stats.analysed >= n, 90, f"{n} segment(s) analysed")
        assert pool.stats.dropped == 0 and pool.stats.failed == 0

    hub = Hub(cfg)
    hub.registry.add_device(DEV)
    hub.start()
    try:
        for k in range(4):  # clean: the street before it goes black at 8 s
            store(hub, k)
            analysed(hub, k + 1)  # one at a time: a segment never finds the queue full
        before = hub.quality.normals[DEV]
        assert _luma_samples(before) == 4
    finally:
        hub.stop()
    saved = json.loads((cfg.storage.data_dir / NORMAL_FILE).read_text())
    assert {m: tuple(v) for m, v in saved[DEV].items()} == {m: (n, v) for m, n, v in before}

    hub = Hub(cfg)
    hub.start()
    try:
        assert hub.quality.normals[DEV] == before  # loaded at start, before any segment
        store(hub, 12)  # clean again (after the black part)
        analysed(hub, 1)
        assert _luma_samples(hub.quality.normals[DEV]) == 5
    finally:
        hub.stop()

    # Without the file the same segment starts a new normal: what the kept one spares.
    (cfg.storage.data_dir / NORMAL_FILE).unlink()
    hub = Hub(cfg)
    hub.start()
    try:
        assert DEV not in hub.quality.normals
        store(hub, 11)
        analysed(hub, 1)
        assert _luma_samples(hub.quality.normals[DEV]) == 1
    finally:
        hub.stop()


def test_an_unreadable_normals_file_means_learning_again_not_a_failed_start(tmp_path: Path) -> None:
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data"))
    cfg.storage.data_dir.mkdir(parents=True)
    path = cfg.storage.data_dir / NORMAL_FILE
    kept = {DEV: {"luma": [12, 96.5], "blur": [3, "x"], "bogus": [1, 2.0], "noise": [0, 1.0]}, "junk": [1, 2]}

    def loaded() -> dict[str, Any]:
        hub = Hub(cfg)
        hub.quality.start()
        try:
            return dict(hub.quality.normals)
        finally:
            hub.quality.stop()
            hub.stop()

    path.write_text(json.dumps(kept)[:40])  # cut short (a disk that filled up)
    assert loaded() == {}
    path.write_text(json.dumps(kept))
    assert loaded() == {DEV: (("luma", 12, 96.5),)}  # only what an analyser can use


def test_the_alert_of_a_real_black_screen_shows_its_luma_and_threshold(
    make_hub_process: Any, black_segments: list[bytes]
) -> None:
    """Through a hub process and HTTP: the analysis worker's threshold reaches the alert, and the
    normals are on disk after the hub stops."""
    hp = make_hub_process(analysis={"workers": 1})
    agent = {"Authorization": f"Bearer {hp.token('agent', PREFIX, name='agent-1')}"}
    duty = {"Authorization": f"Bearer {hp.token('duty')}"}
    hp.start()
    base = time.time() - 18
    limit = Thresholds().black_max_luma
    with httpx.Client(base_url=hp.url, timeout=10, headers=duty) as c:
        for k in range(9):  # clean until 8 s, then black
            data = black_segments[k]
            r = c.put(f"/api/v1/agents/segments/{DEV}", params={"start": base + 2 * k, "duration": 2.0}, content=data,
                      headers={**agent, "X-VMS-SHA256": hashlib.sha256(data).hexdigest()})
            assert r.status_code == 201, r.text

        def degraded() -> list[dict[str, Any]]:
            return [a for a in c.get("/api/v1/alerts", params={"kind": "device_degraded"}).json()["alerts"]]

        (alert,) = wait_until(degraded, 90, "device_degraded alert", lambda: hp.log.read_text()[-3000:])
        fig = alert["detail"]["checks"]["black_screen"]
        assert fig["threshold"] == pytest.approx(limit)
        assert fig["value"] is not None and fig["value"] <= limit
        assert fig["normal"] is None  # black is an absolute guard: no camera is normally black
        event = c.get(f"/api/v1/devices/{DEV}/quality").json()["events"][0]
        assert event["detail"]["threshold"] == pytest.approx(limit)
    hp.stop()
    normals = json.loads((hp.config.parent / "data" / NORMAL_FILE).read_text())
    assert {m: n for m, (n, _) in normals[DEV].items()}["luma"] >= 1


def test_normals_are_written_while_the_hub_runs_so_a_crash_loses_at_most_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vms.services import quality

    cfg = HubConfig.model_validate(hub_config(tmp_path / "data"))
    hub = Hub(cfg)
    hub.quality.start()
    path = cfg.storage.data_dir / NORMAL_FILE
    try:
        first = (("luma", 7, 101.25), ("blur", 7, 2400.0))
        hub.quality.on_report(Report(DEV, None, time.time(), normal=first))
        assert not path.exists()  # within the interval: kept in memory only
        monkeypatch.setattr(quality, "_NORMAL_SAVE_S", 0.0)
        second = (("luma", 8, 101.5), ("blur", 8, 2399.0), ("unknown_metric", 8, 1.0))
        hub.quality.on_report(Report(DEV, None, time.time(), normal=second))
        assert json.loads(path.read_text()) == {DEV: {"luma": [8, 101.5], "blur": [8, 2399.0]}}
        assert hub.quality.normals == {DEV: second[:2]}  # one normal per camera, the newest
        assert not path.with_name(NORMAL_FILE + ".tmp").exists()
    finally:
        hub.quality.stop()
        hub.stop()
