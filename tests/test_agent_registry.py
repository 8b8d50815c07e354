"""Device IDs: stable across restarts and rediscovery, never shared, fixed IDs honoured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.registry import Registry, RegistryError
from vms.kernel import ids

P = "32058501001320"


def test_stable_across_restart_and_distinct(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    a = r.assign(prefix=P, url="rtsp://admin:x@10.0.0.1/live")
    b = r.assign(prefix=P, url="rtsp://10.0.0.2/live")
    assert a != b and ids.is_valid(a) and ids.is_valid(b)
    assert a.startswith(P) and b.startswith(P)
    # Same camera, other credentials: same ID.
    assert r.assign(prefix=P, url="rtsp://other:y@10.0.0.1/live") == a
    r2 = Registry(tmp_path)  # restart
    assert r2.assign(prefix=P, url="rtsp://10.0.0.2/live") == b
    assert r2.assign(prefix=P, url="rtsp://admin:x@10.0.0.1/live") == a
    c = r2.assign(prefix=P, url="rtsp://10.0.0.3/live")
    assert len({a, b, c}) == 3
    # Credentials never reach the file; no temp files left behind.
    text = (tmp_path / "registry.json").read_text()
    assert "admin" not in text and ":x@" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]


def test_serial_is_the_identity(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    a = r.assign(prefix=P, url="rtsp://10.0.0.1/live")
    # Discovered later over ONVIF at the same address: learns the serial, keeps the ID.
    assert r.assign(prefix=P, url="rtsp://10.0.0.1/live", serial="SN-001") == a
    # The camera moves to another address (DHCP): the serial still finds it.
    assert Registry(tmp_path).assign(prefix=P, url="rtsp://10.0.0.9/live", serial="SN-001") == a
    # A different camera now at the old address is a new device.
    r3 = Registry(tmp_path)
    b = r3.assign(prefix=P, url="rtsp://10.0.0.9/live", serial="SN-002")
    assert b != a
    assert r3.lookup(serial="sn-001") == a and r3.lookup(url="rtsp://10.0.0.9/live") == b


def test_fixed_id_honoured_and_collisions_refused(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    fixed = P + "000001"
    assert r.assign(prefix=P, url="rtsp://10.0.0.1/a", fixed_id=fixed) == fixed
    # Allocation skips the fixed one.
    assert r.assign(prefix=P, url="rtsp://10.0.0.2/b") == P + "000002"
    # A URL known under another ID cannot take a fixed ID that belongs to a third camera.
    with pytest.raises(RegistryError, match="already belongs"):
        r.assign(prefix=P, url="rtsp://10.0.0.2/b", fixed_id=fixed)
    # A new address for the fixed ID: the camera moved; the config wins and nothing stops.
    assert r.assign(prefix=P, url="rtsp://10.0.0.3/c", fixed_id=fixed) == fixed
    assert r.lookup(url="rtsp://10.0.0.3/c") == fixed and r.lookup(url="rtsp://10.0.0.1/a") is None
    assert r.lookup(url="rtsp://10.0.0.2/b") == P + "000002"
    with pytest.raises(RegistryError, match="fixed device_id"):
        r.assign(prefix=P, url="rtsp://10.0.0.3/c", fixed_id="1234")
    with pytest.raises(RegistryError, match="no id_prefix"):
        r.assign(prefix=None, url="rtsp://10.0.0.4/d")


def test_many_cameras_never_share(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    got = [r.assign(prefix=P, url=f"rtsp://10.0.{i // 250}.{i % 250}/s") for i in range(300)]
    assert len(set(got)) == 300
    again = Registry(tmp_path)
    assert [again.lookup(url=f"rtsp://10.0.{i // 250}.{i % 250}/s") for i in range(300)] == got


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read device registry"):
        Registry(tmp_path)
    dup = {"devices": [{"device_id": P + "000001", "url": "a"}, {"device_id": P + "000001", "url": "b"}]}
    (tmp_path / "registry.json").write_text(json.dumps(dup))
    with pytest.raises(RegistryError, match="appears twice"):
        Registry(tmp_path)
