"""WS-Discovery, the part ONVIF needs: a Probe for NetworkVideoTransmitters, multicast on every
interface (and unicast to addresses given), and the ProbeMatch answers, read leniently.

Cheap devices answer with a ProbeMatch outside its ProbeMatches element, without the AppSequence
header, sometimes without RelatesTo or Types. Such an answer is taken (its XAddrs are all the agent
needs) and what was unusual is logged, once per device and kind of oddity. Answers that name another
probe in RelatesTo, other messages (Hello, Bye) and anything with a DTD are dropped.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

WSD_GROUP = "239.255.255.250"
WSD_PORT = 3702
PROBE_ACTION = "http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe"
#: Device types an ONVIF camera (or NVR) announces; the probe asks for the first.
CAMERA_TYPES = ("NetworkVideoTransmitter", "Device")
#: The probe is sent twice (UDP may drop one), this far apart.
REPEAT_AFTER_S = 0.3
#: Oddities already logged, by (device address, oddity); bounded so a noisy network cannot grow it.
_TOLD_MAX = 1024
_told: set[tuple[str, str]] = set()


def probe_message(message_id: str) -> bytes:
    """A SOAP 1.2 Probe for NetworkVideoTransmitters, as ONVIF clients send it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" '
        'xmlns:dn="http://www.onvif.org/ver10/network/wsdl">'
        f'<s:Header><a:Action s:mustUnderstand="1">{PROBE_ACTION}</a:Action>'
        f"<a:MessageID>{message_id}</a:MessageID>"
        '<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To></s:Header>'
        "<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>"
    ).encode()


@dataclass
class ProbeMatch:
    """What an answer says: the device service URLs, and what about the answer was unusual."""

    xaddrs: list[str]
    unusual: list[str] = field(default_factory=list)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(parent: ET.Element | None, name: str) -> ET.Element | None:
    return None if parent is None else next((e for e in parent if _local(e.tag) == name), None)


def _text(parent: ET.Element | None, name: str) -> str | None:
    e = _child(parent, name)
    return None if e is None else (e.text or "").strip()


def parse_probe_match(data: bytes, message_id: str) -> ProbeMatch | None:
    """The camera XAddrs of an answer to the probe ``message_id``, or None if it is not one.

    Elements are matched by local name, so SOAP 1.1 or WS-Discovery 1.1 namespaces read the same."""
    if b"<!DOCTYPE" in data[:4096].upper():
        return None
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None
    if _local(root.tag) != "Envelope":
        return None
    header, body = _child(root, "Header"), _child(root, "Body")
    if body is None:
        return None
    unusual: list[str] = []
    action = _text(header, "Action")
    if action is None:
        unusual.append("no Action header")
    elif not action.rstrip("/").endswith(("/ProbeMatches", "/ProbeMatch")):
        return None  # a Hello, Bye or Probe
    relates = _text(header, "RelatesTo")
    if relates is None:
        unusual.append("no RelatesTo header")
    elif relates != message_id:
        return None  # an answer to another probe
    if _child(header, "AppSequence") is None:
        unusual.append("no AppSequence header")
    wrapper = _child(body, "ProbeMatches")
    matches = [e for e in (wrapper if wrapper is not None else body) if _local(e.tag) == "ProbeMatch"]
    if wrapper is None and matches:
        unusual.append("ProbeMatch without its ProbeMatches wrapper")
    xaddrs: list[str] = []
    for m in matches:
        types = _text(m, "Types")
        if not types:
            unusual.append("no Types")
        elif not any(t.rsplit(":", 1)[-1] in CAMERA_TYPES for t in types.split()):
            continue  # a printer or another kind of device
        first = next((xa for xa in (_text(m, "XAddrs") or "").split()
                      if urlsplit(xa).scheme in ("http", "https") and urlsplit(xa).hostname), None)
        if first is None:
            unusual.append("no http(s) XAddr")
        elif first not in xaddrs:
            xaddrs.append(first)
    return ProbeMatch(xaddrs, unusual) if xaddrs else None


def _tell(sender: str, match: ProbeMatch) -> None:
    fresh = [u for u in match.unusual if (sender, u) not in _told]
    if not fresh:
        return
    if len(_told) > _TOLD_MAX:
        _told.clear()
    _told.update((sender, u) for u in fresh)
    log.warning("WS-Discovery answer from %s taken although unusual: %s (XAddrs %s)", sender, ", ".join(fresh),
                " ".join(match.xaddrs))


def _send_multicast(sock: socket.socket, message: bytes) -> int:
    """The probe out of every interface (no route needed); the number it left by."""
    sent = 0
    for index, name in socket.if_nameindex():
        try:
            mreqn = struct.pack("4s4si", socket.inet_aton(WSD_GROUP), socket.inet_aton("0.0.0.0"), index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.sendto(message, (WSD_GROUP, WSD_PORT))
            sent += 1
        except OSError as exc:
            log.debug("WS-Discovery probe not sent on %s: %s", name, exc)
    return sent


def probe(timeout_s: float = 3.0, targets: Sequence[tuple[str, int]] = (), multicast: bool = True) -> list[str]:
    """XAddrs (device service URLs) of the ONVIF devices that answer a probe within ``timeout_s``:
    multicast on every interface and, to devices on other networks, unicast to ``targets``."""
    message_id = uuid.uuid4().urn
    message = probe_message(message_id)
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.bind(("0.0.0.0", 0))
        start = time.monotonic()
        deadline = start + timeout_s
        rounds = [start, start + REPEAT_AFTER_S]
        while True:
            now = time.monotonic()
            while rounds and rounds[0] <= now:
                rounds.pop(0)
                if multicast and not _send_multicast(sock, message):
                    log.warning("WS-Discovery probe left by no interface")
                for host, port in targets:
                    try:
                        sock.sendto(message, (host, port))
                    except OSError as exc:
                        log.warning("WS-Discovery probe to %s:%d not sent: %s", host, port, exc)
            if now >= deadline:
                return found
            wait = min(deadline, rounds[0] if rounds else deadline) - now
            if not select.select([sock], [], [], max(wait, 0))[0]:
                continue
            try:
                data, (addr, port) = sock.recvfrom(65535)
            except OSError:
                continue
            match = parse_probe_match(data, message_id)
            if match is None:
                continue
            if match.unusual:
                _tell(f"{addr}:{port}", match)
            found += [xa for xa in match.xaddrs if xa not in found]
