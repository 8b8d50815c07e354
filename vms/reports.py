"""Availability reports: per center and per device, for any window, worst cameras first.

Refusals are domain errors: an unreadable window is :class:`BadWindow` (422), an unknown center
:class:`UnknownCenter` (404).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import numpy as np

from vms.centers import UnknownCenter
from vms.errors import Invalid
from vms.kernel.timeutil import BadTime, iso, window
from vms.services.monitor import Monitor
from vms.services.registry import Registry

DEVICE_COLUMNS = [
    "device_id",
    "name",
    "location",
    "centers",
    "state",
    "monitored_s",
    "unknown_s",
    "online_s",
    "online_rate",
    "upload_rate",
    "intact_rate",
]
CENTER_COLUMNS = [
    "center",
    "name",
    "level",
    "devices",
    "monitored_s",
    "unknown_s",
    "online_s",
    "online_rate",
    "upload_rate",
    "intact_rate",
    "target_online",
    "target_upload",
    "target_intact",
]


class BadWindow(Invalid, BadTime):
    """A report window that cannot be read: a bad period or time, or one that ends before it starts."""


def report_window(
    period: str | None, from_: str | None, to: str | None, now: float, timezone: str
) -> tuple[float, float]:
    """``[start, end)`` of a report from a period (``24h``, ``2026-11``) or from/to; raises :class:`BadWindow`."""
    try:
        return window(period, from_, to, now, timezone)
    except BadTime as exc:
        raise BadWindow(str(exc)) from None


def availability(
    monitor: Monitor, start: float, end: float, center: str | None = None, device_limit: int | None = None
) -> dict[str, Any]:
    """Figures for ``[start, end)``; raises :class:`UnknownCenter` for an unknown ``center``."""
    reg = monitor.reg
    scope = reg.tree.get(center) if center is not None else None
    av = monitor.availability(start, end)
    with reg.lock:
        centers = [c for c in reg.tree if scope is None or c is scope or scope in c.ancestors()]
        center_rows = []
        for c in centers:
            fig = monitor.center_figures(av, c.id)
            center_rows.append(
                {
                    "center": c.id,
                    "name": c.name,
                    "level": c.level,
                    "devices": len(reg.health.in_service(reg.member_indices(c.id))),
                    **fig,
                    "target_online": c.targets.online,
                    "target_upload": c.targets.upload,
                    "target_intact": c.targets.intact,
                }
            )
        pool = reg.member_indices(scope.id) if scope is not None else np.arange(reg.health.n)
        idxs = reg.health.in_service(pool)
        mon = av.monitored_s[idxs]
        safe = np.where(mon > 0, mon, 1.0)
        online_rate, upload_rate = av.online_s[idxs] / safe, av.upload_s[idxs] / safe
        # Worst first: lowest online rate, then lowest upload rate.
        order = np.lexsort((upload_rate, online_rate))
        if device_limit:
            order = order[:device_limit]
        device_rows = _device_rows(
            reg, av, idxs[order], mon[order], online_rate[order], upload_rate[order], (av.intact_s[idxs] / safe)[order]
        )
    return {
        "from": iso(start),
        "to": iso(av.end),
        "center": center,
        "centers": center_rows,
        "devices": device_rows,
        "device_count": len(idxs),
    }


def _device_rows(
    reg: Registry, av: Any, idx: Any, mon: Any, online: Any, upload: Any, intact: Any
) -> list[dict[str, Any]]:
    """One row per device, built from whole columns (a Python call per device is too slow at 100,000)."""
    has = mon > 0
    cols = zip(
        idx.tolist(),
        np.round(mon, 3).tolist(),
        np.round(np.maximum(mon - av.known_s[idx], 0), 3).tolist(),
        np.round(av.online_s[idx], 3).tolist(),
        np.where(has, np.minimum(online, 1.0), np.nan).tolist(),
        np.where(has, np.minimum(upload, 1.0), np.nan).tolist(),
        np.where(has, np.minimum(intact, 1.0), np.nan).tolist(),
        strict=True,
    )
    ids, info, state = reg.health.ids, reg.info, reg.health.state_of
    return [
        {
            "device_id": ids[i],
            "name": info[i].name,
            "location": info[i].location,
            "centers": ";".join(info[i].homes),
            "state": state(i),
            "monitored_s": m,
            "unknown_s": u,
            "online_s": o,
            "online_rate": None if r1 != r1 else r1,
            "upload_rate": None if r2 != r2 else r2,
            "intact_rate": None if r3 != r3 else r3,
        }
        for i, m, u, o, r1, r2, r3 in cols
    ]


def to_csv(report: dict[str, Any]) -> str:
    """Two tables in one CSV: centers, a blank line, then devices."""
    return _tables(((CENTER_COLUMNS, report["centers"]), (DEVICE_COLUMNS, report["devices"])))


#: What a spreadsheet takes as the start of a formula (or, tab and CR, shifts a cell to hide one).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value safe to open in a spreadsheet: text that would start a formula (a camera named
    ``=HYPERLINK(...)`` by whoever configured it) gets a leading apostrophe; numbers stay numbers.
    A carriage return becomes a line feed: the writer quotes that, but would leave a CR bare."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_STARTS):
        value = "'" + value
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _tables(tables: Iterable[tuple[list[str], Iterable[dict[str, Any]]]]) -> str:
    """CSV tables one after another, each with its header, a blank line after each; every CSV the
    hub writes comes from here, so every text cell goes through :func:`csv_cell`."""
    out = io.StringIO()
    for columns, rows in tables:
        w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
        out.write("\n")
    return out.getvalue()


COVERAGE_COLUMNS = ["center", "name", "level", "kind", "sites", "covered", "rate", "target", "meets_target",
                    "covered_s", "monitored_s", "uncovered_total"]
BLIND_SPOT_COLUMNS = ["id", "name", "kind", "center", "since", "for_s", "min_cameras", "working", "key"]


def coverage_csv(report: dict[str, Any]) -> str:
    """Coverage (``vms/services/coverage.py``'s report) as two tables: one row per center and kind
    against its target, a blank line, then the blind spots, longest first."""
    rows = ({"center": c["center"], "name": c["name"], "level": c["level"], **k}
            for c in report["centers"] for k in c["kinds"])
    return _tables(((COVERAGE_COLUMNS, rows), (BLIND_SPOT_COLUMNS, report["blind_spots"])))


__all__ = ["BLIND_SPOT_COLUMNS", "CENTER_COLUMNS", "COVERAGE_COLUMNS", "DEVICE_COLUMNS", "BadWindow", "UnknownCenter",
           "availability", "coverage_csv", "csv_cell", "report_window", "to_csv"]
