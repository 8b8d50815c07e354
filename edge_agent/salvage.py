"""Recover the readable prefix of a segment whose writer crashed (a ``.part`` file in ``.tmp/``).

The prefix is demuxed, the last packet (likely cut short by the crash) dropped, and the rest kept
up to the first packet that fails to decode. What remains is remuxed into a new temp file and
enqueued like any segment (sha256, fdatasync, atomic rename), so a crash at any instant of the salvage
itself leaves the original ``.part`` for the next start-up. Start time comes from the temp name
(the segmenter writes it there) or, for older names, from the file's mtime minus its duration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import av

from vms.kernel.fsutil import sync_and_hash

from .spool import Segment, fsync_dir

log = logging.getLogger(__name__)

_PART = re.compile(r"^(?P<dev>[0-9]{20})\.(?:(?P<start>[0-9]{1,17})\.)?[0-9]+\.[0-9]+\.part$")
#: Salvage output is written under this suffix; leftovers from a crash during salvage are removed.
SALVAGE_SUFFIX = ".salvage"


def salvage(part: Path, root: Path) -> Segment | None:
    """Turn ``part`` into a queued segment in ``root`` if a decodable prefix exists; else None.

    The ``.part`` file itself is left in place; the caller removes it.
    """
    m = _PART.match(part.name)
    if not m:
        return None
    out = part.with_name(part.name + SALVAGE_SUFFIX)
    try:
        with av.open(str(part)) as src:
            if not src.streams.video:
                return None
            vs = src.streams.video[0]
            packets = _readable_packets(src, vs)
            if not packets:
                return None
            tb = float(vs.time_base or 1 / 90000)
            first = min(int(p.pts or 0) for p in packets)
            last = max(int(p.pts or 0) for p in packets)
            steps = sorted({int(p.duration or 0) for p in packets} - {0})
            frame = steps[0] if steps else round((last - first) / max(len(packets) - 1, 1))
            duration = max((last - first + frame) * tb, 0.0)
            start = int(m["start"]) / 1e6 if m["start"] else part.stat().st_mtime - duration
            with av.open(str(out), "w", format="mpegts") as dst:
                st = dst.add_stream_from_template(vs)
                for p in packets:
                    p.stream = st
                    dst.mux(p)
        sha, size = sync_and_hash(out)
        final = root / Segment.file_name(m["dev"], start, duration, sha)
        os.replace(out, final)
        fsync_dir(root)
    except (OSError, av.FFmpegError, ValueError) as exc:
        log.info("salvage %s: nothing recoverable (%s)", part.name, exc)
        with contextlib.suppress(OSError):
            out.unlink()
        return None
    return Segment(path=final, device_id=m["dev"], start=round(start * 1e6) / 1e6,
                   duration=round(duration * 1e6) / 1e6, sha256=sha, size=size)


def _readable_packets(src: Any, vs: Any) -> list[av.Packet]:
    """Packets of the prefix that demux and decode cleanly, starting at a keyframe."""
    packets: list[av.Packet] = []
    try:
        for p in src.demux(vs):
            if p.size and p.pts is not None and not p.is_corrupt:
                packets.append(p)
    except av.FFmpegError:
        pass  # the crash cut the file: keep what came before
    packets = packets[:-1]  # the last one was probably cut short
    if not packets or not packets[0].is_keyframe:
        return []
    dec = av.CodecContext.create(vs.codec_context.name, "r")
    if vs.codec_context.extradata:
        dec.extradata = vs.codec_context.extradata
    dec.options = {"err_detect": "explode"}
    good = 0
    try:
        for p in packets:
            dec.decode(av.Packet(bytes(p)))
            good += 1
    except (av.FFmpegError, ValueError):
        pass
    return packets[:good]
