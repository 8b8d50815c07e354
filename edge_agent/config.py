"""The edge agent's YAML configuration as pydantic models.

``extra="forbid"`` everywhere so a typo is an error at start-up rather than a silently ignored
setting; every number is bounded. Camera URLs carry credentials, so anything that prints a URL
goes through :func:`redact` first.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vms.analysis.config import AnalysisConfig
from vms.kernel import ids
from vms.kernel.configio import ConfigError as ConfigError  # re-exported: the agent reports config errors like the hub
from vms.kernel.configio import format_errors as format_errors
from vms.kernel.configio import load_model


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class CameraConfig(_Model):
    """A camera reached by a plain RTSP URL (ONVIF cameras can be discovered instead)."""

    url: str = Field(description="rtsp://[user:password@]host[:port]/path")
    sub_url: str | None = Field(
        None, description="The camera's sub stream (子码流), relayed for live wall tiles only: never recorded."
    )
    name: str = Field("", max_length=200)
    location: str = Field("", max_length=200)
    device_id: str | None = Field(None, description="Fixed 20-digit GB/T 28181 ID; allocated if absent.")
    transport: Literal["tcp", "udp"] = "tcp"

    @field_validator("url")
    @classmethod
    def _rtsp(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise ValueError(f"must be an rtsp:// URL with a host, got {redact(v)!r}")
        return v

    @field_validator("sub_url")
    @classmethod
    def _sub_rtsp(cls, v: str | None) -> str | None:
        return None if v is None else cls._rtsp(v)

    @model_validator(mode="after")
    def _sub_differs(self) -> CameraConfig:
        if self.sub_url is not None and strip_credentials(self.sub_url) == strip_credentials(self.url):
            raise ValueError("sub_url: is the main stream's URL; leave it out if the camera has no sub stream")
        return self

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str | None) -> str | None:
        if v is not None:
            ids.parse(v)
        return v


class OnvifConfig(_Model):
    enabled: bool = False
    username: str = Field("", max_length=200)
    password: str = Field("", max_length=200)
    timeout_s: float = Field(5.0, gt=0, le=60)


#: A host name (RFC 1123 labels) or an IPv4 address; IPv6 addresses are checked by ``ipaddress``.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def check_host(v: str) -> str:
    """A bare host name or IP address (no scheme, port, path or user): what an installer types."""
    v = v.strip()
    bare = v[1:-1] if v.startswith("[") and v.endswith("]") else v
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not _HOSTNAME.match(bare):
        raise ValueError(f"{v!r} is not a host name or IP address (no scheme, port or path here)")
    return bare.lower()


class OnvifHost(_Model):
    """An ONVIF device named by its address: on another subnet or VLAN, where WS-Discovery multicast
    does not reach. Queried like a discovered device (identity, profiles, sub stream, acceptance)."""

    host: str = Field(max_length=253, description="Host name or IP address of the ONVIF device.")
    port: int = Field(80, ge=1, le=65535, description="Port of its ONVIF device service (HTTP).")
    username: str | None = Field(None, max_length=200, description="Default: onvif.username.")
    password: str | None = Field(None, max_length=200, description="Default: onvif.password.")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)

    @property
    def address(self) -> str:
        """``host:port`` as discovery reports a device's address (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> OnvifHost:
        """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT``, as typed after ``--host``; ValueError if not."""
        text = text.strip()
        if "://" in text or "/" in text:
            raise ValueError(f"{text!r}: give HOST or HOST:PORT of the ONVIF device, without a scheme or path")
        host, port = text, "80"
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"{text!r}: an IPv6 address in brackets lacks its ']'")
            host, rest = text[: end + 1], text[end + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{text!r}: expected [IPv6]:PORT")
                port = rest[1:]
        elif text.count(":") == 1:
            host, port = text.split(":")
        if not port.isdigit():
            raise ValueError(f"{text!r}: the port {port!r} is not a number")
        return cls(host=host, port=int(port))


class DiscoveryConfig(_Model):
    enabled: bool = Field(False, description="WS-Discovery multicast on the agent's own network segment.")
    timeout_s: float = Field(3.0, gt=0, le=60)
    interval_s: float = Field(
        300.0, ge=5, le=86400, description="Probe again this often: cameras installed or powered on later, moved."
    )
    onvif_hosts: list[OnvifHost] = Field(
        default_factory=list, max_length=4096,
        description="ONVIF devices named by address (other subnets, VLANs): queried at start and every "
        "interval_s whether or not `enabled` is on, each with its own credentials or the onvif section's.",
    )

    @model_validator(mode="after")
    def _unique_hosts(self) -> DiscoveryConfig:
        seen: set[str] = set()
        for i, h in enumerate(self.onvif_hosts):
            if h.address in seen:
                raise ValueError(f"onvif_hosts.{i}: {h.address} is listed twice")
            seen.add(h.address)
        return self


class AgentConfig(_Model):
    hub_url: str = Field(description="Base URL of the hub, e.g. http://hub.example:8700")
    token: str = Field(min_length=1, max_length=4096, description="Bearer token issued by the hub.")
    id_prefix: str | None = Field(
        None, description="14-digit allocation prefix; default: the first 14+ digit prefix the hub grants."
    )
    data_dir: Path = Field(Path("./agent-data"), description="Registry and spool live here.")
    heartbeat_interval_s: float = Field(2.0, ge=0.5, le=60)
    segment_seconds: float = Field(4.0, ge=1, le=30)
    live_segment_seconds: float = Field(
        1.0, ge=0.5, le=10, description="Segment length of sub streams (live only: short for low latency)."
    )
    spool_quota_bytes: int = Field(2_000_000_000, ge=1_000_000, le=10**15)
    max_inflight: int = Field(4, ge=1, le=32, description="Segment uploads in flight at once.")
    stall_timeout_s: float = Field(5.0, ge=1, le=120, description="No packet this long = stalled stream.")
    read_batch_s: float = Field(
        0.2, ge=0, le=1, description="At the live edge, read each camera this often in one batch instead of "
        "waking per packet (about a fifth less CPU per camera; adds up to this much latency; 0 = off). "
        "RTSP over TCP only: UDP cameras are read per packet, since UDP has no flow control.",
    )
    live_read_batch_s: float = Field(
        0.05, ge=0, le=1, description="The same for sub streams, which serve live view: less delay, less saving.",
    )
    backoff_cap_s: float = Field(
        10.0, ge=1, le=300, description="Retries of a camera that never recorded (wrong URL, not installed yet) "
        "back off up to this far apart.",
    )
    healthy_backoff_cap_s: float = Field(
        3.0, ge=0.5, le=60, description="Retries of a camera that recorded and went away back off no further: "
        "it is expected back, and each second waited after its return is lost footage.",
    )
    probe_interval_s: float = Field(
        1.0, ge=0, le=30, description="While a camera is away, ask its RTSP service this often (one DESCRIBE, "
        "no demuxer) and reconnect as soon as it serves again; 0 = retry on the backoff alone.",
    )
    cameras: list[CameraConfig] = Field(default_factory=list, max_length=4096)
    onvif: OnvifConfig = Field(default_factory=OnvifConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    analysis: AnalysisConfig = Field(
        default_factory=lambda: AnalysisConfig(enabled=False),
        description="Frame analysis on the agent (the hub's checks and settings); off by default, when the hub "
        "analyses what it stores. When on, the hub takes this agent's findings and does not decode its cameras.",
    )

    @field_validator("hub_url")
    @classmethod
    def _hub(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {redact(v)!r}")
        return v.rstrip("/")

    @field_validator("id_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) != ids.ALLOCATION_PREFIX_LENGTH:
            raise ValueError(f"must be {ids.ALLOCATION_PREFIX_LENGTH} digits, got {len(v)}")
        return ids.check_prefix(v)

    @model_validator(mode="after")
    def _unique(self) -> AgentConfig:
        seen_ids: set[str] = set()
        seen_urls: set[str] = set()
        for i, cam in enumerate(self.cameras):
            key = strip_credentials(cam.url)
            if key in seen_urls:
                raise ValueError(f"cameras.{i}.url: camera {key!r} is listed twice")
            seen_urls.add(key)
            if cam.device_id is not None:
                if cam.device_id in seen_ids:
                    raise ValueError(f"cameras.{i}.device_id: {cam.device_id} is given to two cameras")
                seen_ids.add(cam.device_id)
        return self


def load(path: Path | str) -> AgentConfig:
    """Read and validate a YAML file; errors name the field path and the reason."""
    return load_model(path, AgentConfig)


# --- credentials --------------------------------------------------------------------------------

_SECRET_QUERY = re.compile(r"^(user(name)?|pass(word)?|pwd|passwd|token|auth|key|secret)$", re.I)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]*@")


def redact(url: str) -> str:
    """The URL with user, password and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_QUERY.match(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def strip_credentials(url: str) -> str:
    """The URL without user info or secret query values: a stable, shareable camera identity."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, v) for k, v in pairs if not _SECRET_QUERY.match(k)])
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path, query, ""))


def scrub(text: str, *urls: str) -> str:
    """Remove the given URLs' credentials (and any ``scheme://user:pass@``) from a message."""
    for url in urls:
        if url:
            text = text.replace(url, redact(url))
            parts = urlsplit(url)
            if parts.password:
                text = text.replace(parts.password, "***")
    return _USERINFO.sub(r"\g<scheme>***@", text)
