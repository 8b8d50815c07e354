"""Each camera's learned normal on disk, for the hub and the agent alike: a restart goes on from it.

A file that cannot be read only means the cameras learn again; what it holds is cleaned (known
metrics, positive counts, finite levels), since a file or a worker may hold anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vms.analysis.analyzer import METRICS

log = logging.getLogger(__name__)

#: (metric, samples, level) per metric.
Normal = tuple[tuple[str, int, float], ...]
_NAMES = {m: m for m in METRICS}  # one string object per metric, however many cameras


def clean(items: Iterable[Any]) -> Normal:
    """A normal with only known metrics, positive counts and finite levels."""
    out = []
    for item in items:
        try:
            m, n, v = item
            name, count, level = _NAMES.get(m), int(n), float(v)
        except (TypeError, ValueError):
            continue
        if name is not None and count > 0 and math.isfinite(level):
            out.append((name, count, level))
    return tuple(out)


def load(path: Path) -> dict[str, Normal]:
    """The normals saved in ``path``; none (logged) if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s (cameras learn their normal again)", path, exc)
        return {}
    out: dict[str, Normal] = {}
    for device_id, metrics in (data.items() if isinstance(data, dict) else ()):
        if isinstance(metrics, dict):
            normal = clean((m, *v) for m, v in metrics.items() if isinstance(v, list) and len(v) == 2)
            if normal:
                out[str(device_id)] = normal
    return out


def save(path: Path, normals: Mapping[str, Normal]) -> None:
    """Write ``normals`` (temporary file, fsync, rename: a crash leaves the old file or the new one);
    raises OSError."""
    data = {d: {m: [n, v] for m, n, v in normal} for d, normal in normals.items()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
