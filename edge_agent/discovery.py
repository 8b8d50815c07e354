"""Find ONVIF cameras: WS-Discovery probe, then ONVIF device and media queries per device.

WS-Discovery (``wsd.py``) multicasts on the agent's interfaces, and unicasts to addresses given;
answers of cheap devices that bend the standard are taken and their oddities logged. Each answer's
XAddr is queried with onvif-zeep for identity (manufacturer, model, serial: the registry's stable
key) and the stream URI of each media profile. Cameras without ONVIF come from the config as plain
RTSP URLs.

Multicast stays on one network segment, and in the field cameras often sit on other subnets or
VLANs than the agent; such devices are named by address (``discovery.onvif_hosts``,
``edge-agent discover --host``) and their device service is queried the same way, even when no
WS-Discovery answer comes. A named address is first asked one pre-authentication SOAP call, so an
installer is told plainly whether nothing answers there or something that is not ONVIF does.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from .config import OnvifHost, redact, strip_credentials
from .wsd import probe as wsd_probe

log = logging.getLogger(__name__)

#: Stream URI schemes the agent relays; anything else an ONVIF device names is refused.
STREAM_SCHEMES = ("rtsp", "rtsps")
#: Where ONVIF devices serve their device service (ONVIF Core; what onvif-zeep asks too).
DEVICE_SERVICE_PATH = "/onvif/device_service"
#: A call every ONVIF device answers before authentication (access class PRE_AUTH).
_PRE_AUTH_CALL = (
    b'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
    b'<s:Body><GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>'
)


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
    named: bool = Field(False, description="Named by address (config or --host), not found by WS-Discovery.")

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


def device_service_url(host: OnvifHost) -> str:
    return f"http://{host.address}{DEVICE_SERVICE_PATH}"


def check_device_service(xaddr: str, timeout_s: float = 5.0) -> str | None:
    """None if an ONVIF device service answers at ``xaddr``, else what answers there (or that nothing does).

    One GetSystemDateAndTime (no credentials needed): a SOAP envelope back, even a fault, or an HTTP 401
    is an ONVIF device; a refused or silent port, or a web page, is not, and the message says which."""
    where = redact(xaddr)
    try:
        r = httpx.post(xaddr, content=_PRE_AUTH_CALL, timeout=timeout_s,
                       headers={"Content-Type": "application/soap+xml; charset=utf-8"})
    except httpx.ConnectError as exc:
        return f"nothing answers at {where} ({exc}); is the device on, and is {urlsplit(xaddr).port} its ONVIF port?"
    except httpx.TimeoutException:
        return f"no answer from {where} within {timeout_s:g} s; is the address reachable from the agent?"
    except httpx.HTTPError as exc:
        return f"no usable answer from {where}: {type(exc).__name__}: {exc}"
    if r.status_code == 401:
        return None  # HTTP authentication in front of the service: the ONVIF queries authenticate
    body = r.content[:65536]
    kind = r.headers.get("content-type", "no content type").split(";")[0]
    if b"<!DOCTYPE" not in body[:4096].upper():
        try:
            if ET.fromstring(body).tag.rsplit("}", 1)[-1] == "Envelope":
                return None
        except ET.ParseError:
            pass
    return (f"not an ONVIF device service: {where} answered HTTP {r.status_code} {r.reason_phrase} ({kind}) "
            "instead of SOAP; check the host and port")


def query_named(host: OnvifHost, username: str, password: str, timeout_s: float = 5.0) -> DiscoveredCamera:
    """An ONVIF device named by address: checked to be one, then queried like a discovered device."""
    xaddr = device_service_url(host)
    problem = check_device_service(xaddr, timeout_s)
    if problem is not None:
        log.error("ONVIF device %s: %s", host.address, problem)
        return DiscoveredCamera(address=host.address, xaddr=xaddr, error=problem, named=True)
    cam = query_onvif(xaddr, username, password, timeout_s)
    cam.named, cam.address = True, host.address
    return cam


@dataclass(frozen=True)
class _Job:
    xaddr: str
    username: str
    password: str
    named: OnvifHost | None = None


def discover(username: str = "", password: str = "", timeout_s: float = 3.0,
             targets: Sequence[tuple[str, int]] = (), multicast: bool = True,
             hosts: Sequence[OnvifHost] = ()) -> list[DiscoveredCamera]:
    """Probe the network (and ``targets``) and query every ONVIF device found, and every device named
    in ``hosts`` (each with its own credentials, else ``username``/``password``), a few at a time.

    A device both named and found is queried once, as named. Without multicast or targets, no
    WS-Discovery probe is sent at all."""
    jobs = [_Job(device_service_url(h), username if h.username is None else h.username,
                 password if h.password is None else h.password, h) for h in hosts]
    named = {h.address for h in hosts}
    if multicast or targets:
        for xa in probe(timeout_s, targets, multicast):
            parts = urlsplit(xa)
            host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
            if f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}" not in named:
                jobs.append(_Job(xa, username, password))

    def run(job: _Job) -> DiscoveredCamera:
        if job.named is not None:
            return query_named(job.named, job.username, job.password, timeout_s)
        return query_onvif(job.xaddr, job.username, job.password, timeout_s)

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        return list(pool.map(run, jobs))


def _s(v: object) -> str | None:
    return None if v is None else str(v)
