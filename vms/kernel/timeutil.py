"""Time in the API: Unix seconds inside, RFC 3339 outside, windows by name or by bounds."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_REL = re.compile(r"^(\d{1,5})([mhd])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class BadTime(ValueError):
    pass


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str, name: str = "time") -> float:
    """RFC 3339 with a zone (``2026-11-01T00:00:00+08:00``, ``...Z``) or Unix seconds."""
    v = value.strip()
    try:
        return float(v) if re.fullmatch(r"\d{9,11}(\.\d+)?", v) else _parse_iso(v)
    except ValueError as exc:
        raise BadTime(f"{name} {value!r}: {exc}") from None


def _parse_iso(v: str) -> float:
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not an RFC 3339 time (e.g. 2026-11-01T08:00:00+08:00) or Unix seconds") from None
    if t.tzinfo is None:
        raise ValueError("has no time zone; add Z or an offset such as +08:00")
    return t.timestamp()


def window(period: str | None, start: str | None, end: str | None, now: float, tz: str) -> tuple[float, float]:
    """Resolve a report window: ``period`` = ``24h`` / ``7d`` / ``30d`` / ``2026-11`` (calendar month
    in ``tz``), or explicit ``start`` and ``end``. Raises :class:`BadTime` with the reason."""
    if period and (start or end):
        raise BadTime("give either period or from/to, not both")
    if period:
        m = _REL.match(period)
        if m:
            return now - int(m.group(1)) * _UNITS[m.group(2)], now
        mm = _MONTH.match(period)
        if mm:
            year, month = int(mm.group(1)), int(mm.group(2))
            if not 1 <= month <= 12:
                raise BadTime(f"period {period!r}: month must be 01-12")
            zone = ZoneInfo(tz)
            a = dt.datetime(year, month, 1, tzinfo=zone)
            b = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
            return a.timestamp(), b.timestamp()
        raise BadTime(f"period {period!r}: use e.g. 1h, 24h, 7d, 30d or a calendar month like 2026-11")
    s = parse_time(start, "from") if start else now - 86400
    e = parse_time(end, "to") if end else now
    if e <= s:
        raise BadTime("'to' must be after 'from'")
    if e - s > 400 * 86400:
        raise BadTime("window longer than 400 days")
    return s, e
