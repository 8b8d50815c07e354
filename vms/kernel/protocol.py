"""Agent <-> hub messages, shared by both sides and versioned.

An agent sends ``protocol: 1``; the hub answers 426 to a major version it does not speak. Times
that the hub acts on are ages ("seconds since the last packet") measured on the agent, so an
agent whose wall clock is wrong still reports correct freshness; its ``sent_at`` only measures skew.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Age = Annotated[float, Field(ge=0, le=10_000_000)]
CheckKey = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]

PROTOCOL_VERSION = 1
DEVICE_ID_PATTERN = r"^[0-9]{20}$"
MAX_CAMERAS_PER_HEARTBEAT = 10_000


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraStats(_Msg):
    """What an agent knows about one camera at the moment it sends a heartbeat."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    connected: bool = Field(description="The agent holds a live stream from the camera.")
    last_packet_age_s: float | None = Field(
        None, ge=0, le=10_000_000, description="Seconds since the last media packet, on the agent's clock."
    )
    fps: float = Field(0.0, ge=0, le=1000)
    bitrate_bps: float = Field(0.0, ge=0, le=10_000_000_000)
    keyframe_interval_s: float | None = Field(None, ge=0, le=3600)
    reconnects: int = Field(0, ge=0, le=2**53, description="Reconnects since the agent started.")
    gaps: int = Field(0, ge=0, le=2**53, description="Stalls detected since the agent started.")
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    codec: str | None = Field(None, max_length=32)
    name: str | None = Field(None, max_length=200)
    location: str | None = Field(None, max_length=200)
    defects: dict[CheckKey, Age] | None = Field(
        None,
        max_length=64,
        description="Set when the agent analyses this camera itself: the quality checks raised now, each with "
        "its age in seconds on the agent's clock ({} = none). Absent: the hub analyses the relayed media. "
        "A check this hub does not know is ignored.",
    )


class SpoolStats(_Msg):
    queued_segments: int = Field(0, ge=0)
    queued_bytes: int = Field(0, ge=0)
    dropped_segments: int = Field(0, ge=0, description="Segments the spool quota forced out, ever.")
    live_dropped_segments: int = Field(
        0, ge=0, description="Sub-stream (live-only) segments dropped unsent since the agent started: live view "
        "had gaps, nothing recorded was lost. Absent from older agents, read as 0.",
    )


class Heartbeat(_Msg):
    protocol: int = Field(PROTOCOL_VERSION, ge=1, le=1000)
    seq: int = Field(0, ge=0, le=2**53)
    sent_at: float = Field(ge=0, le=10_000_000_000, description="Agent wall clock, Unix seconds.")
    cameras: list[CameraStats] = Field(default_factory=list, max_length=MAX_CAMERAS_PER_HEARTBEAT)
    spool: SpoolStats | None = None


class Rejection(_Msg):
    device_id: str
    reason: str


class HeartbeatReply(_Msg):
    protocol: int = PROTOCOL_VERSION
    accepted: int
    rejected: list[Rejection] = Field(default_factory=list)
    clock_skew_s: float = Field(description="Hub clock minus agent clock at receipt.")
    warning: str | None = None
    heartbeat_interval_s: float


class Register(_Msg):
    protocol: int = Field(PROTOCOL_VERSION, ge=1, le=1000)
    version: str = Field("", max_length=64, description="Agent software version.")
    hostname: str = Field("", max_length=255)


class RegisterReply(_Msg):
    protocol: int = PROTOCOL_VERSION
    agent_id: str
    prefixes: list[str]
    heartbeat_interval_s: float


CameraSource = Literal["config", "onvif", "gb28181"]
Acceptance = Literal["accepted", "pending", "rejected", "refused"]


class ReportedCamera(_Msg):
    """One camera in an agent's camera report; ``stream_uri`` carries no credentials."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    source: CameraSource = Field(
        "config",
        description="config: typed into the agent's YAML (accepted as before); onvif: found by discovery, "
        "relayed only once accepted; gb28181: registered with the hub by SIP (vms/gb28181), accepted like onvif. "
        "Absent means config: agents before this field relayed every camera.",
    )
    name: str | None = Field(None, max_length=200)
    location: str | None = Field(None, max_length=200)
    manufacturer: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)
    serial: str | None = Field(None, max_length=200)
    address: str | None = Field(None, max_length=300)
    stream_uri: str | None = Field(None, max_length=1000)

    @field_validator("stream_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is not None and "@" in urlsplit(v).netloc:
            raise ValueError("stream_uri must not carry credentials (user:password@); send it stripped")
        return v


class CameraReport(_Msg):
    cameras: list[ReportedCamera] = Field(max_length=MAX_CAMERAS_PER_HEARTBEAT)


class CameraDecision(_Msg):
    device_id: str
    state: Acceptance = Field(
        description="accepted: relay it; pending: wait for an admin; rejected: an admin said never relay it; "
        "refused: this agent may not speak for the ID at all (prefixes, another live agent), not a decision."
    )
    reason: str = ""


class CameraReportReply(_Msg):
    protocol: int = PROTOCOL_VERSION
    cameras: list[CameraDecision]
