"""vms/media/rtp.py: RFC 3550 headers, RFC 4571 framing, and the reorder buffer under shuffles and drops."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.media import rtp
from vms.media.rtp import Reorder, RtpError, RtpPacket, TcpDeframer

PROPS = settings(max_examples=200, deadline=None)


def test_build_then_parse() -> None:
    data = rtp.build(b"abc", seq=65535, timestamp=0xFFFFFFFF, ssrc=123456789, marker=True, payload_type=96)
    assert data[:2] == b"\x80\xe0" and len(data) == 15
    assert rtp.parse(data) == RtpPacket(96, True, 65535, 0xFFFFFFFF, 123456789, b"abc")


def test_parse_csrc_extension_and_padding() -> None:
    # V=2, P=1, X=1, CC=2; two CSRCs, an extension of 1 word, 3 payload bytes, 4 padding bytes.
    head = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0x60, 7, 9000, 42)
    data = head + b"\x00\x00\x00\x01" * 2 + b"\xbe\xde\x00\x01" + b"EXT!" + b"pay" + b"\x00\x00\x00\x04"
    assert rtp.parse(data) == RtpPacket(0x60, False, 7, 9000, 42, b"pay")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00", "shorter than the 12-byte header"),
        (b"\x40" + bytes(11), "RTP version 1, expected 2"),
        (b"\x83" + bytes(11) + bytes(8), "shorter than its 3 CSRCs"),
        (b"\x90" + bytes(11) + b"\xbe", "ends inside its header extension"),
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4), "extension of 2 words runs past"),
        (b"\xa0" + bytes(11), "no payload to hold the padding count"),
        (b"\xa0" + bytes(11) + b"ab\x00", "padding count is 0"),
        (b"\xa0" + bytes(11) + b"ab\x04", "padding of 4 bytes is longer than the 3 bytes"),
    ],
)
def test_parse_refuses_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        rtp.parse(data)


def test_build_refuses_out_of_range() -> None:
    with pytest.raises(RtpError, match="payload type 128"):
        rtp.build(b"", seq=0, timestamp=0, ssrc=0, marker=False, payload_type=128)
    with pytest.raises(RtpError, match="sequence number 65536"):
        rtp.build(b"", seq=65536, timestamp=0, ssrc=0, marker=False)
    with pytest.raises(RtpError, match="timestamp"):
        rtp.build(b"", seq=0, timestamp=1 << 32, ssrc=0, marker=False)


@PROPS
@given(
    frame=st.binary(min_size=0, max_size=5000),
    seq=st.integers(0, 65535),
    ts=st.integers(0, (1 << 32) - 1),
    mtu=st.integers(1, 1500),
)
def test_packetize_round_trip(frame: bytes, seq: int, ts: int, mtu: int) -> None:
    packets = rtp.packetize(frame, seq=seq, timestamp=ts, ssrc=0xDEADBEEF, mtu=mtu)
    parsed = [rtp.parse(p) for p in packets]
    assert b"".join(p.payload for p in parsed) == frame
    assert len(packets) == -(-len(frame) // mtu)
    assert all(len(p.payload) <= mtu for p in parsed)
    assert [p.marker for p in parsed] == [i == len(parsed) - 1 for i in range(len(parsed))]
    assert [p.seq for p in parsed] == [(seq + i) % 65536 for i in range(len(parsed))]
    assert {(p.timestamp, p.ssrc, p.payload_type) for p in parsed} <= {(ts, 0xDEADBEEF, 96)}


def test_packetize_1400_byte_payloads() -> None:
    packets = rtp.packetize(bytes(3000), seq=65535, timestamp=1, ssrc=2)
    assert [len(p) - 12 for p in packets] == [1400, 1400, 200]
    assert [rtp.parse(p).seq for p in packets] == [65535, 0, 1]


@PROPS
@given(packets=st.lists(st.binary(min_size=1, max_size=3000), max_size=20), cuts=st.lists(st.integers(0, 70000)))
def test_tcp_framing_round_trip_any_split(packets: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(rtp.frame_tcp(p) for p in packets)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    d = TcpDeframer()
    out: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        out += d.feed(stream[a:b])
    assert out == packets
    assert d.pending == 0


def test_tcp_deframer_keeps_partial_and_refuses_zero_length() -> None:
    d = TcpDeframer()
    assert d.feed(b"\x00\x03ab") == []
    assert d.pending == 4
    assert d.feed(b"c\x00") == [b"abc"]
    with pytest.raises(RtpError, match="length 0"):
        d.feed(b"\x00")
    with pytest.raises(RtpError, match=r"1\.\.65535"):
        rtp.frame_tcp(b"")


def pkt(seq: int) -> RtpPacket:
    return RtpPacket(96, False, seq % 65536, 0, 1, b"")


def test_reorder_in_order_fast_path_and_wrap() -> None:
    r = Reorder()
    got = [p.seq for s in range(65530, 65540) for p in r.push(pkt(s))]
    assert got == [s % 65536 for s in range(65530, 65540)]
    assert (r.received, r.lost, r.reordered, r.duplicates, r.late) == (10, 0, 0, 0, 0)


def test_reorder_gap_filled_duplicate_and_late() -> None:
    r = Reorder(window=3)
    assert [p.seq for p in r.push(pkt(10))] == [10]
    assert r.push(pkt(12)) == [] and r.push(pkt(13)) == []
    assert [p.seq for p in r.push(pkt(11))] == [11, 12, 13]
    assert r.reordered == 1
    assert r.push(pkt(12)) == [] and r.duplicates == 1
    # 14 lost: after 3 wait behind it, a 4th gives it up.
    for s in (15, 16, 17):
        assert r.push(pkt(s)) == []
    assert [p.seq for p in r.push(pkt(18))] == [15, 16, 17, 18]
    assert r.lost == 1
    assert r.push(pkt(14)) == [] and r.late == 1
    assert r.push(pkt(14)) == [] and r.duplicates == 2  # late once, a duplicate after that
    assert r.push(pkt(30)) == [] and [p.seq for p in r.flush()] == [30]
    assert r.lost == 1 + 11


def test_reorder_resyncs_after_a_jump() -> None:
    r = Reorder()
    r.push(pkt(100))
    assert [p.seq for p in r.push(pkt(40000))] == [40000]
    assert [p.seq for p in r.push(pkt(40001))] == [40001]
    assert r.resyncs == 1 and r.lost == 0


@PROPS
@given(
    start=st.integers(0, 65535),
    n=st.integers(1, 400),
    window=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_reorder_restores_order_under_bounded_shuffles(start: int, n: int, window: int, seed: int) -> None:
    """A packet displaced by less than the window is never lost and everything comes out in order."""
    rnd = random.Random(seed)
    # Shuffle within blocks of `window` packets: no packet is more than window-1 places from home.
    order = list(range(n))
    for i in range(1, n, window):  # the first packet sets the base, so it goes first
        block = order[i : i + window]
        rnd.shuffle(block)
        order[i : i + window] = block
    r = Reorder(window)
    out = [p for i in order for p in r.push(pkt(start + i))] + r.flush()
    assert [p.seq for p in out] == [(start + i) % 65536 for i in range(n)]
    assert (r.lost, r.late, r.duplicates) == (0, 0, 0)
    assert r.received == n


@PROPS
@given(
    start=st.integers(0, 65535),
    n=st.integers(1, 600),
    window=st.integers(1, 32),
    drop=st.floats(0, 0.5),
    dup=st.floats(0, 0.2),
    seed=st.integers(0, 2**32 - 1),
)
def test_reorder_accounts_for_every_packet(
    start: int, n: int, window: int, drop: float, dup: float, seed: int
) -> None:
    """Under drops, duplicates and any reordering: output strictly increasing, every number either
    released once or counted lost, and every push counted exactly once."""
    rnd = random.Random(seed)
    sent = [0] + [i for i in range(1, n) if rnd.random() >= drop]
    sent += [rnd.choice(sent) for _ in range(int(len(sent) * dup))]
    head, rest = sent[:1], sent[1:]
    rnd.shuffle(rest)
    r = Reorder(window)
    out = [p for i in head + rest for p in r.push(pkt(start + i))] + r.flush()
    ext = [(p.seq - start) % 65536 for p in out]
    assert ext == sorted(set(ext)), "released in strictly increasing order, each once"
    assert set(ext) <= set(sent)
    assert len(ext) + r.lost == max(ext) + 1, "every number up to the last released is released or lost"
    assert r.received == len(sent) == len(ext) + r.duplicates + r.late


def test_parse_header_reads_a_reused_buffer_up_to_n() -> None:
    """A receive buffer holds one datagram at its start and stale bytes after it: only ``n`` counts."""
    head = struct.pack("!BBHII", 0x80 | 0x20, 0xE0, 9, 1800, 77)
    buf = bytearray(64)
    packet = head + b"payload" + b"\x00\x02"
    buf[: len(packet)] = packet
    buf[len(packet) :] = b"\xff" * (64 - len(packet))  # a longer earlier datagram's tail
    assert rtp.parse_header(memoryview(buf), len(packet)) == (0xE0, 9, 1800, 77, 12, 12 + len(b"payload"))
    with pytest.raises(RtpError, match="padding count is 0"):  # its byte n - 1, not the buffer's last (255)
        rtp.parse_header(buf, len(packet) - 1)


@PROPS
@given(
    start=st.integers(0, 65535),
    n=st.integers(1, 300),
    window=st.integers(1, 32),
    drop=st.floats(0, 0.3),
    dup=st.floats(0, 0.1),
    seed=st.integers(0, 2**32 - 1),
)
def test_in_order_then_push_is_push(start: int, n: int, window: int, drop: float, dup: float, seed: int) -> None:
    """A receiver that takes the in-order fast path first and pushes only the rest releases the same
    packets in the same order, with the same counters, as one that pushes everything."""
    rnd = random.Random(seed)
    sent = [0] + [i for i in range(1, n) if rnd.random() >= drop]
    sent += [rnd.choice(sent) for _ in range(int(len(sent) * dup))]
    for k in range(1, len(sent) - 1):  # neighbours swapped now and then
        if rnd.random() < 0.1:
            sent[k], sent[k + 1] = sent[k + 1], sent[k]
    plain, fast = Reorder(window), Reorder(window)
    out_plain = [p.seq for i in sent for p in plain.push(pkt(start + i))] + [p.seq for p in plain.flush()]
    out_fast: list[int] = []
    for i in sent:
        seq = (start + i) % 65536
        if fast.in_order(seq):
            out_fast.append(seq)
        else:
            out_fast += [p.seq for p in fast.push(pkt(seq))]
    out_fast += [p.seq for p in fast.flush()]
    assert out_fast == out_plain
    counters = ("received", "lost", "duplicates", "late", "reordered", "resyncs")
    assert [getattr(fast, c) for c in counters] == [getattr(plain, c) for c in counters]



def test_tcp_spans_finds_complete_frames_in_place_and_where_the_rest_starts() -> None:
    stream = b"junk" + rtp.frame_tcp(b"abc") + rtp.frame_tcp(b"de") + b"\x00\x05xy"
    assert rtp.tcp_spans(stream, 4, len(stream)) == ([(6, 3), (11, 2)], 13)
    assert rtp.tcp_spans(stream, 13, len(stream)) == ([], 13)  # a frame cut short waits
    assert rtp.tcp_spans(stream, 4, 5) == ([], 4)  # half a length prefix too
    with pytest.raises(RtpError, match="length 0 at offset 3"):
        rtp.tcp_spans(b"\x00\x01a\x00\x00", 0, 5)


def test_take_run_is_in_order_that_many_times_across_the_wrap() -> None:
    plain, run = Reorder(), Reorder()
    assert run.expected == -1  # nothing yet
    for r in (plain, run):
        r.push(pkt(65530))
    assert run.expected == 65531
    assert all(plain.in_order(s % 65536) for s in range(65531, 65541))
    run.take_run(10)
    assert run.expected == plain.expected == 5
    plain.push(pkt(7))
    assert plain.expected == -1  # 7 waits behind 5 and 6
    with pytest.raises(ValueError, match="packets waiting"):
        plain.take_run(1)
    run.push(pkt(7))
    for r in (plain, run):  # the same history: 5 and 6 given up, 8 next, the same counters
        r.flush()
    assert [r.push(pkt(8))[0].seq for r in (plain, run)] == [8, 8]
    counters = ("received", "lost", "duplicates", "late", "reordered", "resyncs")
    assert [getattr(run, c) for c in counters] == [getattr(plain, c) for c in counters]


def _packet(seq: int, ssrc: int, payload: bytes, kind: int) -> bytes:
    """Kind 0: the plain header; 1: CSRCs, an extension and padding; 2: malformed (version 1)."""
    if kind == 1:
        head = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 96, seq, 0, ssrc)
        return head + b"\x00\x00\x00\x09" + b"\xbe\xde\x00\x01" + b"EXT!" + payload + b"\x00\x02"
    b0 = 0x40 if kind == 2 else 0x80
    return struct.pack("!BBHII", b0, 96, seq, 0, ssrc) + payload


@PROPS
@given(
    start=st.integers(0, 65535),
    n=st.integers(1, 300),
    window=st.integers(1, 32),
    drop=st.floats(0, 0.3),
    dup=st.floats(0, 0.1),
    odd=st.floats(0, 0.2),
    seed=st.integers(0, 2**32 - 1),
)
def test_payloads_take_spans_as_parse_and_push_each_packet(
    start: int, n: int, window: int, drop: float, dup: float, odd: float, seed: int
) -> None:
    """Packets received back to back into one buffer and taken as spans, in batches cut anywhere:
    the payloads come out as parsing each packet and pushing it through a reorder buffer gives them,
    with the same counters; packets of another SSRC, malformed ones and unusual headers included."""
    rnd = random.Random(seed)
    sent = [0] + [i for i in range(1, n) if rnd.random() >= drop]
    sent += [rnd.choice(sent) for _ in range(int(len(sent) * dup))]
    for k in range(1, len(sent) - 1):
        if rnd.random() < 0.1:
            sent[k], sent[k + 1] = sent[k + 1], sent[k]
    packets = []
    for i in sent:
        kind = 0 if rnd.random() >= odd else rnd.choice((1, 2))
        ssrc = 7 if rnd.random() >= odd / 2 else 8
        packets.append(_packet((start + i) % 65536, ssrc, bytes([i % 251]) * rnd.randint(0, 40), kind))
    # The reference: each packet parsed and pushed.
    ref = Reorder(window)
    expected = bytearray()
    malformed = foreign = 0
    for data in packets:
        try:
            p = rtp.parse(data)
        except RtpError:
            malformed += 1
            continue
        if p.ssrc != 7:
            foreign += 1
            continue
        expected += b"".join(q.payload for q in ref.push(p))
    expected += b"".join(q.payload for q in ref.flush())
    # Spans of one buffer, taken in batches.
    buf = bytearray(b"".join(packets))
    spans, pos = [], 0
    for data in packets:
        spans.append((pos, len(data)))
        pos += len(data)
    out = bytearray()
    payloads = rtp.Payloads(out, Reorder(window), ssrc=7)
    cuts = sorted(rnd.sample(range(len(spans) + 1), min(3, len(spans) + 1)))
    with memoryview(buf) as view:
        for a, b in itertools.pairwise([0, *cuts, len(spans)]):
            payloads.take(view, spans[a:b])
    payloads.flush()
    assert out == expected
    assert (payloads.malformed, payloads.ssrc_mismatch) == (malformed, foreign)
    assert payloads.packets == len(packets) - malformed - foreign == ref.received
    assert payloads.bytes == len(out)
    counters = ("received", "lost", "duplicates", "late", "reordered", "resyncs")
    assert [getattr(payloads.reorder, c) for c in counters] == [getattr(ref, c) for c in counters]


def test_payloads_without_an_ssrc_take_any() -> None:
    out = bytearray()
    payloads = rtp.Payloads(out)
    data = _packet(1, 5, b"ab", 0) + _packet(2, 6, b"cd", 0)
    payloads.take(memoryview(data), [(0, 14), (14, 14)])
    assert out == b"abcd" and payloads.ssrc_mismatch == 0 and payloads.packets == 2
