"""Agent config: the example validates, typos and bad values fail with path + reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, ConfigError, load, redact, scrub, strip_credentials

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_validates() -> None:
    cfg = load(ROOT / "config" / "agent.example.yaml")
    assert cfg.id_prefix == "32058501001320"
    assert cfg.segment_seconds == 4 and cfg.heartbeat_interval_s == 2
    assert cfg.cameras[1].device_id == "32058501001320000100"
    assert cfg.cameras[1].transport == "udp"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return p


BASE = "hub_url: http://127.0.0.1:8700\ntoken: t\n"


def test_typo_key_is_an_error_naming_the_path(tmp_path: Path) -> None:
    p = _write(tmp_path, BASE + "cameras:\n  - url: rtsp://127.0.0.1/x\n    trasnport: udp\n")
    with pytest.raises(ConfigError) as ei:
        load(p)
    msg = str(ei.value)
    assert "cameras.0.trasnport" in msg and "unknown key" in msg and "extra inputs" in msg


def test_top_level_typo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="segment_second: unknown key"):
        load(_write(tmp_path, BASE + "segment_second: 4\n"))


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("segment_seconds: 60\n", "segment_seconds"),
        ("id_prefix: '3205850100132'\n", "id_prefix"),  # 13 digits
        ("id_prefix: '99058501001320'\n", "id_prefix"),  # no such province
        ("cameras:\n  - url: http://127.0.0.1/x\n", "cameras.0.url"),
        ("cameras:\n  - url: rtsp://h/x\n    device_id: '1234'\n", "cameras.0.device_id"),
        ("cameras:\n  - url: rtsp://h/x\n    transport: sctp\n", "cameras.0.transport"),
    ],
)
def test_bad_values(tmp_path: Path, extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load(_write(tmp_path, BASE + extra))
    assert f"  {where}:" in str(ei.value)


def test_duplicate_camera_and_fixed_id(tmp_path: Path) -> None:
    dup = "cameras:\n  - url: rtsp://a:b@h/x\n  - url: rtsp://h/x\n"
    with pytest.raises(ConfigError, match="listed twice"):
        load(_write(tmp_path, BASE + dup))
    fixed = ("cameras:\n  - url: rtsp://h/x\n    device_id: '32058501001320000001'\n"
             "  - url: rtsp://h/y\n    device_id: '32058501001320000001'\n")
    with pytest.raises(ConfigError, match="given to two cameras"):
        load(_write(tmp_path, BASE + fixed))


def test_not_yaml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(_write(tmp_path, "a: [\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="token: Field required"):
        load(_write(tmp_path, "hub_url: http://h\n"))


def test_bad_url_error_does_not_echo_password() -> None:
    with pytest.raises(ValueError) as ei:
        AgentConfig(hub_url="http://h", token="t", cameras=[{"url": "http://admin:s3cr3t@h/x"}])  # type: ignore[list-item]
    assert "s3cr3t" not in str(ei.value)


def test_redact_and_strip() -> None:
    url = "rtsp://admin:p%40ss@10.0.0.5:554/live?channel=1&password=hunter2"
    r = redact(url)
    assert "admin" not in r and "p%40ss" not in r and "hunter2" not in r
    assert r.startswith("rtsp://***@10.0.0.5:554/live") and "channel=1" in r
    assert strip_credentials(url) == "rtsp://10.0.0.5:554/live?channel=1"
    assert strip_credentials("RTSP://Cam.Local/x") == "rtsp://cam.local/x"
    msg = "failed to open 'rtsp://admin:p%40ss@10.0.0.5:554/live?channel=1&password=hunter2': 401"
    out = scrub(msg, url)
    assert "p%40ss" not in out and "hunter2" not in out and "admin" not in out
    assert "ftp://u:pw@x" not in scrub("see ftp://u:pw@x/y")
