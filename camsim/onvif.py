"""Minimal ONVIF device responders and a WS-Discovery responder for simulated cameras.

Standard library only, so it runs inside the GStreamer process (system interpreter) and alone
(`python -m camsim.onvif ...`, e.g. inside a network namespace). Each camera gets its own HTTP port,
as if it were its own host, and answers just what an ingest agent needs from the real
`onvif-zeep` client: date/time, capabilities, services, device information, profiles and stream
URIs. WS-Security UsernameToken credentials are checked when configured, like a real camera.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import logging
import selectors
import signal
import socket
import struct
import sys
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

log = logging.getLogger("camsim.onvif")

MANUFACTURER = "VMS-Sim"
MODEL = "SimCam-H264"
FIRMWARE = "1.0.0"
DEVICE_PATH = "/onvif/device_service"
MEDIA_PATH = "/onvif/media_service"

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "ter": "http://www.onvif.org/ver10/error",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
    "dn": "http://www.onvif.org/ver10/network/wsdl",
}
_ENV_OPEN = "<s:Envelope " + " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items()) + ">"

#: Operations a client may call before authenticating (ONVIF Core, access class PRE_AUTH).
PRE_AUTH = frozenset({
    "GetSystemDateAndTime", "GetCapabilities", "GetServices", "GetServiceCapabilities",
    "GetWsdlUrl", "GetEndpointReference", "GetHostname",
})

WSD_GROUP = "239.255.255.250"
WSD_PORT = 3702


@dataclass(frozen=True)
class OnvifDevice:
    """What one simulated camera reports about itself over ONVIF."""

    device_id: str
    port: int
    rtsp_main: str
    rtsp_sub: str
    width: int = 640
    height: int = 360
    sub_width: int = 640
    sub_height: int = 360
    fps: int = 25
    bitrate_kbps: int = 1500
    sub_bitrate_kbps: int = 1500
    gov_length: int = 50
    profile: str = "high"
    sub_profile: str = "baseline"

    @property
    def serial(self) -> str:
        return f"SIM{self.device_id}"

    @property
    def endpoint(self) -> str:
        """Stable WS-Addressing endpoint reference, like a camera's MAC-derived UUID."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"camsim:{self.device_id}").urn


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def envelope(body: str, header: str = "") -> bytes:
    head = f'<?xml version="1.0" encoding="UTF-8"?>{_ENV_OPEN}<s:Header>{header}</s:Header>'
    return f"{head}<s:Body>{body}</s:Body></s:Envelope>".encode()


def soap_fault(subcode: str, reason: str, code: str = "s:Sender") -> bytes:
    return envelope(
        f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>"
        f'</s:Code><s:Reason><s:Text xml:lang="en">{escape(reason)}</s:Text></s:Reason></s:Fault>'
    )


def check_username_token(root: ET.Element, username: str, password: str) -> bool:
    """Verify a WS-Security UsernameToken (PasswordDigest or PasswordText) in the SOAP header."""
    token = root.find(".//wsse:Security/wsse:UsernameToken", NS)
    if token is None:
        return False
    user = token.findtext("wsse:Username", "", NS)
    pw_el = token.find("wsse:Password", NS)
    if user != username or pw_el is None:
        return False
    given = (pw_el.text or "").strip()
    if pw_el.get("Type", "").endswith("#PasswordText"):
        return given == password
    try:
        nonce = base64.b64decode(token.findtext("wsse:Nonce", "", NS).strip())
    except ValueError:
        return False
    created = token.findtext("wsu:Created", "", NS).strip()
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    return digest == given


def _datetime_xml(tag: str, t: datetime) -> str:
    return (
        f"<tt:{tag}><tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute>"
        f"<tt:Second>{t.second}</tt:Second></tt:Time><tt:Date><tt:Year>{t.year}</tt:Year>"
        f"<tt:Month>{t.month}</tt:Month><tt:Day>{t.day}</tt:Day></tt:Date></tt:{tag}>"
    )


def _profile_xml(dev: OnvifDevice, sub: bool) -> str:
    token, name = ("profile_sub", "SubStream") if sub else ("profile_main", "MainStream")
    width, height = (dev.sub_width, dev.sub_height) if sub else (dev.width, dev.height)
    bitrate = dev.sub_bitrate_kbps if sub else dev.bitrate_kbps
    h264_profile = "High" if (dev.sub_profile if sub else dev.profile) == "high" else "Baseline"
    return (
        f'<trt:Profiles token="{token}" fixed="true"><tt:Name>{name}</tt:Name>'
        '<tt:VideoSourceConfiguration token="vsc_1"><tt:Name>VideoSource</tt:Name><tt:UseCount>2</tt:UseCount>'
        f'<tt:SourceToken>vs_1</tt:SourceToken><tt:Bounds x="0" y="0" width="{dev.width}" height="{dev.height}"/>'
        "</tt:VideoSourceConfiguration>"
        f'<tt:VideoEncoderConfiguration token="vec_{token}"><tt:Name>{name}</tt:Name><tt:UseCount>1</tt:UseCount>'
        f"<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>{width}</tt:Width>"
        f"<tt:Height>{height}</tt:Height></tt:Resolution><tt:Quality>4</tt:Quality>"
        f"<tt:RateControl><tt:FrameRateLimit>{dev.fps}</tt:FrameRateLimit>"
        f"<tt:EncodingInterval>1</tt:EncodingInterval><tt:BitrateLimit>{bitrate}</tt:BitrateLimit>"
        f"</tt:RateControl><tt:H264><tt:GovLength>{dev.gov_length}</tt:GovLength>"
        f"<tt:H264Profile>{h264_profile}</tt:H264Profile></tt:H264>"
        "<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type><tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address>"
        "<tt:Port>0</tt:Port><tt:TTL>1</tt:TTL><tt:AutoStart>false</tt:AutoStart></tt:Multicast>"
        "<tt:SessionTimeout>PT60S</tt:SessionTimeout></tt:VideoEncoderConfiguration></trt:Profiles>"
    )


def respond(dev: OnvifDevice, base_url: str, action: str, request: ET.Element | None) -> str | None:
    """Body XML for one ONVIF operation, or None if this simulator does not implement it."""
    device_xaddr, media_xaddr = base_url + DEVICE_PATH, base_url + MEDIA_PATH
    if action == "GetSystemDateAndTime":
        now = datetime.now(UTC)
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>"
            "<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"{_datetime_xml('UTCDateTime', now)}{_datetime_xml('LocalDateTime', now)}"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )
    if action == "GetCapabilities":
        return (
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{device_xaddr}</tt:XAddr></tt:Device>"
            f"<tt:Media><tt:XAddr>{media_xaddr}</tt:XAddr><tt:StreamingCapabilities>"
            "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>"
            "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>"
            "</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )
    if action == "GetServices":
        services = ((NS["tds"], device_xaddr), (NS["trt"], media_xaddr))
        body = "".join(
            f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{xaddr}</tds:XAddr>"
            "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
            for ns, xaddr in services
        )
        return f"<tds:GetServicesResponse>{body}</tds:GetServicesResponse>"
    if action == "GetDeviceInformation":
        return (
            f"<tds:GetDeviceInformationResponse><tds:Manufacturer>{MANUFACTURER}</tds:Manufacturer>"
            f"<tds:Model>{MODEL}</tds:Model><tds:FirmwareVersion>{FIRMWARE}</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{dev.serial}</tds:SerialNumber><tds:HardwareId>{dev.device_id}</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse>"
        )
    if action == "GetHostname":
        return (
            "<tds:GetHostnameResponse><tds:HostnameInformation><tt:FromDHCP>false</tt:FromDHCP>"
            f"<tt:Name>cam-{dev.device_id}</tt:Name></tds:HostnameInformation></tds:GetHostnameResponse>"
        )
    if action == "GetProfiles":
        return f"<trt:GetProfilesResponse>{_profile_xml(dev, False)}{_profile_xml(dev, True)}</trt:GetProfilesResponse>"
    token = request.findtext(".//trt:ProfileToken", "", NS).strip() if request is not None else ""
    if action == "GetProfile":
        xml = _profile_xml(dev, token == "profile_sub").replace("trt:Profiles", "trt:Profile")
        return f"<trt:GetProfileResponse>{xml}</trt:GetProfileResponse>"
    if action == "GetStreamUri":
        uri = dev.rtsp_sub if token == "profile_sub" else dev.rtsp_main
        return (
            f"<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout>"
            "</trt:MediaUri></trt:GetStreamUriResponse>"
        )
    return None


class _DeviceHandler(BaseHTTPRequestHandler):
    """SOAP over HTTP for one camera; the device and settings are bound by OnvifServer."""

    server_version = "VMS-Sim-ONVIF/1"
    protocol_version = "HTTP/1.1"
    device: OnvifDevice
    owner: OnvifServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("onvif %s %s", self.device.device_id, format % args)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/soap+xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        owner, dev = self.owner, self.device
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not owner.is_online(dev.device_id):  # a dark camera answers nothing at all
            self.close_connection = True
            return
        if self.path.split("?")[0] not in (DEVICE_PATH, MEDIA_PATH):
            self._send(404, soap_fault("ter:ActionNotSupported", f"no service at {self.path}"))
            return
        try:
            root = ET.fromstring(data)
            body = root.find("s:Body", NS)
            request = body[0] if body is not None and len(body) else None
        except ET.ParseError:
            self._send(400, soap_fault("ter:WellFormed", "request is not well-formed XML"))
            return
        if request is None:
            self._send(400, soap_fault("ter:InvalidArgVal", "empty SOAP body"))
            return
        action = _local(request.tag)
        if (owner.username is not None and action not in PRE_AUTH
                and not check_username_token(root, owner.username, owner.password or "")):
            self._send(400, soap_fault("ter:NotAuthorized", "Sender not Authorized"))
            return
        host = self.headers.get("Host") or f"{owner.advertise_host}:{dev.port}"
        answer = respond(dev, f"http://{host}", action, request)
        if answer is None:
            self._send(400, soap_fault("ter:ActionNotSupported", f"{action} is not supported", "s:Receiver"))
        else:
            self._send(200, envelope(answer))


class OnvifServer:
    """One ONVIF HTTP endpoint per camera, all served from one selector thread (cheap when idle)."""

    def __init__(
        self,
        devices: list[OnvifDevice],
        bind: str = "127.0.0.1",
        advertise_host: str | None = None,
        username: str | None = None,
        password: str | None = None,
        is_online: Callable[[str], bool] | None = None,
    ) -> None:
        self.devices = devices
        self.bind = bind
        self.advertise_host = advertise_host or bind
        self.username = username or None
        self.password = password
        self.is_online: Callable[[str], bool] = is_online or (lambda _device_id: True)
        self._servers: list[ThreadingHTTPServer] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def xaddrs(self) -> dict[str, str]:
        """{device_id: device service URL} as announced over WS-Discovery."""
        return {d.device_id: f"http://{self.advertise_host}:{d.port}{DEVICE_PATH}" for d in self.devices}

    def start(self) -> None:
        for dev in self.devices:
            handler = type("BoundDeviceHandler", (_DeviceHandler,), {"device": dev, "owner": self})
            httpd = ThreadingHTTPServer((self.bind, dev.port), handler)
            httpd.daemon_threads = True
            httpd.timeout = 0.1
            self._servers.append(httpd)
        self._thread = threading.Thread(target=self._serve, name="camsim-onvif", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            for httpd in self._servers:
                sel.register(httpd.fileno(), selectors.EVENT_READ, httpd)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    key.data.handle_request()  # readable: accepts at once, handler runs on its own thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for httpd in self._servers:
            httpd.server_close()


# --------------------------------------------------------------------------- WS-Discovery


def probe_matches_xml(device_id: str, endpoint: str, xaddr: str, relates_to: str) -> bytes:
    """A ProbeMatches message for one camera (cameras answer one message per device)."""
    scopes = " ".join((
        "onvif://www.onvif.org/type/video_encoder", "onvif://www.onvif.org/Profile/Streaming",
        f"onvif://www.onvif.org/name/{MANUFACTURER}", f"onvif://www.onvif.org/hardware/{MODEL}",
        "onvif://www.onvif.org/location/country/china", f"onvif://www.onvif.org/serial/{device_id}",
    ))
    header = (
        "<wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action>"
        f"<wsa:MessageID>{uuid.uuid4().urn}</wsa:MessageID><wsa:RelatesTo>{escape(relates_to)}</wsa:RelatesTo>"
        "<wsa:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>"
        '<d:AppSequence InstanceId="1" MessageNumber="1"/>'
    )
    body = (
        f"<d:ProbeMatches><d:ProbeMatch><wsa:EndpointReference><wsa:Address>{endpoint}</wsa:Address>"
        "</wsa:EndpointReference><d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>"
        f"<d:Scopes>{scopes}</d:Scopes><d:XAddrs>{escape(xaddr)}</d:XAddrs>"
        "<d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches>"
    )
    return envelope(body, header)


def probe_wants_us(probe: ET.Element) -> bool:
    """True if the Probe names no types, or a type an ONVIF camera has."""
    types = (probe.findtext("d:Types", "", NS) or "").split()
    return not types or any(t.rsplit(":", 1)[-1] in ("NetworkVideoTransmitter", "Device") for t in types)


class DiscoveryResponder:
    """Answers WS-Discovery Probes on UDP 3702 (multicast 239.255.255.250) for every camera."""

    def __init__(self, xaddrs: dict[str, str], bind: str = "0.0.0.0", port: int = WSD_PORT) -> None:
        self.xaddrs = xaddrs
        self.bind = bind
        self.port = port
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(AttributeError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.bind, self.port))
        joined = 0
        for index, _name in socket.if_nameindex():  # join on every interface: no default route needed
            mreqn = struct.pack("4s4si", socket.inet_aton(WSD_GROUP), socket.inet_aton("0.0.0.0"), index)
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                joined += 1
            except OSError as exc:
                log.debug("cannot join %s on interface %d: %s", WSD_GROUP, index, exc)
        if not joined:
            log.warning("WS-Discovery joined no interface; only unicast probes will be answered")
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="camsim-wsd", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        endpoints = {d: uuid.uuid5(uuid.NAMESPACE_URL, f"camsim:{d}").urn for d in self.xaddrs}
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                root = ET.fromstring(data)
            except ET.ParseError:
                continue
            probe = root.find("s:Body/d:Probe", NS)
            message_id = (root.findtext("s:Header/wsa:MessageID", "", NS) or "").strip()
            if probe is None or not message_id or not probe_wants_us(probe):
                continue
            for device_id, xaddr in self.xaddrs.items():
                reply = probe_matches_xml(device_id, endpoints[device_id], xaddr, message_id)
                with contextlib.suppress(OSError):
                    self._sock.sendto(reply, addr)
            log.debug("answered probe %s from %s", message_id, addr)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self._sock:
            self._sock.close()


# --------------------------------------------------------------------------- standalone use


def main(argv: list[str] | None = None) -> int:
    """Serve ONVIF devices (and optionally WS-Discovery) alone, e.g. inside a network namespace."""
    ap = argparse.ArgumentParser(prog="python -m camsim.onvif", description=main.__doc__)
    ap.add_argument("--device-id", action="append", required=True, help="repeat per camera")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--advertise-host", default=None)
    ap.add_argument("--base-port", type=int, default=18000)
    ap.add_argument("--rtsp-base", default="rtsp://127.0.0.1:8554/cam", help="stream URI = base/<device_id>")
    ap.add_argument("--username", default=None)
    ap.add_argument("--password", default=None)
    ap.add_argument("--discovery", action="store_true")
    ap.add_argument("--discovery-bind", default="0.0.0.0")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    devices = [
        OnvifDevice(device_id=d, port=args.base_port + i, rtsp_main=f"{args.rtsp_base}/{d}",
                    rtsp_sub=f"{args.rtsp_base}/{d}")
        for i, d in enumerate(args.device_id)
    ]
    server = OnvifServer(devices, bind=args.bind, advertise_host=args.advertise_host,
                         username=args.username, password=args.password)
    server.start()
    responder = DiscoveryResponder(server.xaddrs(), bind=args.discovery_bind) if args.discovery else None
    if responder:
        responder.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    if responder:
        responder.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
