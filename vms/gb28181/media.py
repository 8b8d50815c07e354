"""GB/T 28181 media into the archive: RTP carrying MPEG-PS, received, demuxed and segmented.

One thread per stream, as the agent has one per camera. RTP arrives on a UDP port or on a TCP
connection (RFC 4571 framing; the hub listens, ``passive``, or connects, ``active``). Packets of
another SSRC are dropped and counted, the rest are put back in order, and their payloads, the
program stream, are read by FFmpeg's own ``mpeg`` demuxer (PyAV), which knows the stream map
(0x1B H.264, 0x24 H.265). Its access units go into the same segmenter as an agent's, and each
finished segment is stored through the same ingest as an agent's upload, so recording, retention,
clips, live view and analysis work for a GB/T 28181 channel as for an RTSP camera.

The reader sleeps ``batch_s`` and drains the socket in one go, as the agent's ingest does at the
live edge, instead of waking once per RTP packet (a wakeup costs more than a batch's packets).
Datagrams are received back to back into one buffer (TCP: large reads, its frames found in place)
and handed over as spans of it to ``rtp.Payloads``, which appends the payload of a packet next in
order straight from that buffer; only the others become packet objects in the reorder buffer. The
program stream is handed to the demuxer a batch at a time (one read per batch, not per 32 KiB).
Measured on 1080p 4 Mbps (``bench/bench_gb28181.py``): the kernel's own work per datagram and the
wakeups are most of what receiving costs; ``recvmmsg`` (one call per 64 datagrams, through ctypes)
cost the same as one ``recv_into`` per datagram, so it is not used.

A stream ends when no RTP arrives for ``timeout_s``, when what arrives yields no video for that
long (not a program stream), or when it is stopped; ``on_end`` says why, and the owner invites again.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av

from vms.archive.store import Outcome, Result
from vms.media import rtp
from vms.media.segment import Segment
from vms.media.segmenter import Segmenter

log = logging.getLogger(__name__)

Mode = Literal["UDP", "TCP-passive", "TCP-active"]
#: Results after which a segment file is kept and stored again later (nothing is lost).
_RETRY = frozenset({Result.DISK_FULL, Result.STORE_ERROR})
_RCVBUF = 4 << 20
#: Receive buffer of a stream: datagrams back to back (each needs room for the largest, 64 KiB), or a
#: TCP read after the start of a frame left over from the one before (at most 64 KiB too).
RX_BYTES = 256 << 10
_DATAGRAM_MAX = 65_536
#: What PyAV asks of ``_PsReader.read`` at a time: a batch of 4 Mbps (0.2 s) in one read.
_DEMUX_READ = 256 << 10
#: A gap in the sequence numbers is given up after this long (a low bit rate would otherwise hold
#: the video behind one lost packet until the reorder window fills: seconds).
MAX_REORDER_WAIT_S = 0.2


@dataclass
class MediaStats:
    """What one stream received; read by views and the owner's watchdog (plain ints, no lock)."""

    packets: int = 0
    bytes: int = 0
    ssrc_mismatch: int = 0
    malformed: int = 0
    frames: int = 0
    lost: int = 0
    reordered: int = 0
    started: float = 0.0  # monotonic
    last_rtp: float = 0.0
    last_frame: float = 0.0
    codec: str = ""


class PortPool:
    """Local ports for media: any free one, or one from a configured range (firewalls)."""

    def __init__(self, host: str, ports: tuple[int, int] | None) -> None:
        self.host = host
        self.ports = ports
        self._next = itertools.cycle(range(ports[0], ports[1] + 1)) if ports else None
        self._lock = threading.Lock()

    def bind(self, kind: int) -> socket.socket:
        """A socket of ``kind`` (SOCK_DGRAM or SOCK_STREAM) bound to a free port; OSError if none is."""
        tries = 1 if self.ports is None else self.ports[1] - self.ports[0] + 1
        last: OSError | None = None
        for _ in range(tries):
            with self._lock:
                port = 0 if self._next is None else next(self._next)
            s = socket.socket(socket.AF_INET, kind)
            try:
                if kind == socket.SOCK_DGRAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                s.bind((self.host, port))
                return s
            except OSError as exc:
                s.close()
                last = exc
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free media port in {self.ports}") from last


class _Ended(Exception):
    """The stream is over; the message says why."""


class MediaReceiver:
    """Receives one channel's stream and records it; ``start`` after the device answered the INVITE."""

    def __init__(self, channel: str, mode: Mode, ports: PortPool, segmenter: Segmenter,
                 signal: Callable[[str], None], on_end: Callable[[MediaReceiver, str], None],
                 timeout_s: float = 4.0, batch_s: float = 0.2, rx_bytes: int = RX_BYTES) -> None:
        """``rx_bytes``: the receive buffer (at least 72 KiB: room for the largest packet and more)."""
        if rx_bytes < _DATAGRAM_MAX + 8192:
            raise ValueError(f"rx_bytes {rx_bytes} leaves no room for a 64 KiB packet and more")
        self.channel = channel
        self.mode = mode
        self.segmenter = segmenter
        self.signal = signal
        self.on_end = on_end
        self.timeout_s = timeout_s
        self.batch_s = batch_s
        self.stats = MediaStats()
        self.ssrc: int | None = None
        self.reason = ""
        self.ended = ""  # why the stream is over, once it is: every later read is the end of the file
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._remote: tuple[str, int] | None = None
        if mode == "UDP":
            self._sock = ports.bind(socket.SOCK_DGRAM)
            self.port = self._sock.getsockname()[1]
        elif mode == "TCP-passive":
            self._listener = ports.bind(socket.SOCK_STREAM)
            self._listener.listen(1)
            self.port = self._listener.getsockname()[1]
        else:
            self.port = 9  # TCP-active: the hub connects; the offer's port is not used (RFC 4145 uses 9)
        self._buf = bytearray()  # the program stream, in order, not yet read by the demuxer
        self._rx = memoryview(bytearray(rx_bytes))  # what the socket gives, reused for every batch
        self._carry = 0  # TCP: bytes of an incomplete frame at the start of _rx
        self._counted = 0  # stats.packets when last_rtp was last set
        self._reorder = rtp.Reorder()
        self._payloads = rtp.Payloads(self._buf, self._reorder)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signalled = 0.0
        self._gap_since: float | None = None

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self, ssrc: int | None, remote: tuple[str, int] | None = None) -> None:
        """Receive packets of ``ssrc`` (None: any); ``remote`` is the device's address for TCP-active."""
        self.ssrc = ssrc
        self._payloads.ssrc = ssrc
        self._remote = remote
        self.stats.started = self.stats.last_rtp = self.stats.last_frame = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"vms-gb-media-{self.channel}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it finishes the open segment); never blocks on the network."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close_sockets(self) -> None:
        for s in (self._sock, self._listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()

    # -- the thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        reason = "stopped"
        container = None
        try:
            self._connect()
            container = av.open(_PsReader(self), mode="r", format="mpeg", buffer_size=_DEMUX_READ,
                                options={"probesize": "131072", "analyzeduration": "1000000"})
            video = next((s for s in container.streams.video
                          if s.codec_context is not None and s.codec_context.name in ("h264", "hevc")), None)
            if video is None:
                found = ", ".join(s.codec_context.name if s.codec_context is not None else "unknown"
                                  for s in container.streams) or "none"
                raise _Ended(f"no H.264/H.265 video in the program stream (streams: {found})")
            self.stats.codec = video.codec_context.name
            feed = self.segmenter.feed
            for pkt in container.demux(video):
                if self.ended:  # what the parser held back until the end: it would be dated seconds late
                    break
                if pkt.size == 0:
                    continue
                feed(pkt, video)
                st = self.stats
                st.frames += 1
                now = time.monotonic()
                st.last_frame = now
                if now - self._signalled >= 0.5:
                    self._signalled = now
                    self.signal(self.channel)
            reason = self.reason or "the program stream ended"
        except _Ended as exc:
            reason = str(exc)
        except av.FFmpegError as exc:
            reason = self.reason or f"not a readable program stream: {exc}"
        except OSError as exc:
            reason = f"media connection failed: {exc}"
        except Exception as exc:  # a bug must end this stream, never the hub
            log.exception("GB/T 28181 media of %s failed", self.channel)
            reason = f"internal error: {exc}"
        finally:
            with contextlib.suppress(Exception):
                self.segmenter.close()
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
            self.close_sockets()
            self.reason = reason
            self.on_end(self, reason)

    def _connect(self) -> None:
        """TCP: accept the device's connection (passive) or connect to it (active)."""
        if self.mode == "TCP-passive":
            assert self._listener is not None
            self._listener.settimeout(self.timeout_s)
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                raise _Ended(f"the device did not connect for media within {self.timeout_s:g} s") from None
            finally:
                self._listener.close()
                self._listener = None
            self._sock = conn
        elif self.mode == "TCP-active":
            assert self._remote is not None
            self._sock = socket.create_connection(self._remote, timeout=self.timeout_s)
        assert self._sock is not None
        self._sock.setblocking(False)

    def pull(self, wait: float) -> None:
        """Wait up to ``wait`` for packets (0: none), then take every packet waiting; raises _Ended
        when the stream is over (stopped, silent, or no video for ``timeout_s``)."""
        if self._stop.is_set():
            raise _Ended(self.reason or "stopped")
        if self.ended:
            raise _Ended(self.ended)
        sock = self._sock
        assert sock is not None
        ready = wait <= 0 or select.select([sock], [], [], wait)[0]
        now = time.monotonic()
        st = self.stats
        if ready:
            if self.mode == "UDP":
                self._drain_udp(sock)
            else:
                try:
                    self._drain_tcp(sock)
                except _Ended as exc:
                    self.ended = str(exc)
                    raise
            pl = self._payloads  # its counters, per batch, not per packet
            st.packets, st.bytes, st.ssrc_mismatch, st.malformed = pl.packets, pl.bytes, pl.ssrc_mismatch, pl.malformed
            if st.packets != self._counted:
                self._counted = st.packets
                st.last_rtp = now
                st.reordered = self._reorder.reordered
        if self._reorder.waiting:
            if self._gap_since is None:
                self._gap_since = now
            elif now - self._gap_since >= MAX_REORDER_WAIT_S:
                self._payloads.flush()
                st.bytes = self._payloads.bytes
                self._gap_since = None
        else:
            self._gap_since = None
        st.lost = self._reorder.lost
        if now - st.last_rtp > self.timeout_s:
            self.ended = f"no RTP for {self.timeout_s:g} s"
            if st.ssrc_mismatch or st.malformed:
                self.ended += f" ({st.ssrc_mismatch} packet(s) of another SSRC, {st.malformed} malformed dropped)"
        elif now - st.last_frame > self.timeout_s:
            what = "no packet of the expected SSRC" if st.ssrc_mismatch and not st.bytes else "nothing decodable"
            self.ended = f"RTP arrives but no video for {self.timeout_s:g} s ({what})"
        if self.ended:
            raise _Ended(self.ended)

    def fill(self) -> None:
        """Have program stream to read: what is buffered already, else sleep ``batch_s`` (less when
        a gap is due to be given up), drain the socket once, and if nothing came, wait for the first
        packet. A wakeup costs more than the packets of a batch (on a VM, tens of microseconds), so
        the thread wakes once per batch, not per packet; the socket buffer holds the batch. A stream
        faster than the demuxer's reads (a download) is read on without sleeping while it lasts.
        Raises _Ended as ``pull`` does."""
        buf = self._buf
        if buf:
            return
        wait = self.batch_s
        if self._gap_since is not None:
            wait = min(wait, self._gap_since + MAX_REORDER_WAIT_S - time.monotonic())
        if wait > 0:
            # A plain sleep: Event.wait costs a wakeup half as much again in CPU (its condition
            # variable). A stop is seen by the pull after it, at most batch_s late.
            time.sleep(wait)
        self.pull(0)
        while not buf:
            self.pull(0.25)

    def _drain_udp(self, sock: socket.socket, rounds: int = 32) -> None:
        """Every datagram waiting (at most ``rounds`` buffers full), received back to back into the
        one buffer while it has room for the largest, then taken as spans of it (no allocation per
        datagram but the span)."""
        recv_into, view, take = sock.recv_into, self._rx, self._payloads.take
        last = len(view) - _DATAGRAM_MAX
        for _ in range(rounds):
            spans: list[tuple[int, int]] = []
            w = 0
            try:
                while w <= last:
                    n = recv_into(view[w:])
                    spans.append((w, n))
                    w += n
            except BlockingIOError:
                take(view, spans)
                return
            take(view, spans)

    def _drain_tcp(self, sock: socket.socket, reads: int = 64) -> None:
        """What the connection holds (at most ``reads`` reads): each read appended to the incomplete
        frame left by the one before, its complete RFC 4571 frames taken in place."""
        view, take = self._rx, self._payloads.take
        for _ in range(reads):
            carry = self._carry
            try:
                n = sock.recv_into(view[carry:])
            except BlockingIOError:
                return
            if not n:
                raise _Ended("the device closed the media connection")
            end = carry + n
            try:
                spans, pos = rtp.tcp_spans(view, 0, end)
            except rtp.RtpError as exc:
                raise _Ended(f"broken RTP framing on TCP: {exc}") from None
            take(view, spans)
            self._carry = end - pos
            if pos and self._carry:  # an incomplete frame (under 64 KiB) moves to the front
                view[: self._carry] = bytes(view[pos:end])


_PACK, _PSM = b"\x00\x00\x01\xba", b"\x00\x00\x01\xbc"
#: Without a stream map this far (or this long) into the stream, it has none (FFmpeg's own PS,
#: some encoders): it is read from its first pack header, nothing dropped.
PSM_SEARCH_BYTES = 1 << 20
PSM_SEARCH_S = 2.0


class _PsReader:
    """The program stream as a file for FFmpeg's demuxer: bytes from RTP payloads, in order.

    It starts at the pack that carries the first stream map (a keyframe's), or at the first pack
    header of a stream without maps: a demuxer fed the middle of a frame first (a lost or late
    first packet) probes the stream as unknown and never records it."""

    def __init__(self, rx: MediaReceiver) -> None:
        self.rx = rx
        self.synced = False
        self._since: float | None = None  # when the first bytes came, while looking for a map

    def _sync(self, buf: bytearray) -> None:
        psm = buf.find(_PSM)
        if psm >= 0:
            start = buf.rfind(_PACK, 0, psm)
            del buf[: start if start >= 0 else psm]  # a map without a pack header before it: from the map
            self.synced = True
            return
        if buf and self._since is None:
            self._since = time.monotonic()
        if len(buf) > PSM_SEARCH_BYTES or (self._since is not None and time.monotonic() - self._since > PSM_SEARCH_S):
            start = buf.find(_PACK)
            del buf[: start if start >= 0 else len(buf) - 3]
            self.synced = start >= 0

    def read(self, n: int) -> bytes:
        rx, buf = self.rx, self.rx._buf
        try:
            while not self.synced:
                rx.pull(0.25)
                self._sync(buf)
            rx.fill()
        except _Ended as exc:
            rx.reason = str(exc)
            if not buf:
                return b""  # end of file: the demuxer stops
        if n >= len(buf):  # the whole batch, the common case: one copy
            out = bytes(buf)
            buf.clear()
            return out
        with memoryview(buf) as view:  # one copy; released before the buffer shrinks
            out = bytes(view[:n])
        del buf[:n]
        return out

    def seekable(self) -> bool:
        return False


class ArchiveSink:
    """Where the hub's own segmenters put segments: a directory on the archive's disk, stored one
    at a time by a worker (the receivers never wait on the store). A segment the store cannot take
    now (disk full, store error) stays and is tried again; one it refuses is set aside in
    ``rejected/`` for a person; leftovers of a stopped hub are stored at the next start."""

    RETRY_S = 10.0

    def __init__(self, root: Path, store: Callable[[str, Segment], Outcome], source: Callable[[str], str]) -> None:
        """``store(source, segment)`` is ``SegmentIngest.store_own``; ``source(channel)`` names who sent it."""
        self.root = root
        self.tmp_dir = root / ".tmp"
        self.rejected_dir = root / "rejected"
        for d in (self.root, self.tmp_dir, self.rejected_dir):
            d.mkdir(parents=True, exist_ok=True)
        for part in self.tmp_dir.iterdir():  # a segment cut short by a stop or crash: its stream is gone
            part.unlink(missing_ok=True)
        self.store = store
        self.source = source
        self.write_errors = 0
        self.stored = 0
        self.rejected = 0
        self._queue: queue.Queue[Segment | None] = queue.Queue()
        self._waiting: list[Segment] = []
        self._thread = threading.Thread(target=self._run, name="vms-gb-store", daemon=True)
        self._seq = itertools.count()

    def start(self) -> None:
        for p in sorted(self.root.iterdir()):
            seg = Segment.from_path(p)
            if seg is not None:
                self._queue.put(seg)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    # -- SegmentSink ----------------------------------------------------------------------------------
    def tmp_path(self, device_id: str, start: float | None = None) -> Path:
        return self.tmp_dir / f"{device_id}_{next(self._seq)}.part"

    def note_write_error(self) -> None:
        self.write_errors += 1

    def added(self, seg: Segment) -> None:
        self._queue.put(seg)

    # -- the worker -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                seg = self._queue.get(timeout=self.RETRY_S if self._waiting else None)
            except queue.Empty:
                retry, self._waiting = self._waiting, []
                for s in retry:
                    self._store(s)
                continue
            if seg is None:
                return
            self._store(seg)

    def _store(self, seg: Segment) -> None:
        try:
            out = self.store(self.source(seg.device_id), seg)
        except Exception as exc:  # the store's own failure: keep the file, try again
            log.exception("GB/T 28181: storing %s failed", seg.name)
            out = Outcome(Result.STORE_ERROR, str(exc))
        if out.result in (Result.STORED, Result.DUPLICATE):
            self.stored += out.result is Result.STORED
            seg.path.unlink(missing_ok=True)  # a duplicate's file; a stored one was moved already
        elif out.result in _RETRY:
            if not self._waiting:
                log.warning("GB/T 28181: segment %s kept for a retry: %s", seg.name, out.message)
            self._waiting.append(seg)
        else:
            self.rejected += 1
            log.error("GB/T 28181: segment %s refused (%s); kept in %s", seg.name, out.message, self.rejected_dir)
            with contextlib.suppress(OSError):
                seg.path.replace(self.rejected_dir / seg.path.name)
