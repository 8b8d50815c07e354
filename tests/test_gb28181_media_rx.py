"""The GB/T 28181 media receiver's socket paths (vms/gb28181/media.py) over real loopback sockets,
without SIP: datagrams received back to back through many rounds of a small receive buffer, RFC 4571
frames cut anywhere across TCP reads (inside a frame and inside its length prefix). Every access
unit sent is demuxed, nothing is counted lost, and FFmpeg reads the stored segments back frame for
frame. Signaling, faults and losses end to end are in tests/test_gb28181_media.py.
"""

from __future__ import annotations

import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from camsim.clips import ClipParams, ensure_clip
from tests.conftest import wait_until
from vms.archive.store import Outcome, Result
from vms.gb28181.media import RX_BYTES, ArchiveSink, MediaReceiver, Mode, PortPool
from vms.media import ps, rtp
from vms.media.segment import Segment
from vms.media.segmenter import Segmenter

SSRC = 0x0BADCAFE
CHANNEL = "32058501001310000001"
#: The smallest receive buffer allowed: room for one 64 KiB packet and 8 KiB, so a 1400-byte stream
#: fills it every few packets and a drain takes many rounds.
SMALL = 65_536 + 8192
AU = tuple[bytes, int, int, bool]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> list[AU]:
    """3 s of 640x360 at 3 Mbps, 1 s GOP: keyframes of tens of packets."""
    params = ClipParams(width=640, height=360, duration_s=3.0, gop_s=1.0, bitrate_kbps=3000, bframes=0)
    path = ensure_clip(params, "normal", tmp_path_factory.mktemp("rx-clip"))
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [(bytes(p), int(p.pts or 0), int(p.dts or 0), bool(p.is_keyframe)) for p in c.demux(v) if p.size]


def rtp_frames(clip: list[AU], seq: int = 65_000) -> list[list[bytes]]:
    """Each access unit as PS, cut into RTP packets of 1400-byte payloads (numbers wrap past 65535)."""
    packer = ps.PsPacker("h264")
    out = []
    for data, pts, dts, key in clip:
        packets = rtp.packetize(packer.pack(data, pts, dts, key), seq=seq, timestamp=dts, ssrc=SSRC)
        seq = (seq + len(packets)) & 0xFFFF
        out.append(packets)
    return out


class Kept:
    """The archive's stand-in: keeps each finished segment's file in ``dir``."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "kept"
        self.dir.mkdir(parents=True)
        self.segments: list[Segment] = []

    def __call__(self, _source: str, seg: Segment) -> Outcome:
        shutil.move(seg.path, self.dir / seg.path.name)
        self.segments.append(seg)
        return Outcome(Result.STORED, "")

    def frames(self) -> int:
        n = 0
        for seg in sorted(self.segments, key=lambda s: s.start):
            with av.open(str(self.dir / seg.path.name)) as c:
                n += sum(1 for p in c.demux(c.streams.video[0]) if p.size)
        return n


def receive(tmp_path: Path, mode: Mode, send: Callable[[int, threading.Event], None], sent: int,
            device_port: int | None = None) -> tuple[MediaReceiver, Kept]:
    """A receiver with the small buffer; ``send(port, done)`` streams to it and keeps its connection
    until ``done`` (TCP-active: it accepts on ``device_port``, where the receiver connects). Returns
    once the receiver has demuxed ``sent`` access units and was stopped (its segmenter closed, every
    segment stored)."""
    kept = Kept(tmp_path)
    sink = ArchiveSink(tmp_path / "archive", kept, lambda ch: f"gb:{ch}")
    sink.start()
    ended: list[str] = []
    rx = MediaReceiver(CHANNEL, mode, PortPool("127.0.0.1", None), Segmenter(CHANNEL, sink, 1.0), lambda _c: None,
                       lambda _rx, why: ended.append(why), rx_bytes=SMALL)
    done = threading.Event()
    sender = threading.Thread(target=send, args=(rx.port if device_port is None else device_port, done),
                              daemon=True)
    try:
        if mode == "UDP":
            rx.start(SSRC)
            sender.start()
        else:  # the device's side first: it connects (passive) or listens (active)
            sender.start()
            rx.start(SSRC, None if device_port is None else ("127.0.0.1", device_port))
        wait_until(lambda: rx.stats.frames >= sent - 1, 30, "every access unit demuxed", lambda: str(rx.stats))
    finally:
        rx.stop()
        rx.join(10)
        done.set()
        sender.join(10)
        sink.stop()
    assert ended == ["stopped"], ended
    return rx, kept


def test_a_buffer_without_room_for_the_largest_packet_is_refused(tmp_path: Path) -> None:
    seg = Segmenter(CHANNEL, ArchiveSink(tmp_path, Kept(tmp_path), str), 1.0)
    with pytest.raises(ValueError, match="no room"):
        MediaReceiver(CHANNEL, "UDP", PortPool("127.0.0.1", None), seg, lambda _c: None, lambda _r, _w: None,
                      rx_bytes=65_536)
    assert RX_BYTES >= SMALL


def test_udp_bursts_larger_than_the_buffer_arrive_whole_and_in_order(clip: list[AU], tmp_path: Path) -> None:
    """Half a second of video at a time, sent at once (a burst many times the buffer), neighbours
    swapped now and then: the receiver drains it in rounds and puts it back in order."""
    frames = rtp_frames(clip)
    rnd = random.Random(7)

    def send(port: int, _done: threading.Event) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for k in range(0, len(frames), 12):
                burst = [p for f in frames[k : k + 12] for p in f]
                for i in range(1, len(burst) - 1):
                    if rnd.random() < 0.05:
                        burst[i], burst[i + 1] = burst[i + 1], burst[i]
                for p in burst:
                    s.sendto(p, ("127.0.0.1", port))
                time.sleep(0.3)  # the receiver's sleep (0.2 s) takes a whole burst at once

    rx, kept = receive(tmp_path, "UDP", send, len(clip))
    assert rx.stats.packets == sum(map(len, frames)), rx.stats
    assert (rx.stats.lost, rx.stats.malformed, rx.stats.ssrc_mismatch) == (0, 0, 0), rx.stats
    assert rx.stats.reordered > 0
    assert rx.stats.frames == kept.frames() == len(clip)


@pytest.mark.parametrize("mode", ["TCP-passive", "TCP-active"])
def test_tcp_frames_cut_anywhere_across_reads(clip: list[AU], tmp_path: Path, mode: Mode) -> None:
    """The RFC 4571 stream in pieces of 1 byte to 3 KB with pauses between some: reads end inside
    frames and inside length prefixes, and the incomplete frame is carried to the next read."""
    frames = rtp_frames(clip)
    stream = b"".join(rtp.frame_tcp(p) for f in frames for p in f)
    rnd = random.Random(11)
    listener = None
    if mode == "TCP-active":  # the hub connects to the device
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

    def send(port: int, done: threading.Event) -> None:
        if listener is not None:
            conn, _ = listener.accept()
        else:
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pos = 0
            while pos < len(stream):
                n = rnd.choice((1, 2, 3, rnd.randint(4, 3000)))
                conn.sendall(stream[pos : pos + n])
                pos += n
                if rnd.random() < 0.02:
                    time.sleep(0.01)
            done.wait(30)  # the connection stays until the receiver is stopped

    port = None if listener is None else listener.getsockname()[1]
    try:
        rx, kept = receive(tmp_path, mode, send, len(clip), port)
    finally:
        if listener is not None:
            listener.close()
    assert rx.stats.packets == sum(map(len, frames)), rx.stats
    assert (rx.stats.lost, rx.stats.malformed, rx.stats.reordered) == (0, 0, 0), rx.stats
    assert rx.stats.frames == kept.frames() == len(clip)

