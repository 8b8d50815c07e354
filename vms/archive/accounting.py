"""Storage accounting from the segment index: bytes, hours, completeness and gaps per device.

Everything is computed in SQL aggregates or numpy over one device's rows; nothing loads the whole
index into Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.clip import GAP_TOLERANCE_S, find_gaps
from vms.db.models import Segment

#: No segment is longer than this (ArchiveConfig.max_segment_seconds caps it at 600), so a window
#: query may bound ``start_at`` from below and use the start index.
MAX_SEGMENT_S = 600.0


@dataclass
class DeviceTotals:
    device_id: str
    segments: int
    bytes: int
    recorded_s: float
    oldest: float | None
    newest: float | None


def totals(sessions: sessionmaker[Session]) -> dict[str, DeviceTotals]:
    """Per device: segments, bytes, recorded seconds, oldest start and newest end."""
    q = (
        select(
            Segment.device_id,
            func.count(),
            func.sum(Segment.bytes),
            func.sum(Segment.end_at - Segment.start_at),
            func.min(Segment.start_at),
            func.max(Segment.end_at),
        )
        .where(Segment.deleting.is_(False))
        .group_by(Segment.device_id)
    )
    with sessions() as s:
        return {d: DeviceTotals(d, int(n), int(b or 0), float(r or 0.0), lo, hi) for d, n, b, r, lo, hi in s.execute(q)}


def recorded_in(sessions: sessionmaker[Session], start: float, end: float) -> dict[str, float]:
    """Recorded seconds of every device inside [start, end) (segments of one device never overlap)."""
    lo = case((Segment.start_at < start, start), else_=Segment.start_at)
    hi = case((Segment.end_at > end, end), else_=Segment.end_at)
    q = (
        select(Segment.device_id, func.sum(hi - lo))
        .where(
            Segment.deleting.is_(False),
            Segment.start_at >= start - MAX_SEGMENT_S,
            Segment.start_at < end,
            Segment.end_at > start,
        )
        .group_by(Segment.device_id)
    )
    with sessions() as s:
        return {d: float(v or 0.0) for d, v in s.execute(q)}


def coverage(
    sessions: sessionmaker[Session], device_id: str, start: float, end: float
) -> tuple[float, list[tuple[float, float]]]:
    """Seconds of [start, end) covered by the device's segments, and the gaps (longer than the tolerance)."""
    with sessions() as s:
        rows = s.execute(
            select(Segment.start_at, Segment.end_at)
            .where(
                Segment.device_id == device_id,
                Segment.deleting.is_(False),
                Segment.start_at >= start - MAX_SEGMENT_S,
                Segment.start_at < end,
                Segment.end_at > start,
            )
            .order_by(Segment.start_at)
        ).all()
    if not rows:
        return 0.0, [(start, end)] if end - start > GAP_TOLERANCE_S else []
    arr = np.asarray(rows, dtype=np.float64)
    a = np.clip(arr[:, 0], start, end)
    b = np.clip(arr[:, 1], start, end)
    reach = np.maximum.accumulate(b)
    prev = np.concatenate(([start], reach[:-1]))
    covered = float(np.maximum(b - np.maximum(a, prev), 0.0).sum())
    return covered, find_gaps(list(zip(a.tolist(), b.tolist(), strict=True)), start, end)


def totals_of(sessions: sessionmaker[Session], device_id: str) -> DeviceTotals:
    """:func:`totals` for one device (zeros when it has no footage)."""
    q = select(
        func.count(),
        func.sum(Segment.bytes),
        func.sum(Segment.end_at - Segment.start_at),
        func.min(Segment.start_at),
        func.max(Segment.end_at),
    ).where(Segment.device_id == device_id, Segment.deleting.is_(False))
    with sessions() as s:
        n, b, r, lo, hi = s.execute(q).one()
    return DeviceTotals(device_id, int(n or 0), int(b or 0), float(r or 0.0), lo, hi)
