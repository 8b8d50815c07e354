"""Retention, legal holds, repair, accounting and emergency cleanup on a real store and a real disk.

The hub runs in-process with a hand-moved clock (no threads); the full-disk case uses a real,
small tmpfs so that free space and ENOSPC are the kernel's, not a mock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from tests.conftest import Clock, hub_config
from tests.rtsp_fixture import make_clip
from vms.api.events import render_change
from vms.api.status import error_status
from vms.archive.clip import ClipError, build_clip, plan_clip
from vms.auth import Principal, Role
from vms.config import HubConfig
from vms.db.models import Alert, Delivery, Segment
from vms.hub import Hub
from vms.metrics import registry_for, render

CAM = "32058501001320000001"
CAM2 = "32058502001320000001"  # another town
DAY = 86400.0
POLICE = Principal("t1", "officer-li", Role.police, ())


def make_hub(tmp_path: Path, clock: Clock, db_dir: Path | None = None, **sections: Any) -> Hub:
    url = f"sqlite:///{(db_dir or tmp_path) / 'vms.db'}" if db_dir else None
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", url, **sections))
    hub = Hub(cfg, clock=clock)
    for d in (CAM, CAM2):
        hub.registry.add_device(d)
    return hub


def put(hub: Hub, device: str, start: float, size: int = 2000, dur: float = 4.0, data: bytes | None = None) -> None:
    data = os.urandom(size) if data is None else data
    out = hub.segments.ingest(device, start, dur, data, hashlib.sha256(data).hexdigest(), "agent", start + dur)
    assert out.result.name == "STORED", out.message


def rows(hub: Hub, device: str = CAM) -> list[tuple[float, str]]:
    with hub.sessions() as s:
        return list(
            s.execute(
                select(Segment.start_at, Segment.path).where(Segment.device_id == device).order_by(Segment.start_at)
            )
        )


def files(hub: Hub, device: str = CAM) -> set[str]:
    d = hub.segments.root / device
    return {str(p.relative_to(hub.segments.root)) for p in d.rglob("*") if p.is_file()} if d.exists() else set()


NO_EMERGENCY = {"emergency_free_bytes": 0, "emergency_target_free_bytes": 0}


def test_legal_hold_survives_a_pass_that_deletes_everything_around_it(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock, archive={"min_free_bytes": 0}, retention=NO_EMERGENCY)
    t0 = clock.t
    for i in range(30):  # two minutes of footage
        put(hub, CAM, t0 + 4 * i)
        put(hub, CAM2, t0 + 4 * i)
    held = (t0 + 40, t0 + 52)  # overlaps segments at 40, 44, 48
    hub.archive.add_hold(POLICE, CAM, *held, "2026-0042", "robbery")
    clock.advance(31 * DAY)
    rep = hub.archive.run_pass()
    assert rep.by_reason == {"age": 57} and rep.held_skipped == 3
    kept = rows(hub)
    assert [a - t0 for a, _ in kept] == [40, 44, 48]
    assert files(hub) == {p for _, p in kept}  # index and disk agree
    assert rows(hub, CAM2) == []
    # Released: the next pass deletes it.
    with hub.sessions() as s:
        from vms.db.models import LegalHold

        hold_id = s.scalars(select(LegalHold.id)).one()
    hub.archive.release_hold(POLICE, hold_id, "case closed")
    assert hub.archive.run_pass().by_reason == {"age": 3}
    assert rows(hub) == [] and files(hub) == set()


def test_keep_days_per_center_and_device_and_quota(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(
        tmp_path,
        clock,
        archive={"min_free_bytes": 0},
        retention={
            **NO_EMERGENCY,
            "centers": {"shaxi": {"keep_days": 90}},
            "devices": {CAM: {"keep_days": 40, "quota_bytes": 10_000}},
        },
    )
    t0 = clock.t
    for i in range(10):
        put(hub, CAM, t0 + 4 * i, size=2000)
        put(hub, CAM2, t0 + 4 * i, size=2000)
    rep = hub.archive.run_pass()
    assert rep.by_reason == {"device_quota": 5}  # 20000 bytes, quota 10000: the oldest five go
    assert [a - t0 for a, _ in rows(hub)] == [20, 24, 28, 32, 36]
    clock.advance(41 * DAY)
    assert hub.archive.run_pass().by_reason == {"age": 5}
    assert len(rows(hub, CAM2)) == 10  # its town keeps 90 days
    assert hub.archive.policy_of(CAM2)[1] == "center:shaxi"


def test_under_30_days_needs_an_override_and_shows_non_compliant(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(ValidationError, match="under the 30 days"):
        HubConfig.model_validate(hub_config(tmp_path, retention={"default": {"keep_days": 7}}))
    hub = make_hub(
        tmp_path,
        clock,
        archive={"min_free_bytes": 0},
        retention={**NO_EMERGENCY, "devices": {CAM2: {"keep_days": 7, "below_30_days_allowed": True}}},
    )
    t0 = clock.t
    for i in range(3):
        put(hub, CAM, t0 + 4 * i)
        put(hub, CAM2, t0 + 4 * i)
    clock.advance(31 * DAY)
    for i in range(3):  # CAM recorded all month
        put(hub, CAM, clock.t - 4 * (i + 1))
    hub.archive.run_pass()
    rep = hub.archive.compliance("taicang", clock.t)["centers"][0]
    by = {r["device_id"]: r for r in rep["device_rows"]}
    assert by[CAM2]["status"] == "policy_below_30_days" and not by[CAM2]["meets_retention"]
    assert by[CAM]["status"] == "short"  # its oldest footage (31 days ago) was just deleted at 30 days
    assert rep["devices"] == 2 and rep["meeting_retention"] == 0


def test_storage_accounting_and_gaps(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(
        tmp_path, clock, archive={"min_free_bytes": 0}, retention={**NO_EMERGENCY, "accounting_window_s": 3600}
    )
    t0 = clock.t
    for i in range(900):  # one hour in 4 s segments, with 10 minutes missing
        if not 300 <= i < 450:
            put(hub, CAM, t0 + 4 * i, size=1000)
    clock.advance(3600)
    view = hub.archive.device_storage(CAM, t0, t0 + 3600)
    assert view["bytes"] == 750 * 1000 and view["hours"] == pytest.approx(750 * 4 / 3600, abs=1e-3)
    assert view["completeness"] == pytest.approx(3000 / 3600)
    assert [(g["start"], g["seconds"]) for g in view["gaps"]] == [(view["gaps"][0]["start"], 600.0)]
    snap = hub.archive.refresh(clock.t)
    assert snap.completeness[CAM] == pytest.approx(3000 / 3600)
    assert snap.oldest_age_s[CAM] == pytest.approx(3600)
    assert snap.center_bytes["chengxiang"] == snap.center_bytes["taicang"] == 750_000
    assert snap.completeness[CAM2] == 0.0
    body = render(registry_for(hub))
    assert b'vms_storage_bytes{center="taicang"} 750000.0' in body


def test_startup_repair_makes_index_and_disk_agree(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock, archive={"min_free_bytes": 0}, retention=NO_EMERGENCY)
    for i in range(6):
        put(hub, CAM, clock.t + 4 * i)
    segs = rows(hub)
    root = hub.segments.root
    with hub.sessions() as s:  # a crash after marking a batch, before unlinking
        s.query(Segment).filter(Segment.path == segs[0][1]).update({"deleting": True})
        s.commit()
    (root / segs[1][1]).unlink()  # a row pointing at nothing
    orphan = root / CAM / "19700101" / "1-abcdefabcdef.ts"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")  # a file no row names
    (root / segs[2][1]).with_name("tmp.ts.part").write_bytes(b"half")  # an interrupted upload
    rep = hub.archive.startup()
    assert (rep.finished_deletions, rep.rows_without_file, rep.files_without_row) == (1, 1, 2)
    assert [p for _, p in rows(hub)] == [p for _, p in segs[2:]]
    assert files(hub) == {p for _, p in segs[2:]}


@pytest.fixture
def tmpfs(small_disk: Any) -> Path:
    """A 6 MB disk that really fills up."""
    return Path(small_disk("6m"))


def test_full_disk_emergency_cleanup_alert_and_holds_kept(tmpfs: Path, tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(
        tmpfs,
        clock,
        db_dir=tmp_path,
        archive={"min_free_bytes": 0},
        alerts={"receivers": [{"name": "crew", "kind": "webhook", "url": "http://127.0.0.1:9/alerts"}]},
        retention={"emergency_free_bytes": 1_500_000, "emergency_target_free_bytes": 2_500_000},
    )
    media = make_clip(tmp_path / "seg.ts", seconds=4, gop=25, bitrate=200_000).read_bytes()  # real H.264
    t0 = clock.t
    i = 0
    while hub.segments.free_bytes() > 600_000:  # fill the disk with fresh footage (well inside 30 days)
        put(hub, CAM, t0 + 4 * i, data=media)
        i += 1
    hub.archive.add_hold(POLICE, CAM, t0, t0 + 20, "2026-0099", "kept for court")  # the five oldest
    held = [(a, hashlib.sha256((hub.segments.root / p).read_bytes()).hexdigest()) for a, p in rows(hub) if a < t0 + 20]
    assert len(held) == 5
    rep = hub.archive.run_pass()
    assert rep.emergency and rep.by_reason.get("emergency", 0) > 0
    assert hub.segments.free_bytes() >= 2_500_000
    after = rows(hub)
    assert [a for a, _ in after[:5]] == [a for a, _ in held]  # no held footage lost...
    for (_a, p), (_, digest) in zip(after[:5], held, strict=True):
        assert hashlib.sha256((hub.segments.root / p).read_bytes()).hexdigest() == digest
    assert after[5][0] > t0 + 20 + 4 * (rep.by_reason["emergency"] - 1)  # ...and the oldest others went first
    with hub.sessions() as s:
        alert = s.scalars(select(Alert).where(Alert.kind == "storage_low")).one()
        assert alert.state == "open" and alert.severity == "critical"
        assert s.scalars(select(Delivery).where(Delivery.alert_id == alert.id)).one().payload["status"] == "firing"
    # Space is back: the next pass resolves the alert.
    assert not hub.archive.run_pass().emergency
    with hub.sessions() as s:
        assert s.scalars(select(Alert).where(Alert.kind == "storage_low")).one().state == "resolved"

    # An export on the full disk fails clearly and leaves nothing half-written.
    j = 0
    while hub.segments.free_bytes() > len(media) + 50_000:
        put(hub, CAM2, t0 + 4 * j, data=media)
        j += 1
    end = t0 + 4 * i
    with pytest.raises(ClipError, match="not enough disk") as exc:
        hub.archive.plan(CAM, t0, end, export=True)  # refused before a byte is written
    assert error_status(exc.value) == 507
    out = tmpfs / "data" / "exports" / "x.mp4"
    with pytest.raises(ClipError, match="disk full") as exc2:
        build_clip(plan_clip(hub.sessions, CAM, t0, end), hub.segments.root, out)  # ENOSPC half-way
    assert error_status(exc2.value) == 507
    assert not out.exists()
    with contextlib.suppress(Exception):
        hub.engine.dispose()


async def test_storage_low_alert_reaches_the_event_stream(tmpfs: Path, tmp_path: Path, clock: Clock) -> None:
    """The archive's own alert goes through the one alert writer, so the pages learn of it live."""
    hub = make_hub(tmpfs, clock, db_dir=tmp_path, archive={"min_free_bytes": 0},
                   retention={"emergency_free_bytes": 1_500_000, "emergency_target_free_bytes": 2_500_000})
    media = make_clip(tmp_path / "seg.ts", seconds=4, gop=25, bitrate=200_000).read_bytes()
    i = 0
    while hub.segments.free_bytes() > 600_000:
        put(hub, CAM, clock.t + 4 * i, data=media)
        i += 1
    sub = hub.events.subscribe()

    async def alerts_sent() -> list[dict[str, Any]]:
        ev = await asyncio.wait_for(sub.get(), 5)
        msgs = render_change(hub, ev.data, ev.at)  # what the pages' feed sends for this notice
        sent = [json.loads(m.split("data: ", 1)[1]) for m in msgs if m.startswith("event: alerts\n")]
        assert sent, f"no alerts message for {ev.data}"
        return [a for payload in sent for a in payload["alerts"]]

    assert (await asyncio.to_thread(hub.archive.run_pass)).emergency
    opened = await alerts_sent()
    assert [(a["kind"], a["state"]) for a in opened] == [("storage_low", "open")]
    assert not (await asyncio.to_thread(hub.archive.run_pass)).emergency
    resolved = await alerts_sent()
    assert [(a["id"], a["kind"], a["state"]) for a in resolved] == [(opened[0]["id"], "storage_low", "resolved")]
    hub.events.unsubscribe(sub)
    hub.stop()
