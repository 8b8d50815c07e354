"""GB/T 28181 20-digit device IDs: parse, validate, allocate.

Pure functions, no I/O: shared by the hub and the edge agent. Every error names the field, the
value and the reason, because the people who read them are installers typing IDs from a sticker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Annotated

from pydantic import AfterValidator

ID_LENGTH = 20
#: Positions (0-based, end-exclusive) of each field in the 20-digit ID.
FIELDS: dict[str, tuple[int, int]] = {
    "province": (0, 2),
    "city": (2, 4),
    "district": (4, 6),
    "grassroots": (6, 8),
    "industry": (8, 10),
    "type": (10, 13),
    "network": (13, 14),
    "serial": (14, 20),
}
#: An allocation prefix fixes everything but the serial number.
ALLOCATION_PREFIX_LENGTH = 14

# GB/T 2260 first-level (province) codes.
PROVINCES: dict[str, str] = {
    "11": "北京市",
    "12": "天津市",
    "13": "河北省",
    "14": "山西省",
    "15": "内蒙古自治区",
    "21": "辽宁省",
    "22": "吉林省",
    "23": "黑龙江省",
    "31": "上海市",
    "32": "江苏省",
    "33": "浙江省",
    "34": "安徽省",
    "35": "福建省",
    "36": "江西省",
    "37": "山东省",
    "41": "河南省",
    "42": "湖北省",
    "43": "湖南省",
    "44": "广东省",
    "45": "广西壮族自治区",
    "46": "海南省",
    "50": "重庆市",
    "51": "四川省",
    "52": "贵州省",
    "53": "云南省",
    "54": "西藏自治区",
    "61": "陕西省",
    "62": "甘肃省",
    "63": "青海省",
    "64": "宁夏回族自治区",
    "65": "新疆维吾尔自治区",
    "71": "台湾省",
    "81": "香港特别行政区",
    "82": "澳门特别行政区",
}

# GB/T 28181-2016 Appendix D industry codes (those with a defined meaning).
INDUSTRIES: dict[str, str] = {
    "00": "social security: road (社会治安路面接入)",
    "01": "social security: community (社会治安社区接入)",
    "02": "social security: police internal (社会治安内部接入)",
    "03": "social security: other (社会治安其他接入)",
    "04": "traffic: road (交通路面接入)",
    "05": "traffic: checkpoint (交通卡口接入)",
    "06": "traffic: internal (交通内部接入)",
    "07": "traffic: other (交通其他接入)",
    "08": "city management (城市管理接入)",
    "09": "health and environment (卫生环保接入)",
    "10": "inspection and customs (商检海关接入)",
    "11": "education (教育部门接入)",
    "40": "agriculture, forestry, fishery (农林牧渔业接入)",
    "41": "mining (采矿企业接入)",
    "42": "manufacturing (制造企业接入)",
    "43": "metallurgy (冶金企业接入)",
    "44": "electric power (电力企业接入)",
    "45": "gas (燃气企业接入)",
    "46": "construction (建筑企业接入)",
    "47": "logistics (物流企业接入)",
    "48": "postal (邮政企业接入)",
    "49": "information (信息企业接入)",
    "50": "hotels and catering (住宿和餐饮业接入)",
    "51": "finance (金融企业接入)",
    "52": "real estate (房地产业接入)",
    "53": "business services (商务服务业接入)",
    "54": "water conservancy (水利企业接入)",
    "55": "entertainment (娱乐企业接入)",
}

TYPES: dict[str, str] = {
    "111": "DVR",
    "112": "video server",
    "113": "encoder",
    "114": "decoder",
    "115": "video switching matrix",
    "116": "audio switching matrix",
    "117": "alarm controller",
    "118": "NVR",
    "130": "HVR",
    "131": "camera",
    "132": "IPC",
    "133": "display",
    "134": "alarm input",
    "135": "alarm output",
    "136": "audio input",
    "137": "audio output",
    "138": "mobile transmitter",
    "139": "other peripheral",
    "200": "center signaling server",
    "201": "web application server",
    "202": "media distribution server",
    "203": "proxy server",
    "204": "security server",
    "205": "alarm server",
    "206": "database server",
    "207": "GIS server",
    "208": "management server",
    "209": "access gateway",
    "210": "media storage server",
    "211": "signaling security router",
    "215": "business group",
    "216": "virtual organization",
    "300": "center user",
    "400": "terminal user",
}

NETWORKS: dict[str, str] = {
    "0": "monitoring private network",
    "1": "monitoring private network",
    "2": "monitoring private network",
    "3": "monitoring private network",
    "4": "monitoring private network",
    "5": "public-security information network",
    "6": "government network",
    "7": "Internet",
    "8": "social-resource network",
}


class InvalidDeviceId(ValueError):
    """An ID that breaks the GB/T 28181 layout; ``field`` names the offending field."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field} {value!r}: {reason}")


@dataclass(frozen=True, slots=True)
class DeviceId:
    """A validated 20-digit ID split into its fields."""

    raw: str
    province: str
    city: str
    district: str
    grassroots: str
    industry: str
    type: str
    network: str
    serial: str

    @property
    def civil_code(self) -> str:
        """The 8-digit center code (province+city+district+grassroots)."""
        return self.raw[:8]

    @property
    def is_device(self) -> bool:
        """Types up to 199 are front-end devices; 200+ are platforms and users."""
        return int(self.type) <= 199

    def describe(self) -> dict[str, object]:
        """JSON-ready fields plus human-readable names where the standard defines them."""
        out: dict[str, object] = asdict(self)
        out.pop("raw")
        out["id"] = self.raw
        out["civil_code"] = self.civil_code
        out["province_name"] = PROVINCES.get(self.province)
        out["industry_name"] = INDUSTRIES.get(self.industry, "reserved or extension")
        out["type_name"] = TYPES.get(self.type, _type_range_name(self.type))
        out["network_name"] = NETWORKS.get(self.network)
        out["is_device"] = self.is_device
        return out


def _type_range_name(code: str) -> str:
    n = int(code)
    if 111 <= n <= 130:
        return "front-end main device (reserved)"
    if 131 <= n <= 199:
        return "front-end peripheral (reserved)"
    if 200 <= n <= 299:
        return "platform device (reserved)"
    if 300 <= n <= 399:
        return "center user (reserved)"
    if 400 <= n <= 499:
        return "terminal user (reserved)"
    return "extension"


def _check_digits(field: str, value: str, length: int) -> None:
    if len(value) != length:
        raise InvalidDeviceId(field, value, f"must be {length} digits, got {len(value)} characters")
    if not (value.isascii() and value.isdigit()):
        bad = next(c for c in value if not (c.isascii() and c.isdigit()))
        raise InvalidDeviceId(field, value, f"must contain only digits 0-9, found {bad!r}")


def _check_civil(province: str, city: str, district: str, grassroots: str) -> None:
    if province not in PROVINCES:
        raise InvalidDeviceId("province", province, "not a GB/T 2260 province code")
    if city == "00" and district != "00":
        raise InvalidDeviceId("district", district, "must be 00 when city is 00 (unused positions are 0)")
    if district == "00" and grassroots != "00":
        raise InvalidDeviceId("grassroots", grassroots, "must be 00 when district is 00 (unused positions are 0)")


def parse(device_id: str) -> DeviceId:
    """Validate ``device_id`` field by field and split it.

    Raises :class:`InvalidDeviceId` naming the first field that is wrong.
    """
    if not isinstance(device_id, str):
        raise InvalidDeviceId("id", repr(device_id), "must be a string of 20 digits")
    raw = device_id.strip()
    if len(raw) != ID_LENGTH:
        raise InvalidDeviceId("id", raw, f"must be {ID_LENGTH} digits, got {len(raw)} characters")
    for name, (a, b) in FIELDS.items():
        _check_digits(name, raw[a:b], b - a)
    parts = {name: raw[a:b] for name, (a, b) in FIELDS.items()}
    _check_civil(parts["province"], parts["city"], parts["district"], parts["grassroots"])
    if int(parts["type"]) < 111:
        raise InvalidDeviceId("type", parts["type"], "type codes start at 111 (GB/T 28181 Appendix D)")
    if parts["network"] == "9":
        raise InvalidDeviceId("network", "9", "network flag 9 is reserved; use 0-8")
    return DeviceId(raw=raw, **parts)


def checked(device_id: str) -> str:
    """``device_id`` itself if valid: for config keys (``DeviceIdKey``); raises like :func:`parse`."""
    parse(device_id)
    return device_id


#: A device ID as a key of a config mapping (per-camera settings), checked at load.
DeviceIdKey = Annotated[str, AfterValidator(checked)]


def is_valid(device_id: str) -> bool:
    try:
        parse(device_id)
    except InvalidDeviceId:
        return False
    return True


def check_prefix(prefix: str) -> str:
    """Validate an ID prefix (1-20 digits), checking every field it covers completely.

    Used for agent authorisation (an agent may speak for IDs under its prefixes) and for
    allocation. Returns the stripped prefix.
    """
    p = prefix.strip()
    if not 1 <= len(p) <= ID_LENGTH:
        raise InvalidDeviceId("prefix", p, f"must be 1 to {ID_LENGTH} digits")
    if not (p.isascii() and p.isdigit()):
        raise InvalidDeviceId("prefix", p, "must contain only digits 0-9")
    # Pad with a syntactically valid remainder and validate the covered fields only.
    filler = "32000000001310000001"
    padded = p + filler[len(p) :]
    try:
        parse(padded)
    except InvalidDeviceId as exc:
        a, _b = FIELDS.get(exc.field, (0, ID_LENGTH))
        if a < len(p):
            raise InvalidDeviceId(exc.field, exc.value, exc.reason) from None
    return p


def allocate(prefix: str, taken: Iterable[str]) -> str:
    """Return the lowest free ID under a 14-to-19-digit ``prefix``.

    The prefix fixes center, industry, type and network; the rest is the serial number.
    Raises :class:`InvalidDeviceId` when the prefix is too short or the serial space is full.
    """
    p = check_prefix(prefix)
    if len(p) < ALLOCATION_PREFIX_LENGTH:
        raise InvalidDeviceId(
            "prefix",
            p,
            f"an allocation prefix must fix center, industry, type and network "
            f"({ALLOCATION_PREFIX_LENGTH} digits), got {len(p)}",
        )
    width = ID_LENGTH - len(p)
    used = {int(t[len(p) :]) for t in taken if len(t) == ID_LENGTH and t.startswith(p) and t.isdigit()}
    for n in range(1, 10**width):
        if n not in used:
            return f"{p}{n:0{width}d}"
    raise InvalidDeviceId("serial", p, f"no free serial left under this prefix ({10**width - 1} used)")


def matches_prefix(device_id: str, prefixes: Iterable[str]) -> bool:
    return any(device_id.startswith(p) for p in prefixes)
