"""vms/gb28181/sdp.py: GB/T 28181 offers and answers as platforms and devices write them, errors, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.gb28181 import sdp
from vms.gb28181.sdp import Sdp, SdpError

PROPS = settings(max_examples=300, deadline=None)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# A live offer over UDP as the open platforms send it (several payload types, y= after the a= lines).
OFFER_UDP = crlf(
    "v=0\n"
    "o=32058500002000000001 0 0 IN IP4 10.1.2.3\n"
    "s=Play\n"
    "c=IN IP4 10.1.2.3\n"
    "t=0 0\n"
    "m=video 30000 RTP/AVP 96 97 98 99\n"
    "a=recvonly\n"
    "a=rtpmap:96 PS/90000\n"
    "a=rtpmap:98 H264/90000\n"
    "a=rtpmap:97 MPEG4/90000\n"
    "a=rtpmap:99 H265/90000\n"
    "y=0058500001\n"
)

# A playback offer over TCP, the platform listening (passive), with a 2022 stream number.
OFFER_TCP = crlf(
    "v=0\n"
    "o=32058500002000000001 0 0 IN IP4 10.1.2.3\n"
    "s=Playback\n"
    "u=32058501001320000001:0\n"
    "c=IN IP4 10.1.2.3\n"
    "t=1790000000 1790003600\n"
    "m=video 30002 TCP/RTP/AVP 96\n"
    "a=recvonly\n"
    "a=rtpmap:96 PS/90000\n"
    "a=setup:passive\n"
    "a=connection:new\n"
    "a=streamnumber:1\n"
    "y=1058500002\n"
    "f=v/2/5/25/1/4096a///\n"
)

# A device's answer: bare LF line ends, an unknown attribute, an empty f=, an audio section first.
ANSWER = (
    b"v=0\n"
    b"o=32058501001320000001 0 0 IN IP4 192.168.1.64\n"
    b"s=Play\n"
    b"c=IN IP4 192.168.1.64\n"
    b"t=0 0\n"
    b"m=audio 15062 RTP/AVP 8\n"
    b"c=IN IP4 192.168.1.99\n"
    b"a=sendonly\n"
    b"m=video 15060 RTP/AVP 96\n"
    b"a=sendonly\n"
    b"a=rtpmap:96 PS/90000\n"
    b"a=filesize:0\n"
    b"y=0058500001\n"
    b"f=\n"
)


def test_parse_udp_offer() -> None:
    s = sdp.parse(OFFER_UDP)
    assert s == Sdp(
        session="Play",
        user="32058500002000000001",
        address="10.1.2.3",
        port=30000,
        transport="UDP",
        direction="recvonly",
        ssrc="0058500001",
        payloads=((96, "PS/90000"), (98, "H264/90000"), (97, "MPEG4/90000"), (99, "H265/90000")),
    )


def test_parse_tcp_playback_offer() -> None:
    s = sdp.parse(OFFER_TCP)
    assert (s.session, s.transport, s.setup, s.port, s.ssrc) == ("Playback", "TCP", "passive", 30002, "1058500002")
    assert (s.start, s.stop, s.uri, s.stream_number) == (1790000000, 1790003600, "32058501001320000001:0", 1)
    assert s.f == "v/2/5/25/1/4096a///"


def test_parse_device_answer() -> None:
    s = sdp.parse(ANSWER)
    assert (s.address, s.port, s.direction, s.transport) == ("192.168.1.64", 15060, "sendonly", "UDP")
    assert (s.ssrc, s.f, s.payloads) == ("0058500001", "", ((96, "PS/90000"),))


def test_media_level_connection_wins_and_session_attributes_apply() -> None:
    body = OFFER_UDP.replace(b"a=recvonly\r\n", b"").replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")
    body = body.replace(b"a=rtpmap:96", b"c=IN IP4 10.9.9.9/127\r\na=rtpmap:96")
    s = sdp.parse(body)
    assert (s.address, s.direction) == ("10.9.9.9", "sendonly")


def test_build_tcp_writes_connection_new_and_round_trips() -> None:
    s = Sdp("Play", "32058501001320000001", "127.0.0.1", 40000, "TCP", "sendonly", setup="active", ssrc="0058500003")
    body = sdp.build(s)
    assert b"m=video 40000 TCP/RTP/AVP 96\r\n" in body and b"a=connection:new\r\n" in body
    assert b"a=setup:active\r\n" in body and body.endswith(b"y=0058500003\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert sdp.parse(body) == s


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (OFFER_UDP.replace(b"m=video 30000 RTP/AVP 96 97 98 99\r\n", b""), "no m=video line"),
        (OFFER_UDP + b"m=video 30004 RTP/AVP 96\r\n", "2 m=video lines"),
        (OFFER_UDP.replace(b"c=IN IP4 10.1.2.3\r\n", b""), "no c= line"),
        (OFFER_UDP.replace(b"c=IN IP4 10.1.2.3", b"c=IN IP6 ::1"), "IPv6 connection addresses are not supported"),
        (OFFER_UDP.replace(b"c=IN IP4 10.1.2.3", b"c=IN IP4 10.1.2.300"), "not an IPv4 address"),
        (OFFER_UDP.replace(b"30000", b"70000"), "port 70000 is not within 0..65535"),
        (OFFER_UDP.replace(b"30000", b"-1"), "port '-1' is not a number"),
        (OFFER_UDP.replace(b"RTP/AVP", b"RTP/SAVP"), "unknown protocol 'RTP/SAVP'"),
        (OFFER_UDP.replace(b"y=0058500001", b"y=005850001"), "SSRC '005850001' is not 10 digits"),
        (OFFER_UDP.replace(b"y=0058500001", b"y=00585000012"), "is not 10 digits"),
        (OFFER_UDP.replace(b"s=Play\r\n", b""), "no s= line"),
        (OFFER_UDP.replace(b"o=32058500002000000001 0 0 IN IP4 10.1.2.3\r\n", b""), "no o= line"),
        (OFFER_UDP.replace(b"v=0", b"v=1"), "SDP version '1'"),
        (OFFER_UDP.replace(b"t=0 0", b"t=0"), "expected 'start stop'"),
        (OFFER_UDP + b"garbage\r\n", "line 13 is not 'x=value'"),
        (OFFER_TCP.replace(b"a=setup:passive", b"a=setup:both"), "a=setup:'both'"),
        (OFFER_TCP.replace(b"a=streamnumber:1", b"a=streamnumber:x"), "a=streamnumber 'x' is not a number"),
    ],
)
def test_parse_refuses(body: bytes, message: str) -> None:
    with pytest.raises(SdpError, match=message.replace("(", r"\(").replace(".", r"\.")):
        sdp.parse(body)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transport": "SCTP"}, "neither UDP nor TCP"),
        ({"port": 65536}, "port 65536"),
        ({"ssrc": "12345"}, "not 10 digits"),
        ({"user": "a b"}, "white space"),
        ({"session": "Play\r\na=sendrecv"}, "line break"),
        ({"direction": "both"}, "direction 'both'"),
        ({"address": "::1"}, "neither an IPv4 address nor a host name"),
        ({"payloads": ()}, "no payload types"),
    ],
)
def test_build_refuses(change: dict[str, object], message: str) -> None:
    base = Sdp("Play", "32058500002000000001", "10.0.0.1", 5000, "UDP", "recvonly")
    with pytest.raises(SdpError, match=message):
        sdp.build(Sdp(**{**{f: getattr(base, f) for f in Sdp.__slots__}, **change}))


def test_ssrc_for() -> None:
    assert sdp.ssrc_for(False, "3205850000", 1) == "0585000001"
    assert sdp.ssrc_for(True, "3402000000", 123456) == "1200003456"
    with pytest.raises(SdpError, match="8 digits"):
        sdp.ssrc_for(False, "32058", 1)


_word = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


@st.composite
def sdps(draw: st.DrawFn) -> Sdp:
    transport = draw(st.sampled_from(["UDP", "TCP"]))
    return Sdp(
        session=draw(st.sampled_from(["Play", "Playback", "Download"])),
        user=draw(_word),
        address=draw(_ipv4),
        port=draw(st.integers(0, 65535)),
        transport=transport,
        direction=draw(st.sampled_from(sdp.DIRECTIONS)),
        setup=draw(st.none() | st.sampled_from(["active", "passive"])) if transport == "TCP" else None,
        ssrc=draw(st.none() | st.from_regex(r"\A[0-9]{10}\Z")),
        payloads=tuple(
            draw(st.lists(st.tuples(st.integers(0, 127), _word), min_size=1, max_size=4, unique_by=lambda p: p[0]))
        ),
        start=draw(st.integers(0, 2**40)),
        stop=draw(st.integers(0, 2**40)),
        uri=draw(st.none() | _word.map(lambda w: w + ":0")),
        stream_number=draw(st.none() | st.integers(0, 1)),
        download_speed=draw(st.none() | st.sampled_from([1, 2, 4, 8])),
        f=draw(st.none() | st.just("") | _word),
    )


@PROPS
@given(s=sdps())
def test_round_trip(s: Sdp) -> None:
    assert sdp.parse(sdp.build(s)) == s


@PROPS
@given(
    base=st.sampled_from([OFFER_UDP, OFFER_TCP, ANSWER]),
    at=st.integers(0, 10**6),
    cut=st.integers(0, 8),
    junk=st.binary(max_size=8),
)
def test_damaged_bodies_parse_or_raise_sdp_error(base: bytes, at: int, cut: int, junk: bytes) -> None:
    """Any damage to a real body either still parses into a valid description or raises SdpError."""
    at %= len(base)
    try:
        s = sdp.parse(base[:at] + junk + base[at + cut :])
    except SdpError:
        return
    assert 0 <= s.port <= 65535 and s.transport in ("UDP", "TCP") and s.address
    assert s.ssrc is None or (len(s.ssrc) == 10 and s.ssrc.isdigit())
