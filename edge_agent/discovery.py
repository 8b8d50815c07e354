"""Find ONVIF cameras: WS-Discovery probe, then ONVIF device and media queries per device.

WS-Discovery (``wsd.py``) multicasts on the agent's interfaces, and unicasts to addresses given;
answers of cheap devices that bend the standard are taken and their oddities logged. Each answer's
XAddr is queried with onvif-zeep for identity (manufacturer, model, serial: the registry's stable
key) and the stream URI of each media profile. Cameras without ONVIF come from the config as plain
RTSP URLs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from .config import redact, strip_credentials
from .wsd import probe as wsd_probe

log = logging.getLogger(__name__)

#: Stream URI schemes the agent relays; anything else an ONVIF device names is refused.
STREAM_SCHEMES = ("rtsp", "rtsps")


class Profile(BaseModel):
    token: str
    name: str = ""
    encoding: str | None = None
    width: int | None = None
    height: int | None = None
    stream_uri: str | None = Field(None, description="RTSP URI without credentials.")
    refused_uri: str | None = Field(
        None, description="Why the stream URI the device named was refused (not rtsp/rtsps, or not on the "
        "ONVIF device's own host); stream_uri is then empty.")


class DiscoveredCamera(BaseModel):
    address: str = Field(description="Host (and port) of the ONVIF device service.")
    xaddr: str = ""
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    profiles: list[Profile] = Field(default_factory=list)
    error: str | None = Field(None, description="Why the ONVIF queries failed, if they did.")

    def main_stream(self) -> str | None:
        return next((p.stream_uri for p in self.profiles if p.stream_uri), None)

    def sub_stream(self) -> str | None:
        uris = [p.stream_uri for p in self.profiles if p.stream_uri]
        return uris[1] if len(uris) > 1 else None


def probe(timeout_s: float = 3.0, targets: Sequence[tuple[str, int]] = (), multicast: bool = True) -> list[str]:
    """XAddrs (device service URLs) of NetworkVideoTransmitters answering a WS-Discovery probe
    (multicast, and unicast to ``targets``: (host, port) of devices on other networks)."""
    return wsd_probe(timeout_s, targets, multicast)


def query_onvif(xaddr: str, username: str = "", password: str = "", timeout_s: float = 5.0) -> DiscoveredCamera:
    """Identity and per-profile stream URIs of one ONVIF device; errors are reported, not raised."""
    parts = urlsplit(xaddr)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cam = DiscoveredCamera(address=f"{host}:{port}", xaddr=xaddr)
    try:
        from onvif import ONVIFCamera
        from zeep.transports import Transport

        dev = ONVIFCamera(host, port, username, password, transport=Transport(timeout=timeout_s,
                                                                              operation_timeout=timeout_s))
        info = dev.devicemgmt.GetDeviceInformation()
        cam.manufacturer = _s(getattr(info, "Manufacturer", None))
        cam.model = _s(getattr(info, "Model", None))
        cam.serial = _s(getattr(info, "SerialNumber", None))
        cam.firmware = _s(getattr(info, "FirmwareVersion", None))
        media = dev.create_media_service()
        for prof in media.GetProfiles() or []:
            p = Profile(token=str(prof.token), name=_s(getattr(prof, "Name", None)) or "")
            venc = getattr(prof, "VideoEncoderConfiguration", None)
            if venc is not None:
                p.encoding = _s(getattr(venc, "Encoding", None))
                res = getattr(venc, "Resolution", None)
                if res is not None:
                    p.width, p.height = int(res.Width), int(res.Height)
            try:
                req: Any = media.create_type("GetStreamUri")
                req.ProfileToken = prof.token
                req.StreamSetup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
                uri = media.GetStreamUri(req).Uri
                stream = strip_credentials(str(uri)) if uri else None
                problem = stream_problem(stream, host) if stream else None
                if problem:
                    p.refused_uri = problem
                    log.error("ONVIF %s profile %s: refusing its stream URI %s: %s", cam.address, p.token,
                              redact(stream or ""), problem)
                else:
                    p.stream_uri = stream
            except Exception as exc:
                log.warning("ONVIF %s profile %s: GetStreamUri failed: %s", cam.address, p.token, exc)
            cam.profiles.append(p)
    except Exception as exc:  # a broken device must not stop discovery of the others
        cam.error = describe_error(exc, username)
        log.warning("ONVIF %s: %s", redact(xaddr), cam.error)
    return cam


def stream_problem(uri: str, onvif_host: str) -> str | None:
    """Why a stream URI an ONVIF device names may not be relayed, or None if it may.

    Only ``rtsp``/``rtsps`` on the device's own host: a device must not send the agent (and the
    site's ONVIF credentials, which go into the URI) to another host or another kind of URL.
    """
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme.lower() not in STREAM_SCHEMES:
        return f"scheme {parts.scheme or '(none)'!r} is not one of {', '.join(STREAM_SCHEMES)}"
    if not host or host.lower() != onvif_host.strip("[]").lower():
        return f"host {host or '(none)'!r} is not the ONVIF device's own address {onvif_host!r}"
    return None


def host_of(address: str) -> str:
    """The host of ``host[:port]`` (IPv6 in brackets), lower case; the address itself if it has none."""
    try:
        return (urlsplit("//" + address).hostname or address).lower()
    except ValueError:
        return address.lower()


def describe_error(exc: BaseException, username: str = "") -> str:
    """A message an installer can act on: authentication failures say so plainly."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "not authorized" in low or "notauthorized" in low or "401" in low:
        who = f"user {username!r}" if username else "no credentials"
        return (f"not authorized: the camera refused {who}; check the ONVIF username or password "
                f"({text})")
    return text


def discover(username: str = "", password: str = "", timeout_s: float = 3.0,
             targets: Sequence[tuple[str, int]] = (), multicast: bool = True) -> list[DiscoveredCamera]:
    """Probe the network (and ``targets``) and query every ONVIF device found, a few at a time."""
    xaddrs = probe(timeout_s, targets, multicast)
    if not xaddrs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(xaddrs))) as pool:
        return list(pool.map(lambda xa: query_onvif(xa, username, password, timeout_s), xaddrs))


def _s(v: object) -> str | None:
    return None if v is None else str(v)
