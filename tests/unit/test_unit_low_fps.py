"""``low_fps`` in vms/health.py: a rate not measured yet (0) is not a low rate, and a stream that
really delivers nothing is still caught, by its silence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vms import health
from vms.config import HealthConfig
from vms.health import Health, defect_names

T0 = 1_790_000_000.0
CAM = "32058501001320000001"


@pytest.fixture(autouse=True)
def private_defects(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(health, "DEFECTS", dict(health.DEFECTS))
    yield


def heartbeat(h: Health, i: int, now: float, fps: float, last_packet: float | None, connected: bool = True) -> None:
    """What the heartbeat service does with one camera's figures: signal from its packet age, then the report."""
    if connected and last_packet is not None:
        h.observe_signal(i, last_packet, now)
    h.report(i, now, fps=fps, bitrate=1e6 if fps else 0.0, reconnects=0, gaps=0, connected=connected)


def test_a_camera_just_connected_reports_fps_0_and_is_not_degraded() -> None:
    cfg = HealthConfig(min_fps=5.0)
    h = Health(cfg, T0)
    i = h.add(CAM, T0)
    states = []
    for k in range(1, 8):  # packets flow from the start; the first 2 s window ends at T0 + 3
        fps = 0.0 if k < 3 else 25.0
        heartbeat(h, i, T0 + k, fps, T0 + k)
        h.evaluate(T0 + k)
        states.append(h.state_of(i))
        assert defect_names(int(h.defects[i])) == [], (k, fps)
    assert "degraded" not in states
    assert states[-1] == "online"


@pytest.mark.parametrize("fps", [0.4, 1.0, 4.99])
def test_a_measured_rate_below_min_fps_is_still_low(fps: float) -> None:
    h = Health(HealthConfig(min_fps=5.0), T0)
    i = h.add(CAM, T0)
    for k in range(1, 6):
        heartbeat(h, i, T0 + k, 25.0, T0 + k)
        h.evaluate(T0 + k)
    heartbeat(h, i, T0 + 6, fps, T0 + 6)
    h.evaluate(T0 + 6)
    assert defect_names(int(h.defects[i])) == ["low_fps"]
    assert h.state_of(i) == "degraded"
    heartbeat(h, i, T0 + 7, 5.0, T0 + 7)  # exactly the minimum is enough
    h.evaluate(T0 + 7)
    assert h.state_of(i) == "online"


def test_a_connected_stream_that_never_delivers_a_frame_goes_offline_by_its_silence() -> None:
    """fps stays 0 and the agent still says connected, but no packet ever comes after the first:
    the growing packet age takes the camera offline within ``offline_after_s``."""
    cfg = HealthConfig(min_fps=5.0, offline_after_s=5.0)
    h = Health(cfg, T0)
    i = h.add(CAM, T0)
    for k in range(1, 6):
        heartbeat(h, i, T0 + k, 25.0, T0 + k)
        h.evaluate(T0 + k)
    assert h.state_of(i) == "online"
    last = T0 + 5
    went_offline = None
    for k in range(6, 30):
        heartbeat(h, i, T0 + k, 0.0, last)  # connected, fps 0, packet age growing
        h.evaluate(T0 + k)
        assert "low_fps" not in defect_names(int(h.defects[i]))
        if h.state_of(i) == "offline" and went_offline is None:
            went_offline = T0 + k
    assert went_offline is not None and went_offline - last <= cfg.offline_after_s + cfg.tick_s
