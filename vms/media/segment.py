"""A finished segment as hub and agent name it: device, start, duration and sha256 in the file name.

One atomic rename both writes this metadata and hands the segment on (to the agent's spool, or to
the hub's archive for media the hub receives itself), so a crash never leaves a named segment
without its metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(?P<dev>[0-9]{20})_(?P<start>[0-9]{1,17})_(?P<dur>[0-9]{1,12})_(?P<sha>[0-9a-f]{64})\.ts$")


@dataclass(frozen=True, slots=True)
class Segment:
    """One finished MPEG-TS segment in the queue."""

    path: Path
    device_id: str
    start: float  # Unix seconds of the first packet
    duration: float  # seconds
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name

    @staticmethod
    def file_name(device_id: str, start: float, duration: float, sha256: str) -> str:
        return f"{device_id}_{round(start * 1e6):d}_{round(max(duration, 0.0) * 1e6):d}_{sha256}.ts"

    @classmethod
    def from_path(cls, path: Path) -> Segment | None:
        m = _NAME.match(path.name)
        if not m:
            return None
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return cls(path=path, device_id=m["dev"], start=int(m["start"]) / 1e6,
                   duration=int(m["dur"]) / 1e6, sha256=m["sha"], size=size)
