"""An accepted discovered camera that misses the probe at agent start is still relayed.

Cameras are often still booting when their agent starts (a power cut takes a whole site down), and
WS-Discovery answers travel by multicast, which can be lost. The agent relays such a camera from its
last known stream URI, with the ONVIF account added back, and ingest retries it until it answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.registry import Registry
from tests.rtsp_fixture import RtspServer, clips_fixture, free_port, wait_for  # noqa: F401

PREFIX = "32058501001320"


def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "hub_url": "http://127.0.0.1:9",
            "token": "t",
            "id_prefix": PREFIX,
            "data_dir": str(tmp_path / "agent"),
            "segment_seconds": 1,
            "onvif": {"enabled": True, "username": "admin", "password": "s3cret"},
            "discovery": {"enabled": True},
        }
    )


def test_an_accepted_camera_missing_from_discovery_is_relayed_and_a_pending_one_is_not(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    port = free_port()
    reg = Registry(tmp_path / "agent")
    url = f"rtsp://127.0.0.1:{port}/cam"
    accepted = reg.assign(prefix=PREFIX, url=url, serial="SN-1", name="Gate", source="onvif", sub_url=url + "/sub")
    pending = reg.assign(prefix=PREFIX, url=f"rtsp://127.0.0.1:{port}/other", serial="SN-2", source="onvif")
    configured = reg.assign(prefix=PREFIX, url=f"rtsp://127.0.0.1:{port}/gone", source="config")
    reg.set_acceptance({accepted: "accepted", pending: "pending", configured: "accepted"})
    saved = json.loads(reg.path.read_text())["devices"]
    assert all("s3cret" not in json.dumps(e) for e in saved)

    agent = Agent(config(tmp_path))
    try:
        found = agent.remembered_sources([])
        # Only the accepted discovered camera; one removed from the config stays removed.
        assert [s.serial for s in found] == ["SN-1"]
        src = found[0]
        assert src.url == f"rtsp://admin:s3cret@127.0.0.1:{port}/cam" and src.sub_url == src.url + "/sub"
        # A camera this probe did find is not added twice.
        assert agent.remembered_sources(found) == []

        agent.assign_ids(found, PREFIX)
        assert list(agent.sources) == [accepted]
        agent.start_ingest()  # the camera is still booting: nothing answers yet
        assert wait_for(lambda: agent.ingests[0].snapshot().reconnects >= 1, 10)
        srv = RtspServer({"/cam": clips["plain"]}, port=port).start()  # it comes up
        try:
            assert wait_for(lambda: len(agent.spool.segments()) >= 2, 30), "recording did not resume"
            assert all(s.device_id == accepted for s in agent.spool.segments())
        finally:
            srv.stop()
    finally:
        agent.shutdown()
