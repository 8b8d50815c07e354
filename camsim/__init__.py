"""Camera simulator: N synthetic RTSP/ONVIF cameras on loopback for tests, benchmarks and the demo.

This package must stay importable by the system interpreter (which has GStreamer but no numpy or
PyAV), so nothing here imports them at module level: `camsim.clips` and `camsim.sim` do, and only
the venv side imports those.
"""

from __future__ import annotations

#: Fault kinds accepted by the control API, and the clip variant each one switches to (None: no clip).
FAULT_KINDS: dict[str, str | None] = {
    "clear": "normal",
    "black": "black",
    "freeze": "freeze",
    "blur": "blur",
    "cover": "cover",
    "lowfps": "lowfps",
    "dark": None,
    "restart": None,
}

__all__ = ["FAULT_KINDS"]
