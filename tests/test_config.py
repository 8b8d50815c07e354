"""Config: the example runs as it is; typos and impossible trees are errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, vms_cli
from vms import config


def test_example_config_loads() -> None:
    cfg = config.load(ROOT / "config" / "hub.example.yaml")
    assert cfg.centers[0].level == 1
    assert {c.id for c in cfg.centers[0].children} == {"chengxiang", "shaxi", "education"}
    lane = cfg.analysis.for_device("32058501001320000001")
    assert lane.thresholds.dark_max_luma == 12 and lane.checks == cfg.analysis.checks
    assert "scene_change" not in cfg.analysis.for_device("32058502001320000002").checks
    assert cfg.analysis.for_device("32058501001320000009") is cfg.analysis


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hub.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("health:\n  ofline_after_s: 5\n", "health.ofline_after_s: unknown key"),
        ("health:\n  offline_after_s: 0\n", "health.offline_after_s: Input should be greater than or equal to 1"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  timezone: Mars/Olympus\n", "unknown time zone"),
        ("centers:\n  - {id: a, name: A, level: 1, civil_code: '3205x5'}\n", "civil_code"),
        ("centers:\n  - {id: a, name: A, level: 1, civil_code: '320585', children: "
         "[{id: b, name: B, level: 2, civil_code: '32068501'}]}\n", "outside its parent"),
        ("centers:\n  - {id: a, name: A, level: 2, civil_code: '320585', children: "
         "[{id: b, name: B, level: 2, civil_code: '32058501'}]}\n", "must be below its parent"),
        ("centers:\n  - {id: a, name: A, level: 1, civil_code: '320585'}\n"
         "  - {id: a, name: B, level: 1, civil_code: '320586'}\n", "duplicate center id 'a'"),
        ("devices:\n  - {id: '32058501001320000001'}\n  - {id: '32058501001320000001'}\n", "duplicate device id"),
        ("devices:\n  - {id: '32058501000990000001'}\n", "type '099'"),
        ("devices:\n  - {id: '32058501001320000001', center: nowhere}\n", "unknown center 'nowhere'"),
        ("alerts:\n  receivers:\n    - {name: x, kind: sms, url: 'http://127.0.0.1'}\n", "alerts.receivers.0"),
        ("analysis:\n  cameras: {'3205': {}}\n", "must be 20 digits"),
        ("analysis:\n  cameras: {'32058501001320000001': {thresholds: {dark_max: 3}}}\n",
         "analysis.cameras.32058501001320000001.thresholds.dark_max: unknown key"),
        ("analysis:\n  cameras: {'32058501001320000001': {checks: [too_dim]}}\n",
         "cameras.32058501001320000001.checks.0"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_say_where_and_why(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(config.ConfigError) as exc:
        config.load(write(tmp_path, text))
    assert expected in str(exc.value)
    assert str(tmp_path / "hub.yaml") in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(tmp_path / "nope.yaml")


def test_cli_schema_and_check(tmp_path: Path) -> None:
    schema = json.loads(vms_cli("config", "schema").stdout)
    assert schema["additionalProperties"] is False
    assert "health" in schema["properties"]
    out = vms_cli("config", "check", str(ROOT / "config" / "hub.example.yaml")).stdout
    assert "education" in out and "industries 11" in out
    bad = vms_cli("config", "check", str(write(tmp_path, "helth: {}\n")), check=False)
    assert bad.returncode == 2 and "helth: unknown key" in bad.stderr
