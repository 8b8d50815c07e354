"""The media a simulated GB/T 28181 device sends: a clip's access units as MPEG-PS over RTP, paced in real time
(live and playback) or faster (download), by the sender the hub also uses (``vms.media.sender``). A
clip (MPEG-TS from ``camsim.clips``) is demuxed once into memory and looped with continuous
timestamps, so a stream costs a pack and a few ``sendto`` calls per frame and no decoding. A
recording is the same looped clip sent over the recorded spans of the asked range, its timestamps
running with the range's time, so the receiver can place it.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, partial
from pathlib import Path

import av

from vms.media import sender
from vms.media.sender import CLOCK, FINISHED, AccessUnit, Target, media_socket

__all__ = ["CLOCK", "FINISHED", "AccessUnit", "Clip", "RtpSender", "Target", "load_clip", "media_socket"]

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Clip:
    """A clip's access units in decoding order and the length of one loop in 90 kHz ticks."""

    codec: str
    units: tuple[AccessUnit, ...]
    period: int


@cache
def load_clip(path: Path) -> Clip:
    """Demux ``path`` once (cached per path: channels of the same clip share the bytes)."""
    units: list[AccessUnit] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        tb = stream.time_base or Fraction(1, CLOCK)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        first: int | None = None
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            dts = pkt.dts if pkt.dts is not None else pkt.pts
            if first is None:
                first = dts
            units.append(
                AccessUnit(
                    bytes(pkt),
                    round((pkt.pts - first) * tb * CLOCK),
                    round((dts - first) * tb * CLOCK),
                    bool(pkt.is_keyframe),
                )
            )
    if not units or not units[0].key:
        raise ValueError(f"{path}: no video, or it does not start with a keyframe")
    frame = round(CLOCK / rate)
    return Clip(codec, tuple(units), units[-1].dts + frame)


class RtpSender(sender.RtpSender):
    """Streams a looped clip (see :class:`vms.media.sender.RtpSender`): as live video without end,
    or over a recording's ``spans``."""

    def __init__(
        self,
        name: str,
        clip: Clip,
        ssrc: int,
        media_sock: socket.socket,
        target: Target,
        mode: Callable[[], str],
        on_end: Callable[[str], None],
        payload_type: int = 96,
        spans: Sequence[tuple[int, int]] | None = None,
        speed: float = 1.0,
    ) -> None:
        super().__init__(name, clip.codec, partial(_looped, clip), ssrc, media_sock, target, mode, on_end,
                         payload_type, spans, speed)
        self.clip = clip


def _looped(clip: Clip, length: int | None) -> Iterator[tuple[int, AccessUnit]]:
    """The clip's access units over and over with their decoding time from the first, for ``length``
    ticks (frames decoded from then on are left out), or without end."""
    for loop in itertools.count():
        offset = loop * clip.period
        for au in clip.units:
            if length is not None and offset + au.dts >= length:
                return
            yield offset + au.dts, au


