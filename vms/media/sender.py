"""MPEG-PS over RTP to one receiver, paced in real time (live and playback) or faster (download).

What a GB/T 28181 device sends, and what a center sends its superior platforms: access units
packed as MPEG-PS (:class:`vms.media.ps.PsPacker`), cut into RTP packets, sent over UDP, or over TCP
with RFC 4571 framing; a TCP stream either connects to the receiver (its offer said
``setup:passive``) or waits for it to connect (``setup:active``). No decoding: a frame costs a pack
and a few ``sendto`` calls. One :class:`RtpSender` thread per stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from vms.media import rtp
from vms.media.ps import PsPacker

log = logging.getLogger(__name__)

CLOCK = 90_000
#: RTP payload bytes per packet, as GB/T 28181 devices send.
MTU = 1400
#: Frames due within this are sent in one go (receivers buffer far more than this).
BURST_S = 0.2
#: How long a TCP stream waits for the receiver to connect (setup:active) or to accept (passive).
CONNECT_TIMEOUT_S = 10.0
#: The reason ``on_end`` gets when a recording has been sent in full (no failure: the sender tells the
#: receiver by a MediaStatus notification and keeps the session until the BYE).
FINISHED = "finished"


class SourceEnded(Exception):
    """The source of access units has no more (a camera's live media stopped): the stream ends."""


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One frame, Annex-B, timestamps in 90 kHz ticks from the clip's first decoding time."""

    data: bytes
    pts: int
    dts: int
    key: bool



Units = Callable[[int | None], Iterator[tuple[int, AccessUnit]]]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a stream goes: the offer's address and port, UDP or TCP, and who connects."""

    host: str
    port: int
    transport: str  # "UDP" | "TCP"
    connect: bool  # TCP: True when we connect (the receiver listens), False when we listen


class RtpSender(threading.Thread):
    """Streams access units to one receiver until stopped, its connection fails, or it is told to.

    ``units(length)`` gives the frames with their decoding time in 90 kHz ticks from the first, for
    ``length`` ticks or (None) for as long as it has them: a simulated camera loops its clip, the
    hub's stream to a superior follows the live segments of a camera. Raising ``SourceEnded`` ends
    the stream with its reason.

    ``spans`` (90 kHz ticks from the start of a recording's asked range, ascending) make it a
    playback: the clip starts again with its keyframe at each span, as a recorded file does, the
    timestamps follow the range's time (jumping over what was not recorded), and after the last
    span the sender ends with :data:`FINISHED`; None is live video, without end. ``speed`` paces at
    that many times real time (a download).

    ``mode()`` is read before every frame: "send", "stop" (keep time, send nothing), "garbage"
    (random payloads in valid RTP). After "stop" or "garbage" sending resumes at a keyframe, as a
    real encoder restarts with one. ``on_end(reason)`` runs in this thread when the stream ends
    by itself (not after ``stop()``); a finished recording keeps its sockets until ``stop()``.
    """

    def __init__(
        self,
        name: str,
        codec: str,
        units: Units,
        ssrc: int,
        media_sock: socket.socket,
        target: Target,
        mode: Callable[[], str],
        on_end: Callable[[str], None],
        payload_type: int = 96,
        spans: Sequence[tuple[int, int]] | None = None,
        speed: float = 1.0,
    ) -> None:
        super().__init__(name=f"gb-rtp-{name}", daemon=True)
        if speed <= 0 or any(b <= a for a, b in spans or ()):
            raise ValueError("speed must be positive and spans non-empty")
        self.units = units
        self.ssrc = ssrc
        self.sock = media_sock  # UDP: bound socket; TCP: bound (connect) or listening (accept)
        self.target = target
        self.mode = mode
        self.on_end = on_end
        self.payload_type = payload_type
        self.spans: tuple[tuple[int, int | None], ...] = tuple(spans) if spans is not None else ((0, None),)
        self.speed = speed
        self.packer = PsPacker(codec)
        self.go = threading.Event()  # set by the ACK: media starts only then
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self.frames_sent = 0
        self.packets_sent = 0
        self.finished = False

    def stop(self) -> None:
        """Stop streaming and close the sockets (from any thread)."""
        self._stop.set()
        self.go.set()
        for s in (self._conn, self.sock):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        reason = "stopped"
        try:
            self.go.wait()
            if self._stop.is_set():
                return
            if self.target.transport == "TCP":
                self._conn = self._open_tcp()
            self._stream()
            reason = FINISHED
        except SourceEnded as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"media connection failed: {exc}"
        finally:
            if not self._stop.is_set():
                if reason == FINISHED:
                    self.finished = True
                else:
                    self.stop()
                self.on_end(reason)

    def _open_tcp(self) -> socket.socket:
        """Connect to the receiver, or accept its connection on our listening socket."""
        self.sock.settimeout(CONNECT_TIMEOUT_S)
        if self.target.connect:
            self.sock.connect((self.target.host, self.target.port))
            conn = self.sock
        else:
            conn, _ = self.sock.accept()
        conn.settimeout(CONNECT_TIMEOUT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _stream(self) -> None:
        """Send the spans frame by frame; returns when they are sent or the sender is stopped."""
        seq = secrets.randbelow(1 << 16)
        base = secrets.randbelow(1 << 30)  # devices start their clocks anywhere
        t0 = time.monotonic()
        played = 0  # ticks sent in the spans before this one: pacing skips the gaps between them
        need_key = False
        udp = self.target.transport == "UDP"
        dest = (self.target.host, self.target.port)
        for first, last in self.spans:
            for at, au in self.units(None if last is None else last - first):
                delay = t0 + (played + at) / CLOCK / self.speed - time.monotonic()
                # Frames due within BURST_S go now: a wakeup per frame cost as much CPU as the sending.
                if (delay > BURST_S and self._stop.wait(delay)) or self._stop.is_set():
                    return
                mode = self.mode()
                dts = base + first + at
                if mode == "stop":
                    need_key = True
                    continue
                if mode == "garbage":
                    need_key = True
                    frame = os.urandom(len(au.data) + 30)
                elif need_key and not au.key:
                    continue
                else:
                    need_key = False
                    frame = self.packer.pack(au.data, dts + au.pts - au.dts, dts, au.key)
                packets = rtp.packetize(frame, seq=seq, timestamp=dts & 0xFFFFFFFF, ssrc=self.ssrc,
                                         payload_type=self.payload_type, mtu=MTU)
                seq = (seq + len(packets)) & 0xFFFF
                if udp:
                    for p in packets:
                        self.sock.sendto(p, dest)
                else:
                    assert self._conn is not None
                    self._conn.sendall(b"".join(rtp.frame_tcp(p) for p in packets))
                self.frames_sent += 1
                self.packets_sent += len(packets)
            played += (last or 0) - first


def media_socket(host: str, target: Target) -> socket.socket:
    """The socket a stream answers with: its port goes into the SDP answer."""
    if target.transport == "UDP":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.bind((host, 0))
        return s
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    if not target.connect:
        s.listen(1)
    return s
