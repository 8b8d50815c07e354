"""What the hub costs when nothing happens, and what a stored segment costs the store.

An idle hub reads nothing from the store: its outbox waits to be woken by the alert writer after a
commit that added deliveries (with a slow safety poll), and its tick, with no state change, writes
only the alive mark, one statement. A stored segment costs two statements (the duplicate check,
the insert), each an index search, and the duplicate rules stay what they were. Real SQLite files,
real webhook receivers on loopback; statements are counted on the hub's own engine.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from tests.conftest import Clock, WebhookSink, hub_config
from vms.alerts import AlertKind
from vms.archive.store import Result
from vms.config import HubConfig
from vms.db.models import Meta, Segment
from vms.hub import Hub
from vms.services.alerting import NewAlert
from vms.services.monitor import ALIVE_KEY

CAM = "32058501001320000001"


def make_hub(tmp_path: Path, clock: Callable[[], float], **sections: Any) -> Hub:
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", archive={"min_free_bytes": 0},
                                              analysis={"enabled": False}, **sections))
    return Hub(cfg, clock=clock)


@contextmanager
def statements(hub: Hub, thread_prefix: str | None = None) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and parameters) the hub's engine runs meanwhile, from threads whose names
    start with ``thread_prefix`` (all threads if None)."""
    seen: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, _many: bool) -> None:
        if thread_prefix is None or threading.current_thread().name.startswith(thread_prefix):
            seen.append((sql, params))

    event.listen(hub.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(hub.engine, "before_cursor_execute", before)


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_idle_outbox_reads_nothing_and_sends_at_once_when_an_alert_commits(
        tmp_path: Path, webhook: WebhookSink) -> None:
    hub = make_hub(tmp_path, time.time,
                   alerts={"receivers": [{"name": "crew", "kind": "webhook", "url": webhook.url}]})
    hub.start()
    try:
        time.sleep(0.5)  # its first drain, at start
        with statements(hub, "vms-outbox") as seen:
            time.sleep(2.5)
        assert seen == []  # before: a store query every 0.5 s

        hub.alerts.raise_or_update(NewAlert("idle-1", AlertKind.STORAGE_LOW, "disk low", time.time()))
        committed = time.monotonic()
        assert wait_for(lambda: len(webhook.received) == 1, 1.0), "not sent within a second of its commit"
        assert time.monotonic() - committed < 1.0

        # A failed attempt is retried after its backoff without another wake-up (retry_initial_s: 1 s).
        webhook.fail = True
        hub.alerts.raise_or_update(NewAlert("idle-2", AlertKind.STORAGE_LOW, "disk low again", time.time()))
        assert wait_for(lambda: hub.outbox.state["crew"].failing_since is not None, 1.0)
        webhook.fail = False
        assert wait_for(lambda: len(webhook.received) == 2, 3.0), "the retry did not come"
        assert webhook.received[1]["alerts"][0]["annotations"]["summary"] == "disk low again"
    finally:
        t0 = time.monotonic()
        hub.stop()
    assert time.monotonic() - t0 < 5.0  # the outbox's idle wait ends with the hub


def test_an_idle_tick_writes_only_the_alive_mark(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    hub.monitor.tick()  # a fresh store: the mark's row is inserted
    with hub.sessions() as s:
        row = s.get(Meta, ALIVE_KEY)
        assert row is not None and float(row.value) == clock.t
    now = clock.advance(1)
    with statements(hub) as seen:
        hub.monitor.tick()
    assert len(seen) == 1, seen  # before: the ORM merge read the row first, then wrote it
    assert seen[0][0].lstrip().upper().startswith("UPDATE META")
    with hub.sessions() as s:
        row = s.get(Meta, ALIVE_KEY)
        assert row is not None and float(row.value) == now
    hub.stop()


def test_a_stored_segment_costs_two_index_searches_and_duplicates_stay_duplicates(
        tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    hub.registry.add_device(CAM)
    a, b = b"segment a" * 100, b"segment b" * 100
    sa, sb = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    start = clock.t - 60

    with statements(hub) as seen:
        first = hub.ingest.store("agent", CAM, start, 2.0, a, sa, None)
    assert first.result is Result.STORED and first.segment_id is not None
    assert len(seen) == 2, seen  # before: three (two duplicate checks, then the insert)
    with hub.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for sql, params in seen:
            plan = " ".join(str(r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
            assert "SCAN" not in plan, plan  # never a walk over the device's segments

    again = hub.ingest.store("agent", CAM, start, 2.0, a, sa, None)
    assert (again.result, again.segment_id) == (Result.DUPLICATE, first.segment_id)
    other = hub.ingest.store("agent", CAM, start, 2.0, b, sb, None)
    assert other.result is Result.CONFLICT
    # A retry whose start the skew correction moved: the same device, content and agent start.
    moved = hub.ingest.store("agent", CAM, start, 2.0, a, sa, clock.t + 40)  # its clock 40 s ahead
    assert (moved.result, moved.segment_id) == (Result.DUPLICATE, first.segment_id)
    # The same bytes at another agent start are another segment (a looped clip): stored.
    later = hub.ingest.store("agent", CAM, start + 2, 2.0, a, sa, None)
    assert later.result is Result.STORED and later.segment_id not in (None, first.segment_id)

    with hub.sessions() as s:
        rows = list(s.scalars(select(Segment).where(Segment.device_id == CAM).order_by(Segment.start_at)))
    assert [(r.start_at, r.agent_start, r.sha256, r.deleting, r.agent_id) for r in rows] == [
        (start, start, sa, False, "agent"), (start + 2, start + 2, sa, False, "agent")]
    assert hub.segments.stored_total == 2
    hub.stop()
