"""RTP (RFC 3550) packets, RFC 4571 framing for RTP over TCP, a small reorder buffer, and the
payload assembler a receiver runs over them. Pure, no I/O.

GB/T 28181 media is MPEG-PS in RTP (payload type 96, 90 kHz), over UDP or over TCP with a 2-byte
length prefix. Parsing is strict on the header (a peer that gets it wrong would otherwise feed
the demuxer garbage) and errors say what is wrong, since they end up in logs.

A 4 Mbps stream is about 370 packets a second, so the receive path works on packets where they
were received (offsets into one buffer), never on a packet object per packet: ``Payloads`` appends
the payload of the next packet in order straight from the receive buffer, and only a packet out of
order, of another SSRC or with an unusual header takes the full parse and the reorder buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Fixed header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
_HEADER = struct.Struct("!BBHII")
_LEN = struct.Struct("!H")
_EXT = struct.Struct("!HH")
HEADER_SIZE = _HEADER.size
#: A sequence number this far from the expected one (either way) means the sender restarted
#: (RFC 3550 A.1's MAX_DROPOUT): the buffer starts over instead of waiting for or counting the gap.
MAX_DROPOUT = 3000
_SEQ_MOD = 1 << 16
_HALF = 1 << 15


class RtpError(ValueError):
    """A packet or an RFC 4571 stream that is not valid RTP."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One parsed RTP packet; the payload is without padding, CSRCs or header extension."""

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse(data: bytes) -> RtpPacket:
    """One RTP packet; RtpError says what is malformed."""
    b1, seq, ts, ssrc, start, end = parse_header(data, len(data))
    return RtpPacket(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, bytes(data[start:end]))


def parse_header(data: bytes | bytearray | memoryview, n: int) -> tuple[int, int, int, int, int, int]:
    """The header of the packet in ``data[:n]`` (a reused receive buffer needs no slice): the
    marker/payload-type byte, sequence number, timestamp, SSRC, and where the payload starts and
    ends (without CSRCs, header extension or padding). RtpError says what is malformed."""
    if n < HEADER_SIZE:
        raise RtpError(f"RTP packet of {n} bytes is shorter than the 12-byte header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 == 0x80:  # version 2, no padding, no extension, no CSRCs: what devices send
        return b1, seq, ts, ssrc, HEADER_SIZE, n
    if b0 >> 6 != 2:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    start = HEADER_SIZE + 4 * (b0 & 0x0F)
    if start > n:
        raise RtpError(f"RTP packet of {n} bytes is shorter than its {b0 & 0x0F} CSRCs")
    if b0 & 0x10:
        if start + 4 > n:
            raise RtpError(f"RTP packet of {n} bytes ends inside its header extension's header")
        _, words = _EXT.unpack_from(data, start)
        start += 4 + 4 * words
        if start > n:
            raise RtpError(f"RTP header extension of {words} words runs past the end of the {n}-byte packet")
    end = n
    if b0 & 0x20:
        if start == n:
            raise RtpError("RTP padding bit set but no payload to hold the padding count")
        pad = data[n - 1]
        if pad == 0:
            raise RtpError("RTP padding count is 0 (it counts itself, so at least 1)")
        if pad > n - start:
            raise RtpError(f"RTP padding of {pad} bytes is longer than the {n - start} bytes after the header")
        end = n - pad
    return b1, seq, ts, ssrc, start, end


def _check_fields(seq: int, timestamp: int, ssrc: int, payload_type: int) -> None:
    if not 0 <= payload_type <= 127:
        raise RtpError(f"payload type {payload_type} is not 0..127")
    if not 0 <= seq < _SEQ_MOD:
        raise RtpError(f"sequence number {seq} is not 0..65535")
    if not 0 <= timestamp < 1 << 32 or not 0 <= ssrc < 1 << 32:
        raise RtpError(f"timestamp {timestamp} or SSRC {ssrc} is not a 32-bit unsigned integer")


def build(payload: bytes, *, seq: int, timestamp: int, ssrc: int, marker: bool, payload_type: int = 96) -> bytes:
    """One RTP packet without CSRCs, extension or padding."""
    _check_fields(seq, timestamp, ssrc, payload_type)
    return _HEADER.pack(0x80, payload_type | (0x80 if marker else 0), seq, timestamp, ssrc) + payload


def packetize(
    frame: bytes, *, seq: int, timestamp: int, ssrc: int, payload_type: int = 96, mtu: int = 1400
) -> list[bytes]:
    """One frame as RTP packets of at most ``mtu`` payload bytes, the marker on the last.

    Sequence numbers run from ``seq`` and wrap mod 2**16: the caller adds ``len(result)`` to its
    own. An empty frame gives no packets.
    """
    if mtu < 1:
        raise RtpError(f"mtu {mtu} must be at least 1")
    seq %= _SEQ_MOD
    timestamp %= 1 << 32
    _check_fields(seq, timestamp, ssrc, payload_type)
    view = memoryview(frame)
    n = len(view)
    pack = _HEADER.pack
    out: list[bytes] = []
    last = n - mtu  # chunks starting after this offset are the last one
    for off in range(0, n, mtu):
        m = payload_type | 0x80 if off >= last else payload_type
        out.append(pack(0x80, m, (seq + len(out)) & 0xFFFF, timestamp, ssrc) + view[off : off + mtu])
    return out


def frame_tcp(packet: bytes) -> bytes:
    """RFC 4571: the packet behind its 2-byte big-endian length."""
    n = len(packet)
    if not 0 < n < _SEQ_MOD:
        raise RtpError(f"an RFC 4571 frame holds 1..65535 bytes, not {n}")
    return _LEN.pack(n) + packet


def tcp_spans(data: bytes | bytearray | memoryview, start: int, end: int) -> tuple[list[tuple[int, int]], int]:
    """The RFC 4571 frames complete in ``data[start:end]``: each packet's (offset, length), and the
    offset where the incomplete rest begins. RtpError on a zero length (the stream is lost then)."""
    unpack = _LEN.unpack_from
    spans: list[tuple[int, int]] = []
    pos = start
    while end - pos >= 2:
        (n,) = unpack(data, pos)
        if n == 0:
            raise RtpError(f"RFC 4571 frame of length 0 at offset {pos - start} of the buffered stream")
        if end - pos - 2 < n:
            break
        spans.append((pos + 2, n))
        pos += 2 + n
    return spans, pos


class TcpDeframer:
    """RFC 4571 byte stream → packets; a partial frame waits for the next ``feed``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The packets completed by ``data``; RtpError on a zero length (the stream is lost then)."""
        buf = self._buf
        buf += data
        spans, pos = tcp_spans(buf, 0, len(buf))
        with memoryview(buf) as view:  # one copy per packet; released before the buffer shrinks
            out = [bytes(view[a : a + n]) for a, n in spans]
        if pos:
            del buf[:pos]
        return out


class Reorder:
    """Releases packets in sequence-number order, waiting behind a gap for at most ``window`` packets.

    Sequence numbers are extended internally past the 16-bit wrap. ``_marks`` remembers, per
    16-bit number, whether it was last passed released (1) or given up (2), so a packet behind the
    buffer (at most ``MAX_DROPOUT`` back, all passed in this cycle) is told apart as a duplicate
    or as late. Counters: ``received`` (every push),
    ``lost`` (given up: never seen when released past), ``duplicates``, ``late`` (arrived after its
    place was passed: its gap given up, or before the first packet), ``reordered`` (arrived after a
    higher one and still in time), ``resyncs`` (jumps beyond ``MAX_DROPOUT``: the sender restarted).
    """

    def __init__(self, window: int = 64) -> None:
        if window < 1:
            raise ValueError(f"reorder window {window} must be at least 1")
        self.window = window
        self.received = 0
        self.lost = 0
        self.duplicates = 0
        self.late = 0
        self.reordered = 0
        self.resyncs = 0
        self._next: int | None = None  # extended number of the next packet to release
        self._top = 0  # highest extended number seen
        self._pending: dict[int, RtpPacket] = {}
        self._marks = bytearray(_SEQ_MOD)

    @property
    def waiting(self) -> int:
        """Packets held behind a gap."""
        return len(self._pending)

    def _mark(self, first: int, count: int, value: int) -> None:
        """Marks ``count`` numbers from ``first`` as released (1) or given up (2), wrap-aware."""
        count = min(count, _SEQ_MOD)
        lo = first & 0xFFFF
        hi = lo + count
        fill = bytes((value,))
        if hi <= _SEQ_MOD:
            self._marks[lo:hi] = fill * count
        else:
            self._marks[lo:] = fill * (_SEQ_MOD - lo)
            self._marks[: hi - _SEQ_MOD] = fill * (hi - _SEQ_MOD)

    @property
    def expected(self) -> int:
        """The 16-bit number ``in_order`` would take now; -1 when it would take none (no packet yet,
        or packets wait behind a gap)."""
        nxt = self._next
        return -1 if self._pending or nxt is None else nxt & 0xFFFF

    def take_run(self, count: int) -> None:
        """``count`` packets numbered on from ``expected``, released: what ``count`` calls of
        ``in_order`` that returned True do, for a caller that checked the numbers itself."""
        nxt = self._next
        if count <= 0:
            return
        if self._pending or nxt is None:
            raise ValueError("take_run with packets waiting or before the first packet")
        self.received += count
        self._next = nxt + count
        self._top = nxt + count - 1
        self._mark(nxt, count, 1)

    def in_order(self, seq: int) -> bool:
        """The common case, without a packet object: True when ``seq`` is the next number and nothing
        waits, and it is then counted as received and released (its payload is the caller's to use);
        False otherwise, and the caller ``push``es the packet."""
        nxt = self._next
        if self._pending or nxt is None or seq != nxt & 0xFFFF:
            return False
        self.received += 1
        self._next = nxt + 1
        self._top = nxt
        self._marks[seq] = 1
        return True

    def push(self, pkt: RtpPacket) -> list[RtpPacket]:
        """The packets now releasable, in order."""
        seq = pkt.seq
        if self.in_order(seq):
            return [pkt]
        self.received += 1
        nxt = self._next
        if nxt is None:
            self._next = seq + 1
            self._top = seq
            self._mark(seq, 1, 1)
            return [pkt]
        d = ((seq - nxt + _HALF) & 0xFFFF) - _HALF
        if d > MAX_DROPOUT or d < -MAX_DROPOUT:
            return self._resync(pkt, nxt + d)
        if d < 0:
            if self._marks[seq] == 2:
                self.late += 1
                self._marks[seq] = 1
            elif self._marks[seq] == 1:
                self.duplicates += 1
            else:
                self.late += 1
            return []
        ext = nxt + d
        if ext in self._pending:
            self.duplicates += 1
            return []
        if ext < self._top:
            self.reordered += 1
        else:
            self._top = ext
        self._pending[ext] = pkt
        if d == 0:
            return self._release()
        if len(self._pending) > self.window:
            return self._give_up()
        return []

    def _release(self) -> list[RtpPacket]:
        """The run of consecutive packets waiting from ``_next`` on."""
        start = self._next
        assert start is not None
        pending = self._pending
        out: list[RtpPacket] = []
        nxt = start
        while nxt in pending:
            out.append(pending.pop(nxt))
            nxt += 1
        if out:
            self._mark(start, len(out), 1)
            self._next = nxt
        return out

    def _give_up(self) -> list[RtpPacket]:
        """Gives up gaps until at most ``window`` packets wait, releasing what follows each one."""
        out: list[RtpPacket] = []
        while len(self._pending) > self.window:
            out += self._skip_gap()
        return out

    def _skip_gap(self) -> list[RtpPacket]:
        """Gives up the gap before the first waiting packet and releases the run from there."""
        nxt = self._next
        assert nxt is not None
        first = min(self._pending)
        self.lost += first - nxt
        self._mark(nxt, first - nxt, 2)
        self._next = first
        return self._release()

    def _resync(self, pkt: RtpPacket, ext: int) -> list[RtpPacket]:
        """The sender jumped: what waited goes out, and numbering starts over at this packet."""
        self.resyncs += 1
        out = self.flush()
        self._marks = bytearray(_SEQ_MOD)
        self._next = ext + 1
        self._top = ext
        self._mark(pkt.seq, 1, 1)
        out.append(pkt)
        return out

    def flush(self) -> list[RtpPacket]:
        """Everything waiting, in order; the gaps between count as lost."""
        out: list[RtpPacket] = []
        while self._pending:
            out += self._skip_gap()
        return out


class Payloads:
    """One stream's RTP packets → their payloads in sequence order, appended to ``out``.

    ``take`` gets packets as (offset, length) spans of a receive buffer (UDP datagrams received
    back to back, or RFC 4571 frames found by ``tcp_spans``). A packet with the plain header
    (version 2, nothing optional), of the session's SSRC and numbered next, has its payload
    appended from the buffer at once, and the reorder buffer is told once per run of them; any
    other packet is parsed in full (malformed ones counted and dropped), checked and pushed through
    ``reorder``. Counters: ``packets`` (of the SSRC, taken), ``bytes`` (payload appended),
    ``ssrc_mismatch`` and ``malformed`` (dropped)."""

    __slots__ = ("bytes", "malformed", "out", "packets", "reorder", "ssrc", "ssrc_mismatch")

    def __init__(self, out: bytearray, reorder: Reorder | None = None, ssrc: int | None = None) -> None:
        """``ssrc`` None takes any SSRC."""
        self.out = out
        self.reorder = reorder if reorder is not None else Reorder()
        self.ssrc = ssrc
        self.packets = 0
        self.bytes = 0
        self.ssrc_mismatch = 0
        self.malformed = 0

    def take(self, view: memoryview, spans: list[tuple[int, int]]) -> None:
        """The packets at ``spans`` of ``view``, in arrival order."""
        unpack = _HEADER.unpack_from
        out, want, reorder = self.out, self.ssrc, self.reorder
        expect = reorder.expected
        run = nbytes = 0
        for off, n in spans:
            if n >= HEADER_SIZE:
                b0, _, seq, _, ssrc = unpack(view, off)
                if b0 == 0x80 and seq == expect and (ssrc == want or want is None):
                    out += view[off + HEADER_SIZE : off + n]
                    nbytes += n - HEADER_SIZE
                    run += 1
                    expect = (expect + 1) & 0xFFFF
                    continue
            if run:
                reorder.take_run(run)
                self.packets += run
                run = 0
            self._other(view[off : off + n], n)
            expect = reorder.expected
        if run:
            reorder.take_run(run)
            self.packets += run
        self.bytes += nbytes

    def _other(self, data: memoryview, n: int) -> None:
        """A packet off the fast path: parsed in full, checked, and through the reorder buffer."""
        try:
            b1, seq, ts, ssrc, start, end = parse_header(data, n)
        except RtpError:
            self.malformed += 1
            return
        if self.ssrc is not None and ssrc != self.ssrc:
            self.ssrc_mismatch += 1
            return
        self.packets += 1
        pkt = RtpPacket(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, bytes(data[start:end]))
        self._append(self.reorder.push(pkt))

    def flush(self) -> None:
        """Gives up the gaps: what waits behind them is appended (the gaps count as lost)."""
        self._append(self.reorder.flush())

    def _append(self, packets: list[RtpPacket]) -> None:
        for q in packets:
            self.out += q.payload
            self.bytes += len(q.payload)
