"""Nothing acknowledged is lost on a power cut (issue 16, item 1).

The hub answers "stored" (201) only after the segment's index row is committed with
``synchronous=FULL``, and start-up repair re-indexes segment files that lost their rows (what a
power cut leaves when the newest commits did not reach the disk) from their names and contents,
moving files it cannot trust aside instead of deleting them. Real SQLite files, real MPEG-TS
segments; the power cut is simulated by what it leaves behind.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from tests.conftest import Clock, hub_config
from tests.rtsp_fixture import make_clip
from vms import audit, auth
from vms.archive.store import INCOMING, QUARANTINE, relative_path
from vms.config import HubConfig
from vms.db.models import Segment
from vms.hub import Hub

PREFIX = "32058501001320"
CAM = PREFIX + "000001"
FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def make_hub(data: Path, clock: Clock, **sections: Any) -> Hub:
    cfg = HubConfig.model_validate(hub_config(data, None, archive={"min_free_bytes": 0}, **sections))
    hub = Hub(cfg, clock=clock)
    if not hub.registry.known(CAM):
        hub.registry.add_device(CAM)
    return hub


def clips(tmp_path: Path, n: int) -> list[tuple[bytes, float]]:
    """``n`` distinct real H.264 MPEG-TS segments (1, 2, 3... seconds long) and their durations."""
    return [(make_clip(tmp_path / f"c{k}.ts", seconds=k + 1, gop=25).read_bytes(), float(k + 1)) for k in range(n)]


def segment_rows(hub: Hub) -> list[Segment]:
    with hub.sessions() as s:
        return list(s.scalars(select(Segment).where(Segment.device_id == CAM).order_by(Segment.start_at)))


def record_commits(hub: Hub) -> list[tuple[int, int]]:
    """(PRAGMA synchronous, segment rows visible) on the committing connection, at each commit."""
    seen: list[tuple[int, int]] = []

    @event.listens_for(hub.engine, "commit")
    def on_commit(conn: Any) -> None:
        raw = conn.connection.dbapi_connection
        sync = raw.execute("PRAGMA synchronous").fetchone()[0]
        seen.append((sync, raw.execute("SELECT count(*) FROM segments").fetchone()[0]))

    return seen


def test_segment_rows_and_audit_rows_commit_with_synchronous_full(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path / "data", clock)
    with hub.segments.sessions() as s:  # the connections the segment store commits on
        assert s.connection().exec_driver_sql("PRAGMA synchronous").scalar() == FULL
        assert s.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    seen = record_commits(hub)
    data, dur = clips(tmp_path, 1)[0]
    out = hub.ingest.store("agent-1", CAM, clock.t - dur, dur, data, hashlib.sha256(data).hexdigest(), None)
    assert out.result.name == "STORED", out.message
    assert (FULL, 1) in seen and all(sync == FULL for sync, _ in seen)
    seen.clear()
    audit.append(hub.sessions, at=clock.t, actor="admin", role="admin", action="test", target="x")
    assert seen and all(sync == FULL for sync, _ in seen)  # the audit log's newest row: the same
    hub.engine.dispose()


async def test_stored_is_answered_after_the_durable_commit(tmp_path: Path, clock: Clock) -> None:
    """Through the API: when the agent reads 201, the row is committed (FULL) and another connection sees it."""
    from vms.api import create_app

    clock.t = __import__("time").time()  # the API path takes the hub's clock for skew and future checks
    hub = make_hub(tmp_path / "data", clock)
    token, _ = auth.create(hub.sessions, "agent", "agent-1", [PREFIX])
    seen = record_commits(hub)
    data, dur = clips(tmp_path, 1)[0]
    app = create_app(hub, run_threads=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c:
        r = await c.put(f"/api/v1/agents/segments/{CAM}", params={"start": clock.t - dur, "duration": dur},
                        content=data, headers={"Authorization": f"Bearer {token}",
                                               "X-VMS-SHA256": hashlib.sha256(data).hexdigest(),
                                               "X-VMS-Sent-At": f"{clock.t:.6f}"})
        assert r.status_code == 201, r.text
        committed = list(seen)  # what had been committed when the answer arrived
    assert (FULL, 1) in committed
    db = sqlite3.connect(tmp_path / "data" / "vms.db")  # a connection of its own, as after a restart
    try:
        assert db.execute("SELECT sha256 FROM segments").fetchall() == [(hashlib.sha256(data).hexdigest(),)]
    finally:
        db.close()
    assert list((hub.segments.root / INCOMING).iterdir()) == []
    hub.engine.dispose()


def test_repair_reindexes_what_a_power_cut_left_and_quarantines_what_it_cannot_trust(
    tmp_path: Path, clock: Clock
) -> None:
    data_dir = tmp_path / "data"
    hub = make_hub(data_dir, clock)
    segs = clips(tmp_path, 5)
    t0 = clock.t - 60
    starts = [t0 + 10 * k + 0.123456 for k in range(len(segs))]
    for (data, dur), t in zip(segs[:4], starts[:4], strict=True):
        out = hub.ingest.store("agent-1", CAM, t, dur, data, hashlib.sha256(data).hexdigest(), None)
        assert out.result.name == "STORED", out.message
    before = segment_rows(hub)
    root = hub.segments.root
    # What the power cut leaves: the newest two commits lost (their files are there, renamed and
    # fsynced before the commit), and an index row whose file is gone.
    with hub.sessions() as s:
        s.query(Segment).filter(Segment.id.in_([before[2].id, before[3].id])).delete()
        s.commit()
    (root / before[0].path).unlink()
    # A torn file: named after its full content but cut short (never acknowledged, or damaged since).
    torn_data, _ = segs[4]
    torn = root / relative_path(CAM, starts[4], hashlib.sha256(torn_data).hexdigest())
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(torn_data[: len(torn_data) // 2])
    # A file whose name matches its content, but which is no media at all.
    junk = os.urandom(4000)
    junk_path = root / relative_path(CAM, t0 + 200, hashlib.sha256(junk).hexdigest())
    junk_path.write_bytes(junk)
    # Temporary files of uploads cut off before their rename (the agent still has those).
    (root / INCOMING).mkdir(exist_ok=True)
    (root / INCOMING / "up-x.part").write_bytes(b"half")
    (torn.parent / "old.ts.part").write_bytes(b"half")
    hub.engine.dispose()

    restarted = make_hub(data_dir, clock)
    rep = restarted.archive.startup()
    assert (rep.reindexed, rep.quarantined, rep.rows_without_file, rep.temp_removed) == (2, 2, 1, 2)
    assert rep.files_without_row == 5
    after = {r.start_at: r for r in segment_rows(restarted)}
    assert sorted(after) == starts[1:4]
    for (data, dur), t, old in zip(segs[2:4], starts[2:4], before[2:4], strict=True):
        row = after[t]  # re-indexed from its name and content, as it was stored
        assert (row.path, row.sha256, row.bytes) == (old.path, hashlib.sha256(data).hexdigest(), len(data))
        assert row.end_at - row.start_at == pytest.approx(dur, abs=0.05)
        assert (root / row.path).read_bytes() == data
    q = root / QUARANTINE
    assert (q / torn.relative_to(root)).read_bytes() == torn_data[: len(torn_data) // 2]  # kept, not deleted
    assert (q / junk_path.relative_to(root)).read_bytes() == junk
    reasons = (q / "reasons.log").read_text()
    assert "torn or altered" in reasons and "not readable as MPEG-TS" in reasons
    assert not torn.exists() and not junk_path.exists() and list((root / INCOMING).iterdir()) == []
    # A second start finds nothing more to do, and quarantined files stay out of the index.
    again = restarted.archive.startup()
    assert (again.files_without_row, again.rows_without_file, again.quarantined) == (0, 0, 0)
    # The agent retrying a re-indexed segment hears "duplicate" and lets it go.
    data, dur = segs[3]
    out = restarted.ingest.store("agent-1", CAM, starts[3], dur, data, hashlib.sha256(data).hexdigest(), None)
    assert out.result.name == "DUPLICATE"
    restarted.engine.dispose()
