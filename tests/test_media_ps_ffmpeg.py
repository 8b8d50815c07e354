"""vms/media/ps.py read back by FFmpeg's own ``mpeg`` demuxer: codec from the PSM, frames, PTS, keyframes.

The clips are encoded here, at test time, so no media file is committed; B-frames make DTS differ
from PTS, and noise keyframes are larger than one PES packet.
"""

from __future__ import annotations

import fractions
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from vms.media.ps import MAX_PES_PAYLOAD, STREAM_TYPES, PsPacker, stream_types

#: 90 kHz ticks per frame at 25 fps, and an offset so the B-frames' negative DTS stay positive.
TICKS = 3600
OFFSET = 90_000
FPS = 25
GOP = 10


@dataclass(frozen=True)
class Au:
    data: bytes
    pts: int
    dts: int
    key: bool


def encode(codec: str, frames: int, noise: bool) -> list[Au]:
    """Annex-B access units of a 320x240 clip with B-frames, timestamps in 90 kHz."""
    encoder = {"h264": "libx264", "h265": "libx265"}[codec]
    if encoder not in av.codecs_available:
        pytest.skip(f"{encoder} is not in this PyAV build")
    crf = "4" if noise else "28"  # noise at a high quality makes keyframes of several PES packets
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 240, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS)
    if encoder == "libx264":
        ctx.options = {"bframes": "2", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "crf": crf}
    else:
        ctx.options = {"x265-params": f"bframes=2:keyint={GOP}:min-keyint={GOP}:scenecut=0:crf={crf}:log-level=error"}
    rng = np.random.default_rng(7)
    out: list[Au] = []

    def take(packets: list[av.Packet]) -> None:
        for p in packets:
            assert p.pts is not None and p.dts is not None
            out.append(Au(bytes(p), p.pts * TICKS + OFFSET, p.dts * TICKS + OFFSET, p.is_keyframe))

    for i in range(frames):
        if noise:
            img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        else:
            img = np.zeros((240, 320, 3), np.uint8)
            img[:, (i * 8) % 320 :] = (40, 120, 200)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        take(ctx.encode(frame))
    take(ctx.encode(None))
    return out


def write_ps(path: Path, codec: str, aus: list[Au]) -> bytes:
    packer = PsPacker(codec)
    data = b"".join(packer.pack(a.data, a.pts, a.dts, a.key) for a in aus)
    path.write_bytes(data)
    return data


def demux(path: Path) -> tuple[str, list[tuple[int, bool]], int]:
    """Codec, (pts, keyframe) per packet and decoded frames, through PyAV's ``mpeg`` demuxer."""
    decoded = 0
    with av.open(str(path), format="mpeg") as c:
        assert len(c.streams.video) == 1
        name = c.streams.video[0].codec_context.name
        packets: list[tuple[int, bool]] = []
        for p in c.demux(video=0):
            if p.size == 0:
                continue
            assert p.pts is not None
            assert p.time_base == fractions.Fraction(1, 90_000)
            packets.append((p.pts, p.is_keyframe))
            decoded += len(p.decode())
        decoded += len(c.streams.video[0].codec_context.decode(None))
    return name, packets, decoded


@pytest.mark.parametrize(("codec", "noise"), [("h264", False), ("h264", True), ("h265", False), ("h265", True)])
def test_ffmpeg_reads_packed_stream(tmp_path: Path, codec: str, noise: bool) -> None:
    aus = encode(codec, 3 * GOP if noise else 6 * GOP, noise)
    assert any(a.dts != a.pts for a in aus), "the clip must have B-frames"
    if noise:
        assert max(len(a.data) for a in aus) > MAX_PES_PAYLOAD, "noise keyframes must span several PES packets"
    path = tmp_path / f"{codec}.ps"
    data = write_ps(path, codec, aus)
    assert stream_types(data, verify_crc=True) == {0xE0: STREAM_TYPES[codec]}
    assert data.count(b"\x00\x00\x01\xbc") == sum(a.key for a in aus)

    name, packets, decoded = demux(path)
    assert name == {"h264": "h264", "h265": "hevc"}[codec]
    assert [p for p, _ in packets] == [a.pts for a in aus]
    assert sum(a.key for a in aus) >= len(aus) // GOP
    assert [i for i, (_, k) in enumerate(packets) if k] == [i for i, a in enumerate(aus) if a.key]
    assert decoded == len(aus)

    # The command-line tools agree, and the decoder says nothing about errors.
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-f", "mpeg", "-show_streams", "-count_frames", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert probe.stderr == ""
    (stream,) = json.loads(probe.stdout)["streams"]
    assert stream["codec_name"] == name and stream["id"] == "0x1e0"
    assert int(stream["nb_read_frames"]) == len(aus)
    run = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "mpeg", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr


def test_broken_psm_is_caught_by_crc(tmp_path: Path) -> None:
    aus = encode("h264", GOP, False)
    data = bytearray(write_ps(tmp_path / "a.ps", "h264", aus))
    at = data.find(b"\x00\x00\x01\xbc") + 12  # the stream type of the only entry
    data[at] = 0x24
    assert stream_types(bytes(data)) == {0xE0: 0x24}  # lenient by default, as devices get CRCs wrong
    with pytest.raises(ValueError, match="CRC"):
        stream_types(bytes(data), verify_crc=True)
