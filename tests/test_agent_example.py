"""The example agent config names every setting (the README sends installers there) and loads."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from edge_agent.config import AgentConfig, DiscoveryConfig, OnvifConfig, OnvifHost, load

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "agent.example.yaml"


def _missing(model: type[BaseModel], section: dict[str, object]) -> list[str]:
    return [name for name in model.model_fields if name not in section]


def test_the_example_lists_every_agent_discovery_and_onvif_setting() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert _missing(AgentConfig, raw) == []
    assert _missing(DiscoveryConfig, raw["discovery"]) == []
    assert _missing(OnvifConfig, raw["onvif"]) == []
    assert _missing(OnvifHost, raw["discovery"]["onvif_hosts"][-1]) == []


def test_the_examples_new_settings_load_as_written() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    cfg = load(EXAMPLE)
    for key in ("backoff_cap_s", "healthy_backoff_cap_s", "probe_interval_s", "live_segment_seconds"):
        assert getattr(cfg, key) == raw[key], key
    assert cfg.healthy_backoff_cap_s <= cfg.backoff_cap_s
    assert [h.address for h in cfg.discovery.onvif_hosts] == [
        f"{h['host']}:{h.get('port', 80)}" for h in raw["discovery"]["onvif_hosts"]
    ]
    by_own = [h for h in cfg.discovery.onvif_hosts if h.username is not None]
    assert by_own and all(h.password for h in by_own)
