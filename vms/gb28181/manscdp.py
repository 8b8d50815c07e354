"""MANSCDP bodies (``Application/MANSCDP+xml``): decode, parse, build. Pure.

Field devices label their charset loosely (GB2312 that is GBK, UTF-8 that is GB18030), so decoding
trusts the bytes over the label where the label is provably wrong. XML from the network is parsed
with a size cap and without any DTD (no defusedxml in the venv), so entity bombs cannot expand.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

MAX_BODY_BYTES = 1024 * 1024
ROOTS = ("Query", "Control", "Notify", "Response")
_SNIP = 80
_PROLOG = re.compile(rb"""^\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["'][^>]*\?>""")
_PROLOG_TEXT = re.compile(r"^\s*<\?xml\b[^>]*\?>")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_GB_LABELS = {"gb2312": "gb2312", "gb_2312-80": "gb2312", "gbk": "gbk", "cp936": "gbk", "gb18030": "gb18030"}
_LABELS = {**_GB_LABELS, "utf-8": "utf-8", "utf8": "utf-8"}
_BUILD_ENCODINGS = {"GB2312": "gb2312", "GBK": "gbk", "GB18030": "gb18030", "UTF-8": "utf-8"}
#: A Keepalive exactly as devices send it (an optional prolog, then CmdType, SN, DeviceID and an
#: optional Status, in this order, each holding plain text): well-formed XML by construction, read
#: to the same Message as ``parse`` would. Any other shape (another order, an Info element, a
#: comment, an entity) goes through the XML parser and its checks.
_WS = rb"[ \t\r\n]*"  # XML's white space (\s would take form feeds the XML parser refuses)
_KEEPALIVE = re.compile(
    _WS + rb"""(?:<\?xml[ \t]+version[ \t]*=[ \t]*["']1\.0["']"""
    + rb"""[ \t]+encoding[ \t]*=[ \t]*["'][A-Za-z0-9._-]+["'][ \t]*\?>)?"""
    + _WS + b"<Notify>" + _WS + b"<CmdType>" + _WS + b"Keepalive" + _WS + b"</CmdType>"
    + _WS + b"<SN>" + _WS + rb"([0-9]{1,18})" + _WS + b"</SN>"
    + _WS + b"<DeviceID>" + _WS + rb"([A-Za-z0-9]{1,64})" + _WS + b"</DeviceID>"
    + rb"(?:" + _WS + b"<Status>" + _WS + rb"([A-Za-z]{1,16})" + _WS + rb"</Status>)?" + _WS + b"</Notify>" + _WS
)


class ManscdpError(ValueError):
    """A body we cannot read; str() says why and quotes at most 80 characters of it."""


def _snip(text: str | bytes) -> str:
    return repr(text[:_SNIP]) + ("…" if len(text) > _SNIP else "")


def _declared(body: bytes) -> str | None:
    m = _PROLOG.match(body[:512])
    return _LABELS.get(m.group(1).decode("ascii").lower()) if m else None


def _decodes(body: bytes, codec: str) -> str | None:
    try:
        return body.decode(codec)
    except UnicodeDecodeError:
        return None


def decode_body(body: bytes) -> str:
    """Text of a body, honouring the prolog's encoding unless the bytes show it is wrong.

    Order: UTF-8 strictly when it decodes to nothing but ASCII and characters from U+0800 up (a
    GB-coded text almost never does; a UTF-8 text labelled GBK/GB18030 very often decodes as
    mojibake under that label, so the label cannot go first); then the declared charset strictly;
    then UTF-8 whatever it contains; then GB18030. ManscdpError if none decodes.
    """
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    if body.isascii():  # every label reads ASCII alike (the usual Keepalive)
        return body.decode("ascii")
    utf8 = _decodes(body, "utf-8")
    if utf8 is not None and not any("\x80" <= c < "\u0800" for c in utf8):
        return utf8
    declared = _declared(body)
    if declared is not None and declared != "utf-8":
        text = _decodes(body, declared)
        if text is not None:
            return text
    if utf8 is not None:
        return utf8
    text = _decodes(body, "gb18030")
    if text is None:
        raise ManscdpError(f"body is neither {(declared or 'UTF-8').upper()}, UTF-8 nor GB18030")
    return text


@dataclass
class Message:
    """One MANSCDP body. ``fields``: the other top-level elements without children; ``items``: the
    ``<Item>``s of a list element (DeviceList, RecordList, ...) with child text flattened
    (nested children as ``Parent.Child``); ``list_num``: that list's ``Num`` attribute."""

    root: str
    cmd: str
    sn: int
    device_id: str
    fields: dict[str, str] = field(default_factory=dict)
    items: list[dict[str, str]] = field(default_factory=list)
    sum_num: int | None = None
    list_num: int | None = None


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def _flatten(el: ET.Element, prefix: str, out: dict[str, str]) -> None:
    for child in el:
        key = prefix + child.tag
        if len(child):
            _flatten(child, key + ".", out)
        else:
            out.setdefault(key, _text(child))


def _int(value: str, what: str) -> int:
    v = value.strip()
    if not v.isascii() or not v.isdigit() or len(v) > 18:
        raise ManscdpError(f"{what} is not a non-negative integer: {_snip(value)}")
    return int(v)


def parse(body: bytes) -> Message:
    """Parse a body; ManscdpError naming the problem for oversize, DTDs, bad XML, bad root, or
    a missing CmdType/SN/DeviceID, or a non-integer SN/SumNum/Num."""
    if len(body) > MAX_BODY_BYTES:
        raise ManscdpError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    ka = _KEEPALIVE.fullmatch(body)
    if ka is not None:  # the message of every device every minute, read without an XML parser
        sn, device_id, status = ka.groups()
        msg = Message("Notify", "Keepalive", int(sn), device_id.decode("ascii"))
        if status is not None:
            msg.fields["Status"] = status.decode("ascii")
        return msg
    text = decode_body(body)
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise ManscdpError("DOCTYPE/ENTITY declarations are refused")
    text = _PROLOG_TEXT.sub("", text, count=1).strip().rstrip("\x00").strip()
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError) as exc:
        raise ManscdpError(f"malformed XML: {exc}") from None
    if root.tag not in ROOTS:
        raise ManscdpError(f"root element {_snip(root.tag)} is not one of {', '.join(ROOTS)}")
    top: dict[str, ET.Element] = {}
    for child in root:
        top.setdefault(child.tag, child)
    values: dict[str, str] = {}
    for name in ("CmdType", "SN", "DeviceID"):
        el = top.get(name)
        if el is None:
            raise ManscdpError(f"<{root.tag}> lacks <{name}>")
        if len(el):
            raise ManscdpError(f"<{name}> must hold text, not elements")
        values[name] = _text(el)
        if not values[name]:
            raise ManscdpError(f"<{name}> is empty")
    if not _NAME.fullmatch(values["CmdType"]):
        raise ManscdpError(f"CmdType is not a name: {_snip(values['CmdType'])}")
    msg = Message(root.tag, values["CmdType"], _int(values["SN"], "SN"), values["DeviceID"])
    for tag, el in top.items():
        if tag in values:
            continue
        if len(el) == 0 and "Num" not in el.attrib:
            msg.fields[tag] = _text(el)
        elif not msg.items and msg.list_num is None and all(c.tag == "Item" for c in el):
            for item in el:
                flat: dict[str, str] = {}
                _flatten(item, "", flat)
                msg.items.append(flat)
            if "Num" in el.attrib:
                msg.list_num = _int(el.attrib["Num"], f"{tag} Num")
    if "SumNum" in msg.fields:
        msg.sum_num = _int(msg.fields["SumNum"], "SumNum")
    return msg


def _element(name: str, text: str) -> str:
    if not _NAME.fullmatch(name):
        raise ManscdpError(f"not an XML element name: {_snip(name)}")
    return f"<{name}>{escape(text)}</{name}>"


def build(
    root: str,
    cmd: str,
    sn: int,
    device_id: str,
    fields: dict[str, str] | None = None,
    encoding: str = "GB2312",
    *,
    items: list[dict[str, str]] | None = None,
    list_name: str = "DeviceList",
) -> bytes:
    """A body with an XML prolog naming ``encoding`` and encoded in it.

    ``fields`` follow DeviceID in order; ``items`` (for a catalog answer) become
    ``<list_name Num="n"><Item>…</Item></list_name>`` after them. Characters the charset lacks
    become character references, so any text survives.
    """
    codec = _BUILD_ENCODINGS.get(encoding.upper())
    if codec is None:
        raise ManscdpError(f"encoding must be one of {', '.join(_BUILD_ENCODINGS)}, got {encoding!r}")
    if root not in ROOTS:
        raise ManscdpError(f"root must be one of {', '.join(ROOTS)}, got {root!r}")
    if sn < 0:
        raise ManscdpError(f"SN must be non-negative, got {sn}")
    lines = [f'<?xml version="1.0" encoding="{encoding.upper()}"?>', f"<{root}>"]
    lines += [_element("CmdType", cmd), _element("SN", str(sn)), _element("DeviceID", device_id)]
    lines += [_element(k, v) for k, v in (fields or {}).items()]
    if items is not None:
        if not _NAME.fullmatch(list_name):
            raise ManscdpError(f"not an XML element name: {_snip(list_name)}")
        lines.append(f'<{list_name} Num="{len(items)}">')
        for item in items:
            lines.append("<Item>" + "".join(_element(k, v) for k, v in item.items()) + "</Item>")
        lines.append(f"</{list_name}>")
    lines.append(f"</{root}>")
    return ("\r\n".join(lines) + "\r\n").encode(codec, errors="xmlcharrefreplace")


@dataclass(frozen=True)
class CatalogItem:
    """One channel or node of a catalog; text fields "" when missing, coordinates None when invalid."""

    device_id: str
    name: str
    manufacturer: str
    model: str
    civil_code: str
    parent_id: str
    address: str
    status: str
    longitude: float | None
    latitude: float | None
    parental: bool
    event: str = ""  # Notify only: ON, OFF, VLOST, DEFECT, ADD, DEL, UPDATE


def _coordinate(value: str, limit: float) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) and -limit <= x <= limit else None


def catalog_items(msg: Message) -> list[CatalogItem]:
    """The items of a Catalog Response or Notify; items without a DeviceID are skipped (unaddressable)."""
    if msg.cmd != "Catalog" or msg.root not in ("Response", "Notify"):
        raise ManscdpError(f"not a catalog answer: <{msg.root}> {msg.cmd}")
    out = []
    for it in msg.items:
        if not it.get("DeviceID"):
            continue
        out.append(
            CatalogItem(
                device_id=it["DeviceID"],
                name=it.get("Name", ""),
                manufacturer=it.get("Manufacturer", ""),
                model=it.get("Model", ""),
                civil_code=it.get("CivilCode", ""),
                parent_id=it.get("ParentID", ""),
                address=it.get("Address", ""),
                status=it.get("Status", ""),
                longitude=_coordinate(it.get("Longitude", ""), 180.0),
                latitude=_coordinate(it.get("Latitude", ""), 90.0),
                parental=it.get("Parental", "") == "1",
                event=it.get("Event", ""),
            )
        )
    return out


def local_time(t: float) -> str:
    """``t`` (Unix seconds) as GB/T 28181 writes times in bodies: local time, seconds, no zone."""
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%S")


def parse_local_time(text: str) -> float | None:
    """A body's time (local unless it names a zone; a space for the T is taken) in Unix seconds, or None."""
    try:
        return dt.datetime.fromisoformat(text.strip().replace(" ", "T")).timestamp()
    except ValueError:
        return None
