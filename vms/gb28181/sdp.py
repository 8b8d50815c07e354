"""The SDP subset GB/T 28181 uses in INVITE offers and answers (RFC 4566 plus y=, f=). Pure, no I/O.

Strict on what decides where media goes (one video m= line, a c= address, the port, the transport,
a 10-digit y=), lenient on what devices add that does not matter (unknown lines and attributes,
audio m= sections, bare LF line ends). Errors say what and where.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

SESSIONS = ("Play", "Playback", "Download")
DIRECTIONS = ("recvonly", "sendonly", "sendrecv", "inactive")
SETUPS = ("active", "passive", "actpass")
#: m= protocol → transport; RTP/AVP/TCP is a spelling some devices use for TCP/RTP/AVP.
PROTOCOLS: dict[str, str] = {"RTP/AVP": "UDP", "TCP/RTP/AVP": "TCP", "RTP/AVP/TCP": "TCP"}
_PROTO_OUT = {"UDP": "RTP/AVP", "TCP": "TCP/RTP/AVP"}
MAX_STREAM_NUMBER = 99
MAX_DOWNLOAD_SPEED = 1024
_SSRC = re.compile(r"[0-9]{10}")
_TOKEN = re.compile(r"[^\s]+")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_SNIP = 80


class SdpError(ValueError):
    """An SDP body that cannot say where media goes, or an Sdp that cannot be written."""


@dataclass(frozen=True, slots=True)
class Sdp:
    """One GB/T 28181 session description: the video stream's address, transport and identity."""

    session: str
    user: str
    address: str
    port: int
    transport: str
    direction: str
    setup: str | None = None
    ssrc: str | None = None
    payloads: tuple[tuple[int, str], ...] = ((96, "PS/90000"),)
    start: int = 0
    stop: int = 0
    uri: str | None = None
    stream_number: int | None = None
    download_speed: int | None = None
    f: str | None = None


def _snip(text: str) -> str:
    return repr(text if len(text) <= _SNIP else text[:_SNIP] + "...")


def _address(text: str, where: str) -> str:
    """The address of a ``c=`` line (``IN IP4 addr[/ttl]``)."""
    parts = text.split()
    if len(parts) != 3 or parts[0] != "IN":
        raise SdpError(f"{where}: expected 'IN IP4 address', got {_snip(text)}")
    if parts[1] == "IP6":
        raise SdpError(f"{where}: IPv6 connection addresses are not supported: {_snip(text)}")
    if parts[1] != "IP4":
        raise SdpError(f"{where}: unknown address type {_snip(parts[1])}")
    addr = parts[2].split("/", 1)[0]
    _check_host(addr, where)
    return addr


def _check_host(addr: str, where: str) -> None:
    if addr[:1].isdigit() and addr.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            raise SdpError(f"{where}: {_snip(addr)} is not an IPv4 address") from None
    elif not _HOST.fullmatch(addr):
        raise SdpError(f"{where}: {_snip(addr)} is neither an IPv4 address nor a host name")


def _int(text: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise SdpError(f"{what} {_snip(text)} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise SdpError(f"{what} {value} is not within {lo}..{hi}")
    return value


def parse(body: bytes) -> Sdp:
    """A GB/T 28181 SDP offer or answer."""
    text = body.decode("utf-8", errors="replace")
    session = user = None
    session_c: str | None = None
    start = stop = 0
    uri = ssrc = f = None
    video: list[tuple[int, str]] = []  # (line number, m= value) of video sections
    in_video = seen_m = False
    media_c: str | None = None
    port = 0
    transport = ""
    fmts: list[int] = []
    attrs: list[tuple[str, str]] = []
    for no, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"line {no} is not 'x=value': {_snip(line)}")
        kind, value = line[0], line[2:].strip()
        where = f"line {no} ({kind}=)"
        if kind == "m":
            seen_m = True
            in_video = value.split(" ", 1)[0] == "video"
            if in_video:
                video.append((no, value))
                port, transport, fmts = _media(value, where)
        elif kind == "v":
            if value != "0":
                raise SdpError(f"{where}: SDP version {_snip(value)}, expected 0")
        elif kind == "o":
            user = value.split(" ", 1)[0]
        elif kind == "s":
            session = value
        elif kind == "c":
            if not seen_m:
                session_c = _address(value, where)
            elif in_video:
                media_c = _address(value, where)
        elif kind == "t":
            parts = value.split()
            if len(parts) != 2:
                raise SdpError(f"{where}: expected 'start stop', got {_snip(value)}")
            start, stop = (_int(p, f"{where} time", 0, (1 << 63) - 1) for p in parts)
        elif kind == "u":
            uri = value
        elif kind == "y":
            if not _SSRC.fullmatch(value):
                raise SdpError(f"{where}: SSRC {_snip(value)} is not 10 digits")
            ssrc = value
        elif kind == "f":
            f = value
        elif kind == "a" and (in_video or not seen_m):
            name, _, val = value.partition(":")
            attrs.append((name.strip(), val.strip()))
    if not video:
        raise SdpError("no m=video line")
    if len(video) > 1:
        raise SdpError(f"{len(video)} m=video lines (lines {', '.join(str(n) for n, _ in video)}); expected one")
    if session is None:
        raise SdpError("no s= line")
    if user is None or not user:
        raise SdpError("no o= line (or an empty user in it)")
    address = media_c or session_c
    if address is None:
        raise SdpError("no c= line at session or video media level")
    direction = "sendrecv"
    setup = None
    rtpmap: list[tuple[int, str]] = []
    stream_number = download_speed = None
    for name, val in attrs:
        if name in DIRECTIONS:
            direction = name
        elif name == "setup":
            if val not in SETUPS:
                raise SdpError(f"a=setup:{_snip(val)}: expected one of {', '.join(SETUPS)}")
            setup = val
        elif name == "rtpmap":
            pt, _, enc = val.partition(" ")
            rtpmap.append((_int(pt, "a=rtpmap payload type", 0, 127), enc.strip()))
        elif name == "streamnumber":
            stream_number = _int(val, "a=streamnumber", 0, MAX_STREAM_NUMBER)
        elif name == "downloadspeed":
            download_speed = _int(val, "a=downloadspeed", 1, MAX_DOWNLOAD_SPEED)
    payloads = tuple(rtpmap) if rtpmap else tuple((pt, "") for pt in fmts)
    return Sdp(
        session=session,
        user=user,
        address=address,
        port=port,
        transport=transport,
        direction=direction,
        setup=setup,
        ssrc=ssrc,
        payloads=payloads,
        start=start,
        stop=stop,
        uri=uri,
        stream_number=stream_number,
        download_speed=download_speed,
        f=f,
    )


def _media(value: str, where: str) -> tuple[int, str, list[int]]:
    """Port, transport and formats of an ``m=video`` line."""
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"{where}: expected 'video PORT PROTO FMT...', got {_snip(value)}")
    port = _int(parts[1].split("/", 1)[0], f"{where} port", 0, 65535)
    transport = PROTOCOLS.get(parts[2].upper())
    if transport is None:
        raise SdpError(f"{where}: unknown protocol {_snip(parts[2])} (expected {', '.join(PROTOCOLS)})")
    fmts = [_int(p, f"{where} payload type", 0, 127) for p in parts[3:]]
    return port, transport, fmts


def _checked(value: str, what: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise SdpError(f"{what} {_snip(value)} holds a line break or NUL")
    return value


def build(sdp: Sdp) -> bytes:
    """The body of an offer or answer, CRLF lines; a TCP one also says ``a=connection:new``."""
    if sdp.transport not in _PROTO_OUT:
        raise SdpError(f"transport {sdp.transport!r} is neither UDP nor TCP")
    if sdp.direction not in DIRECTIONS:
        raise SdpError(f"direction {sdp.direction!r} is not one of {', '.join(DIRECTIONS)}")
    if sdp.setup is not None and sdp.setup not in SETUPS:
        raise SdpError(f"setup {sdp.setup!r} is not one of {', '.join(SETUPS)}")
    if not 0 <= sdp.port <= 65535:
        raise SdpError(f"port {sdp.port} is not within 0..65535")
    if sdp.ssrc is not None and not _SSRC.fullmatch(sdp.ssrc):
        raise SdpError(f"SSRC {sdp.ssrc!r} is not 10 digits")
    if not _TOKEN.fullmatch(sdp.user):
        raise SdpError(f"user {sdp.user!r} is empty or holds white space")
    if not sdp.session.strip():
        raise SdpError("empty session name")
    if not sdp.payloads:
        raise SdpError("no payload types")
    _check_host(sdp.address, "address")
    if sdp.stream_number is not None and not 0 <= sdp.stream_number <= MAX_STREAM_NUMBER:
        raise SdpError(f"stream number {sdp.stream_number} is not within 0..{MAX_STREAM_NUMBER}")
    if sdp.download_speed is not None and not 1 <= sdp.download_speed <= MAX_DOWNLOAD_SPEED:
        raise SdpError(f"download speed {sdp.download_speed} is not within 1..{MAX_DOWNLOAD_SPEED}")
    if not 0 <= sdp.start < 1 << 63 or not 0 <= sdp.stop < 1 << 63:
        raise SdpError(f"times {sdp.start} {sdp.stop} are not non-negative 63-bit numbers")
    for pt, enc in sdp.payloads:
        if not 0 <= pt <= 127 or not _TOKEN.fullmatch(enc):
            raise SdpError(f"payload {pt} {enc!r}: type not within 0..127 or encoding empty or with spaces")
    lines = [
        "v=0",
        f"o={sdp.user} 0 0 IN IP4 {sdp.address}",
        f"s={_checked(sdp.session.strip(), 'session name')}",
    ]
    if sdp.uri is not None:
        lines.append(f"u={_checked(sdp.uri.strip(), 'URI')}")
    lines += [
        f"c=IN IP4 {sdp.address}",
        f"t={sdp.start} {sdp.stop}",
        f"m=video {sdp.port} {_PROTO_OUT[sdp.transport]} {' '.join(str(pt) for pt, _ in sdp.payloads)}",
        f"a={sdp.direction}",
    ]
    lines += [f"a=rtpmap:{pt} {enc}" for pt, enc in sdp.payloads]
    if sdp.setup is not None:
        lines.append(f"a=setup:{sdp.setup}")
    if sdp.transport == "TCP":
        lines.append("a=connection:new")
    if sdp.stream_number is not None:
        lines.append(f"a=streamnumber:{sdp.stream_number}")
    if sdp.download_speed is not None:
        lines.append(f"a=downloadspeed:{sdp.download_speed}")
    if sdp.ssrc is not None:
        lines.append(f"y={sdp.ssrc}")
    if sdp.f is not None:
        lines.append(f"f={_checked(sdp.f.strip(), 'f= parameters')}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def ssrc_for(playback: bool, domain: str, session: int) -> str:
    """The 10-digit y= SSRC: 0 live / 1 playback, digits 4..8 of the domain, the session mod 10000."""
    if len(domain) < 8 or not domain[:8].isdigit() or not domain.isascii():
        raise SdpError(f"domain {_snip(domain)} does not start with 8 digits")
    if session < 0:
        raise SdpError(f"session number {session} is negative")
    return f"{1 if playback else 0}{domain[3:8]}{session % 10000:04d}"
