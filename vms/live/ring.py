"""Sub-stream segments: live only, kept in a small on-disk ring, never indexed or recorded.

An agent relays a camera's sub stream (子码流: low resolution, Baseline, no B-frames) so that a
wall of 4-16 tiles decodes little. Those segments matter only while they are fresh, so they stay
out of the segment index and therefore out of retention, archive and clips. Each one is verified
(sha256), written here under a temporary name and renamed (no fsync: a segment lost in a crash
costs nothing), and listed in the camera's ``sub`` live window. Its file is deleted when it slides
out of that window or ages out; the whole ring is emptied when the serving hub starts.

The analysis reads a camera's sub stream instead of its main one while it is live (see
``vms/analysis/substream.py``): it takes each new file by a hard link of its own (:meth:`SubRing.path`
names it), so the ring deletes on its own schedule and the analysis when it is done.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class SubRing:
    """Files of the sub-stream live windows, one directory per device."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # IDs from the wall clock in ms: a player never confuses a segment with one from before a restart.
        self._ids = itertools.count(int(time.time() * 1000))
        self._lock = threading.Lock()
        self.files = 0
        self.bytes = 0

    def reset(self) -> None:
        """Empty the ring: what it held before this process started is no longer live."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.files = self.bytes = 0

    def path(self, device_id: str, seg_id: int) -> Path:
        """Where segment ``seg_id`` of ``device_id`` is kept while in its window."""
        return self.root / device_id / f"{seg_id}.ts"

    def write(self, device_id: str, data: bytes) -> tuple[int, Path]:
        """Write one segment; returns its ID and path. Raises OSError."""
        with self._lock:
            seg_id = next(self._ids)
        final = self.path(device_id, seg_id)
        tmp = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self.files += 1
            self.bytes += len(data)
        return seg_id, final

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("live ring: cannot remove %s: %s", path, exc)
            return
        with self._lock:
            self.files -= 1
            self.bytes -= size
