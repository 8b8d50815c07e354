"""vms/gb28181/manscdp.py: bodies as field devices send them (charsets labelled right and wrong), hostile XML."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vms.gb28181 import manscdp
from vms.gb28181.manscdp import CatalogItem, ManscdpError

PROPS = settings(max_examples=150, deadline=None)
NVR = "34020000001180000001"


def catalog_body(items: list[tuple[str, str, str]], sum_num: int, sn: int = 17, label: str = "GB2312") -> str:
    """A catalog response shaped like a Hikvision NVR's: CRLF, tabs, every Item field present."""
    parts = [
        f'<?xml version="1.0" encoding="{label}"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n'
        f'<DeviceID>{NVR}</DeviceID>\r\n<SumNum>{sum_num}</SumNum>\r\n<DeviceList Num="{len(items)}">\r\n'
    ]
    for device_id, name, status in items:
        parts.append(
            "<Item>\r\n"
            f"\t<DeviceID>{device_id}</DeviceID>\r\n\t<Name>{name}</Name>\r\n\t<Manufacturer>Hikvision</Manufacturer>\r\n"
            "\t<Model>IP Camera</Model>\r\n\t<Owner>Owner</Owner>\r\n\t<CivilCode>3402000000</CivilCode>\r\n"
            "\t<Address>城厢镇人民路1号</Address>\r\n\t<Parental>0</Parental>\r\n"
            f"\t<ParentID>{NVR}</ParentID>\r\n\t<SafetyWay>0</SafetyWay>\r\n\t<RegisterWay>1</RegisterWay>\r\n"
            "\t<Secrecy>0</Secrecy>\r\n"
            f"\t<Status>{status}</Status>\r\n\t<Longitude>121.1098</Longitude>\r\n\t<Latitude>31.4577</Latitude>\r\n"
            "\t<Info>\r\n\t\t<PTZType>1</PTZType>\r\n\t</Info>\r\n</Item>\r\n"
        )
    parts.append("</DeviceList>\r\n</Response>\r\n")
    return "".join(parts)


CHANNELS = [
    ("34020000001320000001", "前门摄像头", "ON"),
    ("34020000001320000002", "停车场入口", "OFF"),
    ("34020000001320000003", "南门", "ON"),
]


def test_hikvision_catalog_in_gb2312() -> None:
    body = catalog_body(CHANNELS, 3).encode("gb2312")
    msg = manscdp.parse(body)
    assert (msg.root, msg.cmd, msg.sn, msg.device_id) == ("Response", "Catalog", 17, NVR)
    assert (msg.sum_num, msg.list_num, len(msg.items)) == (3, 3, 3)
    assert msg.fields == {"SumNum": "3"}
    assert msg.items[0]["Info.PTZType"] == "1" and msg.items[0]["Owner"] == "Owner"
    items = manscdp.catalog_items(msg)
    assert items[0] == CatalogItem(
        device_id="34020000001320000001",
        name="前门摄像头",
        manufacturer="Hikvision",
        model="IP Camera",
        civil_code="3402000000",
        parent_id=NVR,
        address="城厢镇人民路1号",
        status="ON",
        longitude=121.1098,
        latitude=31.4577,
        parental=False,
    )
    assert [i.name for i in items] == ["前门摄像头", "停车场入口", "南门"]
    assert [i.status for i in items] == ["ON", "OFF", "ON"]


def test_multi_part_catalog() -> None:
    first = manscdp.parse(catalog_body(CHANNELS[:2], 3).encode("gb2312"))
    second = manscdp.parse(catalog_body(CHANNELS[2:], 3).encode("gb2312"))
    assert (first.sum_num, first.list_num, second.sum_num, second.list_num) == (3, 2, 3, 1)
    got = manscdp.catalog_items(first) + manscdp.catalog_items(second)
    assert [i.device_id for i in got] == [c[0] for c in CHANNELS]


@pytest.mark.parametrize("label", ["GB2312", "GBK", "GB18030", "gb2312"])
def test_utf8_body_labelled_gb(label: str) -> None:
    """The label says GB but the bytes are UTF-8; GBK/GB18030 would not fail on them but garble (大门 -> 澶ч棬)."""
    text = (
        f'<?xml version="1.0" encoding="{label}"?>\r\n<Response><CmdType>Catalog</CmdType><SN>1</SN>'
        f'<DeviceID>{NVR}</DeviceID><SumNum>1</SumNum><DeviceList Num="1"><Item><DeviceID>34020000001320000009'
        "</DeviceID><Name>大门</Name></Item></DeviceList></Response>"
    )
    body = text.encode("utf-8")
    if label.upper() != "GB2312":
        assert body.decode(label) != text  # the trap: the declared codec decodes, to mojibake
    assert manscdp.decode_body(body) == text
    assert manscdp.catalog_items(manscdp.parse(body))[0].name == "大门"


def test_full_utf8_catalog_labelled_gb2312() -> None:
    text = catalog_body(CHANNELS, 3)
    assert manscdp.decode_body(text.encode("utf-8")) == text


def test_gb18030_body_labelled_utf8() -> None:
    text = catalog_body([("34020000001320000009", "南门 喆", "ON")], 1, label="UTF-8")
    assert manscdp.decode_body(text.encode("gb18030")) == text


def test_gbk_characters_labelled_gb2312() -> None:
    text = catalog_body([("34020000001320000009", "王喆镕", "ON")], 1, label="GB2312")
    with pytest.raises(UnicodeEncodeError):
        text.encode("gb2312")  # 喆 and 镕 are GBK, not GB2312: what "GB2312" devices really send
    assert manscdp.decode_body(text.encode("gbk")) == text


def test_short_gb_text_that_happens_to_be_valid_utf8() -> None:
    """职 is D6 B0 in GB2312, which is also UTF-8 for U+05B0: the declared label must win here."""
    text = '<?xml version="1.0" encoding="GB2312"?><Notify><Name>职</Name></Notify>'
    body = text.encode("gb2312")
    assert body.decode("utf-8") != text
    assert manscdp.decode_body(body) == text


def test_no_prolog_bom_and_undecodable() -> None:
    assert manscdp.decode_body("\ufeff<Query/>".encode()) == "<Query/>"
    assert manscdp.decode_body("<Query>南门</Query>".encode("gb18030")) == "<Query>南门</Query>"
    with pytest.raises(ManscdpError, match="neither GB2312, UTF-8 nor GB18030"):
        manscdp.decode_body(b'<?xml version="1.0" encoding="GB2312"?><a>\xff\xff</a>')


def test_keepalive_and_catalog_notify() -> None:
    keepalive = manscdp.parse(
        b'<?xml version="1.0"?>\n<Notify>\n<CmdType>Keepalive</CmdType>\n<SN> 43 </SN>\n'
        b"<DeviceID>34020000001320000001</DeviceID>\n<Status>OK</Status>\n<Info/>\n</Notify>\n\x00"
    )
    assert (keepalive.root, keepalive.cmd, keepalive.sn) == ("Notify", "Keepalive", 43)
    assert keepalive.fields == {"Status": "OK", "Info": ""}
    assert keepalive.items == [] and keepalive.sum_num is None and keepalive.list_num is None
    with pytest.raises(ManscdpError, match="not a catalog answer"):
        manscdp.catalog_items(keepalive)
    notify = manscdp.build(
        "Notify",
        "Catalog",
        9,
        NVR,
        {"SumNum": "2"},
        items=[
            {"DeviceID": "34020000001320000001", "Event": "OFF"},
            {"DeviceID": "34020000001320000002", "Event": "ADD", "Name": "新", "Parental": "1"},
        ],
    )
    got = manscdp.catalog_items(manscdp.parse(notify))
    assert [(i.device_id, i.event, i.name, i.parental) for i in got] == [
        ("34020000001320000001", "OFF", "", False),
        ("34020000001320000002", "ADD", "新", True),
    ]


KEEPALIVES = [
    manscdp.build("Notify", "Keepalive", 43, NVR, {"Status": "OK"}),
    manscdp.build("Notify", "Keepalive", 7, NVR, encoding="UTF-8"),
    b"<Notify><CmdType>Keepalive</CmdType><SN>0</SN><DeviceID>34020000001320000001</DeviceID></Notify>",
    b"\r\n <?xml version = '1.0'  encoding='GB2312' ?>\n<Notify>\n\t<CmdType> Keepalive </CmdType>\n\t<SN> 9 </SN>"
    b"\n\t<DeviceID>\n34020000001320000001 </DeviceID>\t<Status>Error</Status>\r\n</Notify>\r\n",
]


@pytest.mark.parametrize("body", KEEPALIVES)
def test_keepalive_read_without_the_xml_parser_is_what_the_parser_reads(body: bytes) -> None:
    """A comment after the root sends the same body through the XML parser: both readings agree."""
    fast = manscdp.parse(body)
    assert manscdp._KEEPALIVE.fullmatch(body) is not None
    slow = manscdp.parse(body + b"<!-- -->")
    assert manscdp._KEEPALIVE.fullmatch(body + b"<!-- -->") is None
    assert fast == slow and fast.cmd == "Keepalive"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>x</DeviceID>", "malformed XML"),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>x</DeviceID></Query>", "malformed XML"),
        (b"<Notify>\f<CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>x</DeviceID></Notify>", "malformed XML"),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN></Notify>", "lacks <DeviceID>"),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID> </DeviceID></Notify>", "<DeviceID> is empty"),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>" + b"9" * 19 + b"</SN><DeviceID>x</DeviceID></Notify>",
         "SN is not"),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>x</DeviceID></Notify>" + b" " * (1 << 20),
         "exceeds"),
    ],
)
def test_keepalive_lookalikes_get_the_parsers_precise_errors(body: bytes, match: str) -> None:
    with pytest.raises(ManscdpError, match=match):
        manscdp.parse(body)


def test_catalog_item_defaults_and_bad_numbers() -> None:
    items = [
        {"DeviceID": "a", "Longitude": "abc", "Latitude": ""},
        {"DeviceID": "b", "Longitude": "nan", "Latitude": "inf"},
        {"DeviceID": "c", "Longitude": "181", "Latitude": "-90.5"},
        {"DeviceID": "d", "Longitude": "0", "Latitude": "-90"},
        {"Name": "no id: skipped"},
    ]
    got = manscdp.catalog_items(manscdp.parse(manscdp.build("Response", "Catalog", 1, NVR, items=items)))
    assert [(i.device_id, i.longitude, i.latitude) for i in got] == [
        ("a", None, None),
        ("b", None, None),
        ("c", None, None),
        ("d", 0.0, -90.0),
    ]
    a = got[0]
    assert (a.name, a.manufacturer, a.model, a.civil_code, a.parent_id, a.address, a.status, a.parental, a.event) == (
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        False,
        "",
    )
    with pytest.raises(ManscdpError, match="not a catalog answer"):
        manscdp.catalog_items(manscdp.parse(manscdp.build("Query", "Catalog", 1, NVR)))


# --- malformed and hostile ----------------------------------------------------------------

GOOD = manscdp.build("Query", "Catalog", 5, NVR, encoding="UTF-8").decode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (GOOD[: len(GOOD) // 2].encode(), "malformed XML"),
        (b"", "malformed XML"),
        (b"not xml at all", "malformed XML"),
        (b"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>x</DeviceID></Query><Query/>", "malformed XML"),
        (b"<Query><CmdType>a&b</CmdType></Query>", "malformed XML"),
        (b"<Query><CmdType>&xxe;</CmdType><SN>1</SN><DeviceID>x</DeviceID></Query>", "malformed XML"),
        (b"<Reply><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>x</DeviceID></Reply>", "root element 'Reply'"),
        (b"<Query><SN>1</SN><DeviceID>x</DeviceID></Query>", "lacks <CmdType>"),
        (b"<Query><CmdType>Catalog</CmdType><DeviceID>x</DeviceID></Query>", "lacks <SN>"),
        (b"<Query><CmdType>Catalog</CmdType><SN>1</SN></Query>", "lacks <DeviceID>"),
        (b"<Query><CmdType> </CmdType><SN>1</SN><DeviceID>x</DeviceID></Query>", "<CmdType> is empty"),
        (b"<Query><CmdType><A/></CmdType><SN>1</SN><DeviceID>x</DeviceID></Query>", "must hold text"),
        (b"<Query><CmdType>Cat alog</CmdType><SN>1</SN><DeviceID>x</DeviceID></Query>", "not a name"),
        (b"<Query><CmdType>Catalog</CmdType><SN>abc</SN><DeviceID>x</DeviceID></Query>", "SN is not"),
        (b"<Query><CmdType>Catalog</CmdType><SN>-1</SN><DeviceID>x</DeviceID></Query>", "SN is not"),
        (b"<Query><CmdType>Catalog</CmdType><SN>1.5</SN><DeviceID>x</DeviceID></Query>", "SN is not"),
        (
            b"<Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>x</DeviceID><SumNum>many</SumNum></Response>",
            "SumNum",
        ),
        (
            b'<Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>x</DeviceID><DeviceList Num="two"><Item/>'
            b"</DeviceList></Response>",
            "DeviceList Num",
        ),
    ],
)
def test_malformed(body: bytes, match: str) -> None:
    with pytest.raises(ManscdpError, match=match):
        manscdp.parse(body)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Query><CmdType>&lol9;</CmdType><SN>1</SN><DeviceID>x</DeviceID></Query>"""
XXE = b"""<?xml version="1.0"?><!doctype Query [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>&x;</DeviceID></Query>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, BILLION_LAUGHS.replace(b"\n<!DOCTYPE", b"<! DOCTYPE")])
def test_dtds_are_refused(body: bytes) -> None:
    with pytest.raises(ManscdpError, match="DOCTYPE/ENTITY"):
        manscdp.parse(body)


def test_huge_body_is_refused_before_parsing() -> None:
    body = GOOD.encode().replace(b"</Query>", b"<Pad>" + b"a" * manscdp.MAX_BODY_BYTES + b"</Pad></Query>")
    with pytest.raises(ManscdpError, match="exceeds"):
        manscdp.parse(body)


def test_errors_quote_little_input() -> None:
    with pytest.raises(ManscdpError) as info:
        manscdp.parse(b"<Query><CmdType>Catalog</CmdType><SN>" + b"9" * 5000 + b"x</SN><DeviceID>x</DeviceID></Query>")
    assert len(str(info.value)) < 150


@PROPS
@given(st.binary(max_size=300))
def test_parse_raises_only_manscdp_error(body: bytes) -> None:
    with contextlib.suppress(ManscdpError):
        manscdp.parse(body)


# --- build --------------------------------------------------------------------------------


def test_build_prolog_escaping_and_charset() -> None:
    body = manscdp.build("Control", "DeviceControl", 3, NVR, {"PTZCmd": "A50F01", "Note": "<a & b>"})
    assert body.startswith(b'<?xml version="1.0" encoding="GB2312"?>\r\n<Control>\r\n<CmdType>DeviceControl</CmdType>')
    assert b"<Note>&lt;a &amp; b&gt;</Note>" in body
    msg = manscdp.parse(body)
    assert msg.fields == {"PTZCmd": "A50F01", "Note": "<a & b>"}
    chinese = manscdp.build("Notify", "Alarm", 1, NVR, {"AlarmDescription": "周界入侵 喆"})
    assert "周界入侵".encode("gb2312") in chinese and b"&#21894;" in chinese  # 喆 is not GB2312: a reference
    assert manscdp.parse(chinese).fields["AlarmDescription"] == "周界入侵 喆"
    assert manscdp.build("Query", "Catalog", 1, NVR, encoding="gb18030").startswith(
        b'<?xml version="1.0" encoding="GB18030"?>'
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"root": "Reply"}, "root must be"),
        ({"encoding": "latin-1"}, "encoding must be"),
        ({"sn": -1}, "SN must be"),
        ({"fields": {"Bad Name": "x"}}, "not an XML element name"),
        ({"fields": {"1abc": "x"}}, "not an XML element name"),
    ],
)
def test_build_refuses(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"root": "Query", "cmd": "Catalog", "sn": 1, "device_id": NVR, **kwargs}
    with pytest.raises(ManscdpError, match=match):
        manscdp.build(**args)  # type: ignore[arg-type]


_XML_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn"), blacklist_characters="\ufeff"), max_size=20
).map(str.strip)


@PROPS
@given(
    st.sampled_from(manscdp.ROOTS),
    st.integers(0, 2**40),
    st.dictionaries(st.from_regex(r"[A-Z][A-Za-z0-9]{0,8}", fullmatch=True), _XML_TEXT, max_size=5),
    st.lists(st.dictionaries(st.sampled_from(["DeviceID", "Name", "Address", "Status"]), _XML_TEXT), max_size=4),
    st.sampled_from(["GB2312", "GBK", "GB18030", "UTF-8"]),
)
def test_build_parse_round_trip(
    root: str, sn: int, fields: dict[str, str], items: list[dict[str, str]], encoding: str
) -> None:
    fields = {k: v for k, v in fields.items() if k not in ("CmdType", "SN", "DeviceID")}
    body = manscdp.build(root, "Catalog", sn, NVR, fields, encoding, items=items)
    # A GB-coded body that is also valid UTF-8 of CJK text is the one case decoding cannot tell apart.
    if encoding != "UTF-8":
        with contextlib.suppress(UnicodeDecodeError):
            assume(not any(ord(c) > 127 for c in body.decode("utf-8")))
    msg = manscdp.parse(body)
    assert (msg.root, msg.cmd, msg.sn, msg.device_id) == (root, "Catalog", sn, NVR)
    assert msg.fields == fields
    assert msg.items == items and msg.list_num == len(items)
