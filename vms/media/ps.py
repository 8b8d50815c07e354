"""MPEG-2 Program Stream (ISO/IEC 13818-1) as GB/T 28181 devices send it. Pure, no I/O.

Each access unit becomes one pack: a pack header, before a keyframe the system header and the
program stream map (whose stream type is how a GB peer learns the codec), then PES packets of
stream id 0xE0. FFmpeg's own ``mpeg`` muxer writes no PSM and puts H.264 on 0xE2, which GB peers
do not expect, hence this packer.
"""

from __future__ import annotations

import struct
from functools import cache

STREAM_TYPES: dict[str, int] = {"h264": 0x1B, "h265": 0x24}
#: Other names of the same codecs (FFmpeg calls H.265 "hevc").
ALIASES: dict[str, str] = {"hevc": "h265", "avc": "h264"}
VIDEO_STREAM_ID = 0xE0
#: Payload bytes per PES packet: PES_packet_length is 16 bits and counts the optional header too.
MAX_PES_PAYLOAD = 65_400
#: program_mux_rate and rate_bound in units of 50 bytes/s (20 Mbit/s): a bound, not a measure.
MUX_RATE = 50_000
_TS_MASK = (1 << 33) - 1
_U16 = struct.Struct("!H")

PACK_START = b"\x00\x00\x01\xba"
SYSTEM_START = b"\x00\x00\x01\xbb"
PSM_START = b"\x00\x00\x01\xbc"


class PsError(ValueError):
    """An unknown codec, or a program stream map that cannot be read."""


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (polynomial 0x04C11DB7, not reflected, init all ones, no final xor).

    Runs once per codec (the map is cached) and on maps read back, never per frame.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _timestamp(prefix: int, ts: int) -> bytes:
    """A 33-bit PTS or DTS in its 5-byte PES form behind the 4-bit ``prefix``, with marker bits."""
    ts &= _TS_MASK
    return bytes(
        (
            (prefix << 4) | ((ts >> 29) & 0x0E) | 1,
            (ts >> 22) & 0xFF,
            ((ts >> 14) & 0xFE) | 1,
            (ts >> 7) & 0xFF,
            ((ts << 1) & 0xFE) | 1,
        )
    )


def pack_header(scr: int, mux_rate: int = MUX_RATE) -> bytes:
    """The 14-byte MPEG-2 pack header, SCR in 90 kHz units (extension 0), no stuffing."""
    scr &= _TS_MASK
    bits = (
        (0b01 << 46)
        | ((scr >> 30) << 43)
        | (1 << 42)
        | (((scr >> 15) & 0x7FFF) << 27)
        | (1 << 26)
        | ((scr & 0x7FFF) << 11)
        | (1 << 10)
        | 1  # scr extension 0 (9 bits) then the marker
    )
    return PACK_START + bits.to_bytes(6, "big") + ((mux_rate << 2) | 0b11).to_bytes(3, "big") + b"\xf8"


@cache
def system_header() -> bytes:
    """System header for one video stream (0xE0, a P-STD buffer bound of 1 MiB)."""
    body = (
        ((1 << 23) | (MUX_RATE << 1) | 1).to_bytes(3, "big")
        + bytes((0 << 2 | 0b00, 0b11 << 6 | 1 << 5 | 1, 0x7F))  # audio bound 0; locked; marker; video bound 1
        + bytes((VIDEO_STREAM_ID, 0xE0 | (1024 >> 8), 1024 & 0xFF))  # '11', scale 1 KiB, bound 1024
    )
    return SYSTEM_START + _U16.pack(len(body)) + body


@cache
def program_stream_map(stream_type: int) -> bytes:
    """Program stream map naming one video stream (0xE0) of ``stream_type``, with its CRC."""
    es_map = bytes((stream_type, VIDEO_STREAM_ID)) + _U16.pack(0)
    body = b"\xe0\xff" + _U16.pack(0) + _U16.pack(len(es_map)) + es_map
    head = PSM_START + _U16.pack(len(body) + 4) + body
    return head + crc32_mpeg2(head).to_bytes(4, "big")


class PsPacker:
    """Access units (Annex-B H.264/H.265) → MPEG-PS packs, one per access unit."""

    def __init__(self, codec: str = "h264") -> None:
        name = ALIASES.get(codec.lower(), codec.lower())
        if name not in STREAM_TYPES:
            raise PsError(f"unknown codec {codec!r} (known: {', '.join(STREAM_TYPES)})")
        self.codec = name
        self._headers = system_header() + program_stream_map(STREAM_TYPES[name])

    def pack(self, au: bytes, pts: int, dts: int | None, keyframe: bool) -> bytes:
        """One pack for one access unit; ``pts``/``dts`` in 90 kHz units (wrapped to 33 bits)."""
        scr = pts if dts is None else dts
        if dts is None or (dts - pts) & _TS_MASK == 0:
            first_opt = b"\x80\x80\x05" + _timestamp(0b0010, pts)
        else:
            first_opt = b"\x80\xc0\x0a" + _timestamp(0b0011, pts) + _timestamp(0b0001, dts)
        view = memoryview(au)
        parts: list[bytes | memoryview] = [pack_header(scr)]
        if keyframe:
            parts.append(self._headers)
        opt = first_opt
        n = len(view)
        for off in range(0, max(n, 1), MAX_PES_PAYLOAD):
            chunk = view[off : off + MAX_PES_PAYLOAD]
            parts += (b"\x00\x00\x01\xe0", _U16.pack(len(opt) + len(chunk)), opt, chunk)
            opt = b"\x80\x00\x00"
        return b"".join(parts)


def stream_types(data: bytes, *, verify_crc: bool = False) -> dict[int, int]:
    """Elementary stream id → stream type from the first program stream map in ``data``.

    Empty when ``data`` holds no map; PsError when the map is truncated or inconsistent (or its
    CRC is wrong, with ``verify_crc``: off by default, as some devices get the CRC wrong).
    """
    start = data.find(PSM_START)
    if start < 0:
        return {}
    if start + 6 > len(data):
        raise PsError(f"program stream map at offset {start} is cut off before its length")
    (length,) = _U16.unpack_from(data, start + 4)
    end = start + 6 + length
    if end > len(data):
        raise PsError(f"program stream map at offset {start} declares {length} bytes, {len(data) - start - 6} follow")
    if length < 10:
        raise PsError(f"program stream map length {length} is shorter than the 10 bytes of its fixed fields")
    if verify_crc and crc32_mpeg2(data[start:end]) != 0:
        raise PsError(f"program stream map at offset {start}: CRC-32 mismatch")
    (info_len,) = _U16.unpack_from(data, start + 8)
    pos = start + 10 + info_len
    if pos + 2 > end - 4:
        raise PsError(f"program stream info of {info_len} bytes runs past the map")
    (map_len,) = _U16.unpack_from(data, pos)
    pos += 2
    stop = pos + map_len
    if stop > end - 4:
        raise PsError(f"elementary stream map of {map_len} bytes runs past the map")
    out: dict[int, int] = {}
    while pos + 4 <= stop:
        stype, sid, es_info = data[pos], data[pos + 1], _U16.unpack_from(data, pos + 2)[0]
        out[sid] = stype
        pos += 4 + es_info
    if pos != stop:
        raise PsError(f"elementary stream map entries overrun its {map_len} bytes")
    return out
