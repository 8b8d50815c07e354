"""SIP messages (the RFC 3261 subset GB/T 28181 uses): parse, frame, serialize. Pure, no I/O.

Strict where a lax parser would let a peer confuse us (Content-Length, start lines, header names,
CR/LF inside values), tolerant where field devices differ harmlessly (bare LF line ends, folded
headers, compact header names, leading CRLF keepalives). Errors say what and where and quote at
most 80 bytes of the input, because they end up in logs fed by whoever can reach the port.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeAlias
from urllib.parse import unquote

#: Largest header part accepted (start line and headers), on UDP and TCP alike.
MAX_HEADER_BYTES = 64 * 1024
#: Largest body accepted: bounds what a TCP peer can make us buffer.
MAX_BODY_BYTES = 1024 * 1024
_SNIP = 80

COMPACT: dict[str, str] = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
}
# Canonical spelling of the names we write or look at, so serialized messages read as usual.
_CANONICAL: dict[str, str] = {
    n.lower(): n
    for n in (
        *COMPACT.values(),
        "CSeq",
        "Max-Forwards",
        "Expires",
        "Authorization",
        "WWW-Authenticate",
        "User-Agent",
        "Allow",
        "Date",
        "Route",
        "Record-Route",
        "Event",
        "Subscription-State",
        "Min-Expires",
        "Server",
        "Proxy-Authorization",
        "Proxy-Authenticate",
    )
}
#: Headers every request and response must carry (RFC 3261 8.1.1; Max-Forwards is left out
#: because field devices omit it and nothing here forwards).
REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
#: What a response copies from its request besides the Vias, by lower-case name, in order.
_COPIED = {"from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}

REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    603: "Decline",
}
_CLASS_REASONS = {1: "Provisional", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error", 6: "Global Failure"}

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
_TOKEN_RE = re.compile(_TOKEN)
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([A-Za-z][A-Za-z0-9+.-]*:[^\s]+) SIP/2\.0", re.IGNORECASE)
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: ([^\r\n]*))?", re.IGNORECASE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]+")
_SPACE = re.compile(r"\s")
_SPACE_OR_QUOTE = re.compile(r'[\s"]')
_PARAM_SPACE = re.compile(r"\s*([;=])\s*")


class SipError(ValueError):
    """Malformed message; str() says what and where (never echoes more than 80 bytes of input)."""


def _snip(raw: bytes | str) -> str:
    """A repr of at most 80 bytes/characters of peer input, marked when cut."""
    cut = raw[:_SNIP]
    return repr(cut) + ("…" if len(raw) > _SNIP else "")


def _canonical(name: str) -> str:
    low = name.lower()
    if low in COMPACT:
        return COMPACT[low]
    return _CANONICAL.get(low, name)


@lru_cache(maxsize=256)
def _key(name: str) -> str:
    """The lower-case canonical form of a name looked up (the code's own few names: cached)."""
    return _canonical(name).lower()


@dataclass
class Headers:
    """Ordered multi-map of header lines; names compare case-insensitively, compact forms expanded."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pairs = [(_canonical(n), v) for n, v in self.pairs]

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        low = _key(name)
        for n, v in self.pairs:
            if n.lower() == low:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order, one per header line (see :func:`split_header_list`)."""
        low = _key(name)
        return [v for n, v in self.pairs if n.lower() == low]

    def set(self, name: str, value: str) -> None:
        """Replace all values of ``name`` by one, kept where the first one was (else appended)."""
        canon = _canonical(name)
        low = canon.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self.pairs:
            if n.lower() != low:
                out.append((n, v))
            elif not placed:
                out.append((canon, value))
                placed = True
        if not placed:
            out.append((canon, value))
        self.pairs = out

    def add(self, name: str, value: str) -> None:
        self.pairs.append((_canonical(name), value))

    def remove(self, name: str) -> None:
        low = _canonical(name).lower()
        self.pairs = [(n, v) for n, v in self.pairs if n.lower() != low]

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


@dataclass
class Request:
    method: str
    uri: str
    headers: Headers
    body: bytes = b""


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""


Message: TypeAlias = Request | Response


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Header part and the rest, or SipError if there is no blank line or the head is too big."""
    m = _HEADER_END.search(data, 0, MAX_HEADER_BYTES + 4)
    if m is None or m.start() > MAX_HEADER_BYTES:
        if len(data) > MAX_HEADER_BYTES:
            raise SipError(f"header part exceeds {MAX_HEADER_BYTES} bytes")
        raise SipError(f"no blank line ends the headers: {_snip(data)}")
    return data[: m.start()], data[m.end() :]


def _decode_head(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        # GB devices put GBK display names in From/To; SIP says UTF-8, the field says otherwise.
        return head.decode("gb18030")
    except UnicodeDecodeError as exc:
        bad = _snip(head[exc.start :])
        raise SipError(f"headers are neither UTF-8 nor GB18030 at byte {exc.start}: {bad}") from None


def _content_length(values: list[str]) -> int | None:
    """The one Content-Length, or None if absent; SipError if invalid, conflicting or too large."""
    if not values:
        return None
    if len(set(values)) > 1:
        raise SipError(f"conflicting Content-Length values: {_snip(', '.join(values))}")
    v = values[0]
    if not _DIGITS.fullmatch(v):
        what = "negative" if v.startswith("-") else "not a number"
        raise SipError(f"Content-Length {what}: {_snip(v)}")
    if len(v) > 9 or int(v) > MAX_BODY_BYTES:
        raise SipError(f"Content-Length {_snip(v)} exceeds {MAX_BODY_BYTES} bytes")
    return int(v)


def _parse_headers(lines: list[str]) -> Headers:
    pairs: list[tuple[str, str]] = []
    for no, line in enumerate(lines, start=2):
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 7.3.1)
            if not pairs:
                raise SipError(f"line {no}: continuation line before any header: {_snip(line)}")
            n, v = pairs[-1]
            pairs[-1] = (n, f"{v} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon:
            raise SipError(f"line {no}: header without a colon: {_snip(line)}")
        if not _TOKEN_RE.fullmatch(name):
            raise SipError(f"line {no}: invalid header name: {_snip(name)}")
        pairs.append((_canonical(name), value.strip(" \t")))
    headers = Headers()
    headers.pairs = pairs  # canonical already
    return headers


def _parse_start(line: str) -> Request | Response:
    if line.upper().startswith("SIP/"):
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise SipError(f"line 1: bad status line: {_snip(line)}")
        return Response(int(m.group(1)), (m.group(2) or "").strip(" \t"), Headers())  # SP/HTAB only (RFC 3261)
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise SipError(f"line 1: bad request line: {_snip(line)}")
    return Request(m.group(1), m.group(2), Headers())


def _check_required(msg: Message) -> None:
    present = {n.lower() for n, _ in msg.headers.pairs}
    missing = [n for n in REQUIRED if n.lower() not in present]
    if missing:
        raise SipError(f"missing header(s): {', '.join(missing)}")
    _seq, method = parse_cseq(msg.headers.get("CSeq") or "")
    if isinstance(msg, Request) and method != msg.method:
        raise SipError(f"CSeq method {_snip(method)} differs from the request method {_snip(msg.method)}")


def parse(data: bytes) -> Message:
    """Parse one datagram or one framed message.

    The body is cut to Content-Length (a shorter body is an error); without Content-Length (UDP
    only, RFC 3261 18.3) the rest is the body. Leading CRLFs are skipped (keepalives); a message
    that is only CRLFs is an error the transport may treat as a ping.
    """
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipError("empty message")
    head, rest = _split_head(data)
    text = _decode_head(head).replace("\r\n", "\n")
    if "\r" in text or "\x00" in text:
        raise SipError("stray CR or NUL in the header part")
    lines = text.split("\n")
    msg = _parse_start(lines[0])
    msg.headers = _parse_headers(lines[1:])
    length = _content_length(msg.headers.get_all("Content-Length"))
    if length is None:
        msg.body = rest
    elif len(rest) < length:
        raise SipError(f"body has {len(rest)} bytes, Content-Length says {length}")
    else:
        msg.body = rest[:length]
    _check_required(msg)
    return msg


def frame_stream(buffer: bytearray) -> bytes | None:
    """Pop one complete message (headers and Content-Length body) off the front of a TCP buffer.

    None if it is incomplete (leading CRLF keepalives are dropped meanwhile). SipError if the
    header part exceeds 64 KiB or Content-Length is missing, invalid or too large: the stream
    cannot be resynchronised then, so the caller should close the connection.
    """
    skip = 0
    while skip < len(buffer) and buffer[skip] in b"\r\n":
        skip += 1
    if skip:
        del buffer[:skip]
    m = _HEADER_END.search(buffer, 0, MAX_HEADER_BYTES + 4)
    if m is None or m.start() > MAX_HEADER_BYTES:
        if len(buffer) > MAX_HEADER_BYTES:
            raise SipError(f"header part exceeds {MAX_HEADER_BYTES} bytes")
        return None
    head = bytes(buffer[: m.start()])
    values = []
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            values.append(value.strip().decode("ascii", "replace"))
    length = _content_length(values)
    if length is None:
        raise SipError("message on a stream without Content-Length")
    end = m.end() + length
    if len(buffer) < end:
        return None
    out = bytes(buffer[:end])
    del buffer[:end]
    return out


def _check_value(name: str, value: str) -> None:
    if not _TOKEN_RE.fullmatch(name):
        raise SipError(f"invalid header name: {_snip(name)}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise SipError(f"header {name} has CR, LF or NUL in its value: {_snip(value)}")


def serialize(msg: Message) -> bytes:
    """Wire form, CRLF line ends; Content-Length is set from the body (any given one is dropped)."""
    if isinstance(msg, Request):
        if not _TOKEN_RE.fullmatch(msg.method) or not msg.uri or any(c.isspace() for c in msg.uri):
            raise SipError(f"bad request line: {_snip(msg.method + ' ' + msg.uri)}")
        start = f"{msg.method} {msg.uri} SIP/2.0"
    else:
        if not 100 <= msg.status <= 699:
            raise SipError(f"status {msg.status} is outside 100-699")
        _check_value("Reason", msg.reason)
        start = f"SIP/2.0 {msg.status} {msg.reason}"
    lines = [start]
    for name, value in msg.headers.items():
        if name.lower() == "content-length":
            continue
        _check_value(name, value)
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(msg.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + msg.body


def split_header_list(value: str) -> list[str]:
    """Split a comma-joined header value (``Via: a, b``), respecting quotes and ``<...>``."""
    if "," not in value and '"' not in value and "<" not in value:  # one element: the usual case
        one = value.strip()
        if not one:
            raise SipError(f"empty element in list {_snip(value)}")
        return [one]
    out: list[str] = []
    cur: list[str] = []
    quoted = angle = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch in "<>":
            angle = ch == "<"
        elif ch == "," and not quoted and not angle:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if quoted or angle:
        raise SipError(f"unterminated quote or '<' in {_snip(value)}")
    out.append("".join(cur).strip())
    if any(not part for part in out):
        raise SipError(f"empty element in list {_snip(value)}")
    return out


def _parse_params(text: str, where: str) -> dict[str, str | None]:
    """``;a=b;c;d="x y"`` into {a: b, c: None, d: 'x y'}; names lowercased."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if not text.startswith(";"):
        raise SipError(f"{where}: expected ';' before parameters: {_snip(text)}")
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        value = value.strip()
        if not _TOKEN_RE.fullmatch(name):
            raise SipError(f"{where}: bad parameter name: {_snip(part)}")
        if not eq:
            params[name] = None
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        elif not value or _SPACE_OR_QUOTE.search(value):
            raise SipError(f"{where}: bad value for parameter {name}: {_snip(part)}")
        params[name] = value
    return params


@dataclass(frozen=True)
class NameAddr:
    """``"Name" <sip:id@domain>;tag=x``: display name, URI and header parameters (valueless ones map to "")."""

    display: str
    uri: str
    params: dict[str, str]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def parse_name_addr(value: str) -> NameAddr:
    """From, To, Contact (one value). Without ``<>`` the ``;params`` belong to the header (RFC 3261 20.10)."""
    s = value.strip()
    if s == "*":
        return NameAddr("", "*", {})
    display = ""
    if s.startswith('"'):
        i, chars = 1, []
        while i < len(s) and s[i] != '"':
            if s[i] == "\\" and i + 1 < len(s):
                i += 1
            chars.append(s[i])
            i += 1
        if i >= len(s):
            raise SipError(f"unterminated display name in {_snip(value)}")
        display = "".join(chars)
        s = s[i + 1 :].lstrip()
        if not s.startswith("<"):
            raise SipError(f"quoted display name without <uri> in {_snip(value)}")
    if "<" in s:
        lt = s.index("<")
        if not display:
            display = s[:lt].strip()
        gt = s.find(">", lt)
        if gt < 0:
            raise SipError(f"missing '>' in {_snip(value)}")
        uri, rest = s[lt + 1 : gt].strip(), s[gt + 1 :].strip()
    else:
        uri, semi, rest = s.partition(";")
        uri = uri.strip()
        rest = semi + rest
        if " " in uri:
            raise SipError(f"URI with spaces needs <...>: {_snip(value)}")
    if ":" not in uri or not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):
        raise SipError(f"not a URI: {_snip(uri)}")
    params = {k: ("" if v is None else v) for k, v in _parse_params(rest, "name-addr").items()}
    return NameAddr(display, uri, params)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_name_addr(na: NameAddr) -> str:
    """Inverse of :func:`parse_name_addr` (always with ``<>``)."""
    if na.uri == "*":
        return "*"
    head = f"{_quote(na.display)} <{na.uri}>" if na.display else f"<{na.uri}>"
    return head + "".join(f";{k}={v}" if v else f";{k}" for k, v in na.params.items())


@dataclass(frozen=True)
class Via:
    """One Via value; ``params`` keep branch, received, rport (None when valueless)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")


_VIA = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+"  # sent-protocol
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"  # host: IPv6 reference, IPv4 or name
    r"(?:\s*:\s*([0-9]{1,5}))?\s*"
    r"(;.*)?",
    re.IGNORECASE | re.DOTALL,
)


def parse_via(value: str) -> Via:
    """One Via value (split a comma-joined line with :func:`split_header_list` or use :func:`vias`)."""
    m = _VIA.fullmatch(value.strip())
    if m is None:
        raise SipError(f"bad Via: {_snip(value)}")
    transport, host, port, rest = m.groups()
    if port is not None and not 1 <= int(port) <= 65535:
        raise SipError(f"Via port out of range: {_snip(value)}")
    rest = (rest or "").strip()
    if _SPACE.search(rest):  # rare: spaces around ';' and '='
        rest = _PARAM_SPACE.sub(r"\1", rest)
    params = _parse_params(rest, "Via")
    return Via(transport.upper(), host.strip("[]"), int(port) if port else None, params)


def format_via(v: Via) -> str:
    host = f"[{v.host}]" if ":" in v.host else v.host
    port = f":{v.port}" if v.port is not None else ""
    params = "".join(f";{k}" if val is None else f";{k}={val}" for k, val in v.params.items())
    return f"SIP/2.0/{v.transport} {host}{port}{params}"


def vias(headers: Headers) -> list[Via]:
    """Every Via in order, whether on separate lines or comma-joined."""
    return [parse_via(part) for line in headers.get_all("Via") for part in split_header_list(line)]


def uri_user(uri: str) -> str:
    """The user part of a sip/sips URI, unescaped; "" when there is none (``sip:3402000000``)."""
    s = uri.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1]
    scheme, colon, rest = s.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise SipError(f"not a sip: URI: {_snip(uri)}")
    userinfo, at, _hostport = rest.partition("@")
    if not at:
        return ""
    user = userinfo.partition(":")[0]  # drop a (deprecated) password
    return unquote(user)


def parse_cseq(value: str) -> tuple[int, str]:
    """``"1 REGISTER"`` -> (1, "REGISTER"); the number must fit 31 bits (RFC 3261 8.1.1.5)."""
    parts = value.split()
    if len(parts) != 2 or not _DIGITS.fullmatch(parts[0]) or not _TOKEN_RE.fullmatch(parts[1]):
        raise SipError(f"bad CSeq: {_snip(value)}")
    if len(parts[0]) > 10 or int(parts[0]) >= 2**31:
        raise SipError(f"CSeq number too large: {_snip(value)}")
    return int(parts[0]), parts[1]


def response_to(req: Request, status: int, reason: str | None = None, to_tag: str | None = None) -> Response:
    """A response copying Via (all, in order), From, To (plus ``to_tag`` if it has none), Call-ID, CSeq."""
    if not 100 <= status <= 699:
        raise SipError(f"status {status} is outside 100-699")
    vias: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for n, v in req.headers.pairs:  # one pass (names are kept canonical)
        low = n.lower()
        if low == "via":
            vias.append(("Via", v))
        elif low in _COPIED and low not in first:
            first[low] = v
    h = Headers()
    h.pairs = vias
    for low, name in _COPIED.items():
        value = first.get(low)
        if value is None:
            raise SipError(f"request has no {name} header to copy")
        if name == "To" and to_tag is not None and parse_name_addr(value).tag is None:
            value = f"{value};tag={to_tag}"
        h.pairs.append((name, value))
    text = reason if reason is not None else REASONS.get(status, _CLASS_REASONS[status // 100])
    return Response(status, text, h)


def new_tag() -> str:
    return secrets.token_hex(8)


def new_branch() -> str:
    """A branch with the RFC 3261 magic cookie, so peers treat transactions by branch."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_call_id() -> str:
    return secrets.token_hex(16)
