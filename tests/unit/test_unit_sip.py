"""vms/gb28181/sip.py: RFC 3261 examples, a GB/T 28181 REGISTER as devices send it, the edge cases."""

from __future__ import annotations

import contextlib
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.gb28181 import sip
from vms.gb28181.sip import Headers, Request, Response, SipError

PROPS = settings(max_examples=200, deadline=None)


def crlf(text: str) -> bytes:
    """A message written with \\n in the source, sent with CRLF."""
    return text.replace("\n", "\r\n").encode("utf-8")


# RFC 3261 24.2, F1 (the body is ours: the RFC elides it; Content-Length fits it).
SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com\r\ns=-\r\n"
    b"c=IN IP4 pc33.atlanta.com\r\nt=0 0\r\nm=audio 3456 RTP/AVP 0\r\n"
)
INVITE = (
    crlf(
        "INVITE sip:bob@biloxi.com SIP/2.0\n"
        "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8\n"
        "Max-Forwards: 70\n"
        "To: Bob <sip:bob@biloxi.com>\n"
        "From: Alice <sip:alice@atlanta.com>;tag=1928301774\n"
        "Call-ID: a84b4c76e66710\n"
        "CSeq: 314159 INVITE\n"
        "Contact: <sip:alice@pc33.atlanta.com>\n"
        "Content-Type: application/sdp\n"
        f"Content-Length: {len(SDP)}\n\n"
    )
    + SDP
)

# RFC 3261 24.2, F6: a response after two proxies.
RINGING = crlf(
    "SIP/2.0 180 Ringing\n"
    "Via: SIP/2.0/UDP server10.biloxi.com;branch=z9hG4bK4b43c2ff8.1;received=192.0.2.3\n"
    "Via: SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2\n"
    "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8;received=192.0.2.1\n"
    "To: Bob <sip:bob@biloxi.com>;tag=a6c85cf\n"
    "From: Alice <sip:alice@atlanta.com>;tag=1928301774\n"
    "Call-ID: a84b4c76e66710\n"
    "Contact: <sip:bob@192.0.2.4>\n"
    "CSeq: 314159 INVITE\n"
    "Content-Length: 0\n\n"
)

# A GB/T 28181 camera's first REGISTER as WVP logs it (IDs from GB28181.md's layout).
GB_REGISTER = crlf(
    "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1371463273\n"
    "From: <sip:34020000001320000001@3402000000>;tag=2043466181\n"
    "To: <sip:34020000001320000001@3402000000>\n"
    "Call-ID: 1011047669\n"
    "CSeq: 1 REGISTER\n"
    "Contact: <sip:34020000001320000001@192.168.1.64:5060>\n"
    "Max-Forwards: 70\n"
    "User-Agent: IP Camera\n"
    "Expires: 3600\n"
    "Content-Length: 0\n\n"
)

KEEPALIVE_BODY = (
    b'<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>43</SN>\r\n'
    b"<DeviceID>34020000001320000001</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
)
# Compact names, no Content-Length (UDP: the rest is the body), bare LF line ends.
GB_KEEPALIVE_COMPACT = (
    b"MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\n"
    b"v: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK918\n"
    b"f: <sip:34020000001320000001@3402000000>;tag=1\n"
    b"t: <sip:34020000002000000001@3402000000>\n"
    b"i: 77@192.168.1.64\n"
    b"CSeq: 20 MESSAGE\n"
    b"c: Application/MANSCDP+xml\n"
    b"\n" + KEEPALIVE_BODY
)

# RFC 4475 3.1.1.1 "wsinv": odd whitespace, folding, compact forms, escaped quotes (body ours).
WSINV_BODY = b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\n"
WSINV = (
    crlf(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
        "TO :\n"
        " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
        'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\n'
        "  ;\n"
        "  tag = 98asjd8\n"
        "MaX-fOrWaRdS: 0068\n"
        "Call-ID: wsinv.ndaksdj@192.0.2.1\n"
        f"Content-Length   : {len(WSINV_BODY)}\n"
        "cseq: 0009\n"
        "  INVITE\n"
        "Via  : SIP  /   2.0\n"
        " /UDP\n"
        "    192.0.2.2;branch=390skdjuw\n"
        "s :\n"
        "NewFangledHeader:   newfangled value\n"
        " continued newfangled value\n"
        "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
        "Content-Type: application/sdp\n"
        "Route:\n"
        " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n"
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n"
        "  branch  =   z9hG4bK9ikj8  ,\n"
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n"
        " z9hG4bK30239\n"
        'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\n'
        "      newvalue ;\n"
        "  secondparam ; q = 0.33\n\n"
    )
    + WSINV_BODY
)


# --- parse: well-formed messages ------------------------------------------------------------


def test_rfc3261_invite() -> None:
    m = sip.parse(INVITE)
    assert isinstance(m, Request)
    assert (m.method, m.uri, m.body) == ("INVITE", "sip:bob@biloxi.com", SDP)
    assert m.headers.get("call-id") == "a84b4c76e66710"
    assert m.headers.get("CSEQ") == "314159 INVITE"
    assert sip.parse_cseq(m.headers.get("CSeq") or "") == (314159, "INVITE")
    to = sip.parse_name_addr(m.headers.get("To") or "")
    assert (to.display, to.uri, to.params, to.tag) == ("Bob", "sip:bob@biloxi.com", {}, None)
    fr = sip.parse_name_addr(m.headers.get("From") or "")
    assert fr.tag == "1928301774" and fr.display == "Alice"


def test_rfc3261_response_keeps_via_order() -> None:
    m = sip.parse(RINGING)
    assert isinstance(m, Response)
    assert (m.status, m.reason, m.body) == (180, "Ringing", b"")
    vs = sip.vias(m.headers)
    assert [v.host for v in vs] == ["server10.biloxi.com", "bigbox3.site3.atlanta.com", "pc33.atlanta.com"]
    assert vs[2].params == {"branch": "z9hG4bKnashds8", "received": "192.0.2.1"}


def test_gb28181_register() -> None:
    m = sip.parse(GB_REGISTER)
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert sip.uri_user(m.uri) == "34020000002000000001"
    to = sip.parse_name_addr(m.headers.get("To") or "")
    assert sip.uri_user(to.uri) == "34020000001320000001"
    via = sip.parse_via(m.headers.get("Via") or "")
    assert via == sip.Via("UDP", "192.168.1.64", 5060, {"rport": None, "branch": "z9hG4bK1371463273"})
    assert via.branch == "z9hG4bK1371463273"
    assert m.headers.get("Expires") == "3600" and m.body == b""


def test_compact_headers_no_content_length_bare_lf() -> None:
    m = sip.parse(GB_KEEPALIVE_COMPACT)
    assert isinstance(m, Request) and m.method == "MESSAGE"
    assert m.body == KEEPALIVE_BODY  # UDP without Content-Length: the rest is the body
    names = [n for n, _ in m.headers.items()]
    assert names == ["Via", "From", "To", "Call-ID", "CSeq", "Content-Type"]
    assert m.headers.get("content-type") == "Application/MANSCDP+xml"
    assert m.headers.get("c") == "Application/MANSCDP+xml"  # a compact name also works for lookup


def test_rfc4475_wsinv_whitespace_folding_compact() -> None:
    m = sip.parse(WSINV)
    assert isinstance(m, Request)
    assert m.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.body == WSINV_BODY
    assert m.headers.get("Max-Forwards") == "0068"
    assert sip.parse_cseq(m.headers.get("CSeq") or "") == (9, "INVITE")
    to = sip.parse_name_addr(m.headers.get("To") or "")
    assert to.uri == "sip:vivekg@chair-dnrc.example.com" and to.tag == "1918181833n"
    fr = sip.parse_name_addr(m.headers.get("From") or "")
    assert fr.display == 'J Rosenberg \\"' and fr.uri == "sip:jdrosen@example.com" and fr.tag == "98asjd8"
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    vs = sip.vias(m.headers)
    assert [(v.transport, v.host, v.branch) for v in vs] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = sip.parse_name_addr(m.headers.get("Contact") or "")
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": "", "q": "0.33"}


def test_content_length_cuts_a_longer_body() -> None:
    data = GB_REGISTER + b"trailing garbage"
    assert sip.parse(data).body == b""


def test_leading_crlf_is_skipped_and_bare_crlf_is_empty() -> None:
    assert isinstance(sip.parse(b"\r\n\r\n" + GB_REGISTER), Request)
    with pytest.raises(SipError, match="empty"):
        sip.parse(b"\r\n\r\n")


def test_status_line_without_reason_and_gbk_display_name() -> None:
    data = RINGING.replace(b"180 Ringing", b"200").replace(b"To: Bob", "To: 前门".encode("gbk"))
    m = sip.parse(data)
    assert isinstance(m, Response) and m.status == 200 and m.reason == ""
    assert sip.parse_name_addr(m.headers.get("To") or "").display == "前门"


# --- parse: malformed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "start",
    [
        "INVITE sip:bob@biloxi.com SIP/3.0",
        "INVITE  sip:bob@biloxi.com SIP/2.0",
        "INVITE sip:bob@biloxi.com",
        "INVITE bob SIP/2.0",
        "IN(VITE sip:bob@biloxi.com SIP/2.0",
        "HELLO",
        "SIP/2.0 99 Too Low",
        "SIP/2.0 2000 OK",
        "SIP/2.0 abc OK",
        "SIP/1.0 200 OK",
        "",
    ],
)
def test_bad_start_lines(start: str) -> None:
    data = RINGING.replace(b"SIP/2.0 180 Ringing", start.encode())
    with pytest.raises(SipError, match="line 1"):
        sip.parse(data)


@pytest.mark.parametrize(
    ("length", "match"),
    [
        ("-1", "negative"),
        ("abc", "not a number"),
        ("+5", "not a number"),
        ("2097152", "exceeds"),
        ("99999999999999999999", "exceeds"),
        ("100", "body has 0 bytes"),
    ],
)
def test_bad_content_length(length: str, match: str) -> None:
    data = GB_REGISTER.replace(b"Content-Length: 0", f"Content-Length: {length}".encode())
    with pytest.raises(SipError, match=match):
        sip.parse(data)


def test_conflicting_content_lengths() -> None:
    data = GB_REGISTER.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4") + b"abcd"
    with pytest.raises(SipError, match="conflicting"):
        sip.parse(data)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b"Max-Forwards: 70", b"Max-Forwards 70", "line 8: header without a colon"),
        (b"Max-Forwards: 70", b"Max Forwards: 70", "invalid header name"),
        (b"Max-Forwards: 70", b"Max-Forwards: 7\r0", "stray CR"),
        (b"Call-ID: 1011047669\r\n", b"", "missing header.*Call-ID"),
        (b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE", "CSeq method"),
        (b"CSeq: 1 REGISTER", b"CSeq: one REGISTER", "bad CSeq"),
        (b"CSeq: 1 REGISTER", b"CSeq: 4294967296 REGISTER", "too large"),
    ],
)
def test_malformed_headers(old: bytes, new: bytes, match: str) -> None:
    with pytest.raises(SipError, match=match):
        sip.parse(GB_REGISTER.replace(old, new))


def test_continuation_before_any_header() -> None:
    with pytest.raises(SipError, match="continuation"):
        sip.parse(GB_REGISTER.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via"))


def test_no_blank_line_and_oversized_head() -> None:
    with pytest.raises(SipError, match="no blank line"):
        sip.parse(GB_REGISTER[:-4])
    huge = GB_REGISTER.replace(b"User-Agent: IP Camera", b"X-Pad: " + b"a" * 70_000)
    with pytest.raises(SipError, match="exceeds 65536"):
        sip.parse(huge)


def test_non_text_headers() -> None:
    with pytest.raises(SipError, match="neither UTF-8 nor GB18030"):
        sip.parse(GB_REGISTER.replace(b"IP Camera", b"\xff\xff\xff"))


def test_errors_never_echo_more_than_80_bytes() -> None:
    for data in (b"X" * 10_000 + b"\r\n\r\n", b"INVITE " + b"Y" * 5000 + b"\r\n\r\n", b"Z" * 100):
        with pytest.raises(SipError) as info:
            sip.parse(data)
        text = str(info.value)
        assert max((len(run) for run in re.findall(r"[XYZ]+", text)), default=0) <= 80
        assert len(text) < 200


# --- frame_stream -------------------------------------------------------------------------

MESSAGE_WITH_BODY = GB_KEEPALIVE_COMPACT.replace(
    b"c: Application", f"l: {len(KEEPALIVE_BODY)}\nc: Application".encode()
)


def test_two_messages_in_one_buffer() -> None:
    buf = bytearray(GB_REGISTER + MESSAGE_WITH_BODY)
    assert sip.frame_stream(buf) == GB_REGISTER
    second = sip.frame_stream(buf)
    assert second == MESSAGE_WITH_BODY
    assert sip.parse(second).body == KEEPALIVE_BODY
    assert sip.frame_stream(buf) is None and buf == bytearray()


def test_message_split_in_two() -> None:
    cut = len(MESSAGE_WITH_BODY) - 10  # inside the body
    buf = bytearray(MESSAGE_WITH_BODY[:cut])
    assert sip.frame_stream(buf) is None
    assert len(buf) == cut  # nothing consumed while incomplete
    buf += MESSAGE_WITH_BODY[cut:]
    assert sip.frame_stream(buf) == MESSAGE_WITH_BODY


def test_keepalive_crlfs_are_dropped() -> None:
    buf = bytearray(b"\r\n\r\n")
    assert sip.frame_stream(buf) is None and buf == bytearray()
    buf += b"\r\n" + GB_REGISTER
    assert sip.frame_stream(buf) == GB_REGISTER


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (GB_REGISTER.replace(b"Content-Length: 0\r\n", b""), "without Content-Length"),
        (GB_REGISTER.replace(b"Content-Length: 0", b"Content-Length: -3"), "negative"),
        (GB_REGISTER.replace(b"Content-Length: 0", b"Content-Length: 9999999"), "exceeds"),
        (b"REGISTER sip:x SIP/2.0\r\nX-Pad: " + b"a" * 70_000, "exceeds 65536"),
    ],
)
def test_frame_stream_errors(data: bytes, match: str) -> None:
    with pytest.raises(SipError, match=match):
        sip.frame_stream(bytearray(data))


@PROPS
@given(st.lists(st.integers(0, len(GB_REGISTER) + len(MESSAGE_WITH_BODY) * 2), max_size=6))
def test_frame_stream_on_random_splits(cuts: list[int]) -> None:
    stream = GB_REGISTER + b"\r\n" + MESSAGE_WITH_BODY + MESSAGE_WITH_BODY
    buf = bytearray()
    out: list[bytes] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for a, b in itertools.pairwise(bounds):
        buf += stream[a:b]
        while (frame := sip.frame_stream(buf)) is not None:
            out.append(frame)
    assert out == [GB_REGISTER, MESSAGE_WITH_BODY, MESSAGE_WITH_BODY]
    assert buf == bytearray()


# --- serialize and round trips --------------------------------------------------------------


def test_serialize_sets_content_length() -> None:
    m = sip.parse(INVITE)
    m.body = b"x" * 3
    m.headers.add("l", "999")  # any given Content-Length is replaced
    data = sip.serialize(m)
    assert data.count(b"Content-Length") == 1 and data.endswith(b"Content-Length: 3\r\n\r\nxxx")
    assert sip.parse(data).body == b"xxx"


@pytest.mark.parametrize("data", [INVITE, RINGING, GB_REGISTER, WSINV, GB_KEEPALIVE_COMPACT])
def test_serialize_parse_is_stable(data: bytes) -> None:
    once = sip.serialize(sip.parse(data))
    assert sip.serialize(sip.parse(once)) == once


@pytest.mark.parametrize(
    "msg",
    [
        Request("INVITE", "sip:a@b", Headers([("X-Evil", "a\r\nVia: injected")])),
        Request("INVITE", "sip:a b", Headers()),
        Request("IN VITE", "sip:a@b", Headers()),
        Request("INVITE", "sip:a@b", Headers([("Bad Name", "x")])),
        Response(700, "Nope", Headers()),
        Response(200, "OK\r\n", Headers()),
    ],
)
def test_serialize_refuses_what_would_inject(msg: sip.Message) -> None:
    with pytest.raises(SipError):
        sip.serialize(msg)


_NAME = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~", min_size=2)
_VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"), max_size=40
).map(lambda s: s.strip(" \t"))


@st.composite
def messages(draw: st.DrawFn) -> sip.Message:
    method = draw(st.sampled_from(["REGISTER", "MESSAGE", "INVITE", "BYE", "SUBSCRIBE", "NOTIFY", "X-ODD"]))
    pairs = [
        ("Via", f"SIP/2.0/UDP 10.0.0.1:5060;branch={sip.new_branch()}"),
        ("From", f"<sip:34020000001320000001@3402000000>;tag={sip.new_tag()}"),
        ("To", "<sip:34020000002000000001@3402000000>"),
        ("Call-ID", sip.new_call_id()),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    extra = draw(st.lists(st.tuples(_NAME, _VALUE), max_size=8))
    pairs += [(n, v) for n, v in extra if n.lower() not in ("content-length", "cseq")]
    order = draw(st.permutations(range(len(pairs))))
    headers = Headers([pairs[i] for i in order])
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return Request(method, "sip:34020000001320000001@192.168.1.64:5060", headers, body)
    return Response(draw(st.integers(100, 699)), draw(_VALUE), headers, body)


@PROPS
@given(messages())
def test_serialize_parse_round_trip(msg: sip.Message) -> None:
    data = sip.serialize(msg)
    back = sip.parse(data)
    expected = Headers(msg.headers.items())
    expected.add("Content-Length", str(len(msg.body)))
    assert back.headers == expected
    assert back.body == msg.body
    if isinstance(msg, Request):
        assert isinstance(back, Request) and (back.method, back.uri) == (msg.method, msg.uri)
    else:
        assert isinstance(back, Response) and (back.status, back.reason) == (msg.status, msg.reason)
    buf = bytearray(data + data)
    assert sip.frame_stream(buf) == data and sip.frame_stream(buf) == data


@PROPS
@given(st.binary(max_size=400))
def test_parse_raises_only_sip_error(data: bytes) -> None:
    with contextlib.suppress(SipError):
        sip.parse(data)
    with contextlib.suppress(SipError):
        sip.frame_stream(bytearray(data))


@PROPS
@given(st.integers(0, len(GB_REGISTER) - 1), st.binary(min_size=1, max_size=3), st.booleans())
def test_mutated_register_parses_or_raises_sip_error(at: int, junk: bytes, truncate: bool) -> None:
    data = GB_REGISTER[:at] if truncate else GB_REGISTER[:at] + junk + GB_REGISTER[at + len(junk) :]
    with contextlib.suppress(SipError):
        sip.parse(data)


# --- Headers ------------------------------------------------------------------------------


def test_headers_multimap() -> None:
    h = Headers([("v", "a"), ("Subject", "s"), ("VIA", "b")])
    assert h.items() == [("Via", "a"), ("Subject", "s"), ("Via", "b")]
    assert h.get("via") == "a" and h.get_all("Via") == ["a", "b"] and h.get("Nope") is None
    h.add("X-Odd", "1")
    h.set("Via", "c")
    assert h.items() == [("Via", "c"), ("Subject", "s"), ("X-Odd", "1")]
    h.set("Expires", "0")
    assert h.items()[-1] == ("Expires", "0")
    assert "x-odd" in h and "Route" not in h
    h.remove("x-ODD")
    assert h.get_all("X-Odd") == []


# --- pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '"前门 Camera" <sip:34020000001320000001@3402000000>;tag=x1',
            ("前门 Camera", "sip:34020000001320000001@3402000000", {"tag": "x1"}),
        ),
        ("<sip:a@b;transport=udp>;expires=3600", ("", "sip:a@b;transport=udp", {"expires": "3600"})),
        ("sip:a@b;tag=1", ("", "sip:a@b", {"tag": "1"})),
        ("Bob Smith <sips:bob@x.com>", ("Bob Smith", "sips:bob@x.com", {})),
        ("*", ("", "*", {})),
        ("<sip:a@b>;lr;Q=0.5", ("", "sip:a@b", {"lr": "", "q": "0.5"})),
    ],
)
def test_parse_name_addr(value: str, expected: tuple[str, str, dict[str, str]]) -> None:
    na = sip.parse_name_addr(value)
    assert (na.display, na.uri, na.params) == expected
    assert sip.parse_name_addr(sip.format_name_addr(na)) == na


@pytest.mark.parametrize(
    "value",
    ['"unterminated <sip:a@b>', "<sip:a@b", "not a uri", '"x" sip:a@b', "<sip:a@b>;=x", "<sip:a@b>;a=b c", "a b c"],
)
def test_parse_name_addr_refuses(value: str) -> None:
    with pytest.raises(SipError):
        sip.parse_name_addr(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1",
            sip.Via("UDP", "192.168.1.64", 5060, {"rport": None, "branch": "z9hG4bK1"}),
        ),
        ("SIP/2.0/tcp host.example.com", sip.Via("TCP", "host.example.com", None, {})),
        (
            "SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK2;received=2001:db8::1;rport=5070",
            sip.Via("UDP", "2001:db8::9", 5070, {"branch": "z9hG4bK2", "received": "2001:db8::1", "rport": "5070"}),
        ),
    ],
)
def test_via_round_trip(value: str, expected: sip.Via) -> None:
    v = sip.parse_via(value)
    assert v == expected
    assert sip.parse_via(sip.format_via(v)) == v


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0 UDP host",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP host:0",
        "SIP/2.0/UDP host:70000",
        "SIP/2.0/UDP a, SIP/2.0/UDP b",
        "SIP/2.0/UDP host;branch=a b",
        "",
    ],
)
def test_parse_via_refuses(value: str) -> None:
    with pytest.raises(SipError):
        sip.parse_via(value)


def test_split_header_list() -> None:
    assert sip.split_header_list('"a, b" <sip:x@y>;p=1, <sip:z@w,q>') == ['"a, b" <sip:x@y>;p=1', "<sip:z@w,q>"]
    assert sip.split_header_list("  SIP/2.0/UDP h;branch=z9hG4bK1 ") == ["SIP/2.0/UDP h;branch=z9hG4bK1"]
    for bad in ('"open, x', "a,,b", "<sip:x", " \t"):
        with pytest.raises(SipError):
            sip.split_header_list(bad)


def test_via_with_spaces_around_separators_and_bad_parameter_values() -> None:
    assert sip.parse_via("SIP/2.0/UDP h:5060 ; rport ; branch = z9hG4bK1").params == {"rport": None,
                                                                                    "branch": "z9hG4bK1"}
    for bad in ("SIP/2.0/UDP h;branch=a\u3000b", 'SIP/2.0/UDP h;branch=a"b'):
        with pytest.raises(SipError, match="bad value for parameter branch"):
            sip.parse_via(bad)


@pytest.mark.parametrize(
    ("uri", "user"),
    [
        ("sip:34020000001320000001@3402000000", "34020000001320000001"),
        ("sip:34020000001320000001@192.168.1.64:5060;transport=udp", "34020000001320000001"),
        ("<sips:alice:secret@atlanta.com>", "alice"),
        ("SIP:%61lice@x", "alice"),
        ("sip:3402000000", ""),
    ],
)
def test_uri_user(uri: str, user: str) -> None:
    assert sip.uri_user(uri) == user


@pytest.mark.parametrize("uri", ["tel:+123", "34020000001320000001@3402000000", "http://x"])
def test_uri_user_refuses_other_schemes(uri: str) -> None:
    with pytest.raises(SipError, match="not a sip"):
        sip.uri_user(uri)


def test_response_to_copies_what_rfc3261_says() -> None:
    req = sip.parse(
        RINGING.replace(b"SIP/2.0 180 Ringing", b"INVITE sip:bob@biloxi.com SIP/2.0").replace(b";tag=a6c85cf", b"")
    )
    assert isinstance(req, Request)
    resp = sip.response_to(req, 486, to_tag="t1")
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.headers.get("To") == "Bob <sip:bob@biloxi.com>;tag=t1"
    for name in ("From", "Call-ID", "CSeq"):
        assert resp.headers.get(name) == req.headers.get(name)
    assert resp.headers.get("Contact") is None
    assert sip.parse(sip.serialize(resp)) == Response(
        486, "Busy Here", Headers([*resp.headers.items(), ("Content-Length", "0")])
    )
    # A To that already has a tag keeps it; the reason can be given; defaults cover the codes the server uses.
    in_dialog = sip.parse(INVITE.replace(b"To: Bob <sip:bob@biloxi.com>", b"To: <sip:bob@b>;tag=old"))
    assert isinstance(in_dialog, Request)
    tagged = sip.response_to(in_dialog, 200, "Fine", to_tag="new")
    assert tagged.headers.get("To") == "<sip:bob@b>;tag=old" and tagged.reason == "Fine"
    for code in (100, 200, 400, 401, 403, 404, 405, 408, 423, 481, 486, 488, 500, 501, 503):
        assert sip.response_to(req, code).reason == sip.REASONS[code]
    assert sip.response_to(req, 599).reason == "Server Error"
    with pytest.raises(SipError):
        sip.response_to(req, 42)


def test_response_to_needs_the_headers_it_copies() -> None:
    with pytest.raises(SipError, match="no Call-ID"):
        sip.response_to(Request("OPTIONS", "sip:a@b", Headers([("From", "<sip:a@b>"), ("To", "<sip:a@b>")])), 200)


def test_new_ids_are_fresh_and_well_formed() -> None:
    branches = {sip.new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") and re.fullmatch(r"[\w]+", b) for b in branches)
    assert len({sip.new_tag() for _ in range(100)}) == 100
    assert len({sip.new_call_id() for _ in range(100)}) == 100
