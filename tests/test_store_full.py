"""A full disk under the store: state changes are kept and written once space returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.conftest import Clock
from tests.test_hub import CAM, agent, alerts, make_hub, run
from vms.db.models import StateInterval


def fill(path: Path) -> Path:
    junk = path / "junk"
    with open(junk, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return junk


def test_state_changes_survive_a_full_disk(small_disk: Any, clock: Clock) -> None:
    disk = small_disk("8m")
    hub = make_hub(disk, clock)
    a = agent(hub)
    run(hub, clock, 6, a, [CAM])
    junk = fill(disk)
    run(hub, clock, 10)  # the camera goes dark while nothing can be written
    assert hub.health.state_of(0) == "offline"
    assert hub.monitor._pending, "the change must be kept in memory while the store refuses writes"
    junk.unlink()
    run(hub, clock, 1)
    assert not hub.monitor._pending
    with hub.sessions() as s:
        states = [r.state for r in s.scalars(select(StateInterval).order_by(StateInterval.start_at))]
    assert states == ["online", "offline"]
    assert [(r.kind, r.state) for r in alerts(hub)] == [("agent_offline", "open")]
    hub.stop()
