"""Availability reports: per center and per device, for any window, worst cameras first."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from vms.centers import UnknownCenter
from vms.hub import Hub
from vms.timeutil import iso

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


def availability(
    hub: Hub, start: float, end: float, center: str | None = None, device_limit: int | None = None
) -> dict[str, Any]:
    """Figures for ``[start, end)``; raises :class:`UnknownCenter` for an unknown ``center``."""
    scope = hub.tree.get(center) if center is not None else None
    av = hub.availability(start, end)
    with hub.lock:
        centers = [c for c in hub.tree if scope is None or c is scope or scope in c.ancestors()]
        center_rows = []
        for c in centers:
            fig = hub.center_figures(av, c.id)
            center_rows.append(
                {
                    "center": c.id,
                    "name": c.name,
                    "level": c.level,
                    "devices": len(hub.members[c.id]),
                    **fig,
                    "target_online": c.targets.online,
                    "target_upload": c.targets.upload,
                    "target_intact": c.targets.intact,
                }
            )
        idxs = hub.member_indices(scope.id) if scope is not None else np.arange(hub.health.n)
        # Worst first: lowest online rate, then lowest upload rate.
        mon = av.monitored_s[idxs]
        safe = np.where(mon > 0, mon, 1.0)
        order = np.lexsort((av.upload_s[idxs] / safe, av.online_s[idxs] / safe))
        chosen = idxs[order][:device_limit] if device_limit else idxs[order]
        device_rows = []
        for i in chosen.tolist():
            inf = hub.info[i]
            device_rows.append(
                {
                    "device_id": hub.health.ids[i],
                    "name": inf.name,
                    "location": inf.location,
                    "centers": ";".join(inf.homes),
                    "state": hub.health.state_of(i),
                    **hub.device_figures(av, i),
                }
            )
    return {
        "from": iso(start),
        "to": iso(av.end),
        "center": center,
        "centers": center_rows,
        "devices": device_rows,
        "device_count": len(idxs),
    }


def to_csv(report: dict[str, Any]) -> str:
    """Two tables in one CSV: centers, a blank line, then devices."""
    out = io.StringIO()
    for columns, rows in ((CENTER_COLUMNS, report["centers"]), (DEVICE_COLUMNS, report["devices"])):
        w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        out.write("\n")
    return out.getvalue()


__all__ = ["CENTER_COLUMNS", "DEVICE_COLUMNS", "UnknownCenter", "availability", "to_csv"]
