"""vms/media/ps.py: pack headers, PSM and CRC, PES splitting and timestamps, read back field by field."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.media import ps
from vms.media.ps import MAX_PES_PAYLOAD, PsError, PsPacker

PROPS = settings(max_examples=200, deadline=None)


def read_ts(b: bytes) -> int:
    """A 5-byte PES timestamp, checking its marker bits."""
    assert b[0] & 1 and b[2] & 1 and b[4] & 1, "marker bits"
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def read_scr(h: bytes) -> int:
    assert h[:4] == b"\x00\x00\x01\xba" and h[4] >> 6 == 0b01, "MPEG-2 pack header"
    bits = int.from_bytes(h[4:10], "big")
    assert bits >> 42 & 1 and bits >> 26 & 1 and bits >> 10 & 1 and bits & 1, "marker bits"
    return (bits >> 43 & 7) << 30 | (bits >> 27 & 0x7FFF) << 15 | (bits >> 11 & 0x7FFF)


def split(data: bytes) -> list[tuple[int, bytes]]:
    """(start code, whole packet) of one pack: header, optional BB/BC, PES packets."""
    out: list[tuple[int, bytes]] = [(0xBA, data[:14])]
    pos = 14 + (data[13] & 7)
    while pos < len(data):
        assert data[pos : pos + 3] == b"\x00\x00\x01", pos
        (n,) = struct.unpack_from("!H", data, pos + 4)
        out.append((data[pos + 3], data[pos : pos + 6 + n]))
        pos += 6 + n
    assert pos == len(data)
    return out


def test_crc32_mpeg2_check_value() -> None:
    assert ps.crc32_mpeg2(b"123456789") == 0x0376E6E7  # the catalogue's check value for CRC-32/MPEG-2


def test_keyframe_pack_has_system_header_and_psm() -> None:
    au = b"\x00\x00\x00\x01\x67" + bytes(50)
    data = PsPacker("h264").pack(au, pts=3600, dts=None, keyframe=True)
    parts = split(data)
    assert [c for c, _ in parts] == [0xBA, 0xBB, 0xBC, 0xE0]
    assert read_scr(parts[0][1]) == 3600
    psm = parts[2][1]
    assert ps.crc32_mpeg2(psm) == 0, "the CRC covers the whole map"
    assert ps.stream_types(data, verify_crc=True) == {0xE0: 0x1B}
    pes = parts[3][1]
    assert pes[6:9] == b"\x80\x80\x05" and read_ts(pes[9:14]) == 3600 and pes[14:] == au
    assert ps.stream_types(PsPacker("hevc").pack(au, 0, None, True)) == {0xE0: 0x24}


def test_non_keyframe_pack_has_no_psm() -> None:
    data = PsPacker("h265").pack(b"\x00\x00\x01\x02\x01", pts=100, dts=100, keyframe=False)
    assert [c for c, _ in split(data)] == [0xBA, 0xE0]
    assert ps.stream_types(data) == {}


@PROPS
@given(
    size=st.integers(0, 3 * MAX_PES_PAYLOAD + 10),
    pts=st.integers(0, (1 << 33) - 1),
    delay=st.integers(0, 9000) | st.none(),
    key=st.booleans(),
)
def test_pes_split_and_timestamps(size: int, pts: int, delay: int | None, key: bool) -> None:
    au = bytes(range(256)) * (size // 256) + bytes(size % 256)
    dts = None if delay is None else (pts - delay) % (1 << 33)
    data = PsPacker().pack(au, pts, dts, key)
    parts = split(data)
    assert read_scr(parts[0][1]) == (pts if dts is None else dts)
    pes = [p for c, p in parts if c == 0xE0]
    assert len(pes) == max(1, -(-size // MAX_PES_PAYLOAD))
    first, rest = pes[0], pes[1:]
    if dts is None or dts == pts:
        assert first[7] == 0x80 and first[8] == 5 and read_ts(first[9:14]) == pts
    else:
        assert first[7] == 0xC0 and first[8] == 10
        assert first[9] >> 4 == 0b0011 and first[14] >> 4 == 0b0001
        assert (read_ts(first[9:14]), read_ts(first[14:19])) == (pts, dts)
    assert all(p[6:9] == b"\x80\x00\x00" for p in rest), "timestamps on the first PES only"
    assert b"".join(p[9 + p[8] :] for p in pes) == au
    assert all(len(p) - 6 <= 65535 and len(p) - 9 - p[8] <= MAX_PES_PAYLOAD for p in pes)


def test_unknown_codec_refused() -> None:
    with pytest.raises(PsError, match="unknown codec 'mpeg2'"):
        PsPacker("mpeg2")


def test_stream_types_with_descriptors_and_errors() -> None:
    # A map as some devices write it: program info and a descriptor on the entry, two streams.
    es = bytes((0x1B, 0xE0)) + struct.pack("!H", 4) + b"\x0a\x02ab" + bytes((0x90, 0xC0)) + struct.pack("!H", 0)
    body = b"\xe0\xff" + struct.pack("!H", 3) + b"xyz" + struct.pack("!H", len(es)) + es
    head = b"\x00\x00\x01\xbc" + struct.pack("!H", len(body) + 4) + body
    psm = head + ps.crc32_mpeg2(head).to_bytes(4, "big")
    assert ps.stream_types(b"junk" + psm, verify_crc=True) == {0xE0: 0x1B, 0xC0: 0x90}
    with pytest.raises(PsError, match="declares"):
        ps.stream_types(psm[:-1])
    with pytest.raises(PsError, match="cut off"):
        ps.stream_types(b"\x00\x00\x01\xbc\x00")
    bad = bytearray(psm)
    bad[17] = 0xFF  # the first entry's es_info_length (bytes 17-18) now runs past the map
    with pytest.raises(PsError, match="overrun"):
        ps.stream_types(bytes(bad))
