"""Segments from real RTSP streams: keyframe-aligned, decodable, right durations, atomic on disk."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import av
import pytest

from edge_agent.ingest import CameraIngest
from edge_agent.spool import Spool
from tests.rtsp_fixture import RtspServer, clips_fixture, decode_count, wait_for  # noqa: F401
from vms.media.segmenter import Segmenter, parameter_sets

ROOT = Path(__file__).resolve().parent.parent
DEV_A = "32058501001320000001"
DEV_B = "32058501001320000002"


def check_segments(spool: Spool, dev: str, seg_s: float, fps: int = 25) -> None:
    segs = [s for s in spool.segments() if s.device_id == dev]
    assert len(segs) >= 3, segs
    for i, s in enumerate(segs):
        assert hashlib.sha256(s.path.read_bytes()).hexdigest() == s.sha256
        frames, packets, keys = decode_count(s.path)
        with av.open(str(s.path)) as c:
            first = next(p for p in c.demux(video=0) if p.size)
        assert first.is_keyframe, f"segment {i} does not start on a keyframe"
        assert frames == packets, f"segment {i}: {packets} packets but {frames} frames decoded"
        # A segment spans its frames; on a loaded machine the camera server may skip a frame or two,
        # and the segment's time span then rightly covers the hole.
        assert frames / fps - 1.5 / fps <= s.duration <= frames / fps + 0.25
        if i < len(segs) - 1:  # the last one was closed early by the stop
            assert seg_s <= s.duration < seg_s + 1.0 + 0.1  # GOP is 1 s
            assert keys == round(s.duration)  # one keyframe per second of clip
            assert segs[i + 1].start - s.start == pytest.approx(s.duration, abs=0.25)


def test_keyframe_aligned_segments_plain_and_bframes(tmp_path: Path, clips: dict[str, Path]) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    seg_s = 1.5  # with a 1 s GOP every cut waits for the keyframe at 2 s
    with RtspServer({"/plain": clips["plain"], "/bf": clips["bframes"]}) as srv:
        ings = [CameraIngest(DEV_A, srv.url("/plain"), Segmenter(DEV_A, spool, seg_s)),
                CameraIngest(DEV_B, srv.url("/bf"), Segmenter(DEV_B, spool, seg_s))]
        ings[0].start()
        time.sleep(0.3)  # FACTS: two clients at the same instant on a fresh server can fail
        ings[1].start()
        t0 = time.time()
        try:
            assert wait_for(lambda: len(spool.segments()) >= 7, 25)
        finally:
            for ing in ings:
                ing.stop()
            for ing in ings:
                assert ing.join(8)
    check_segments(spool, DEV_A, seg_s)
    check_segments(spool, DEV_B, seg_s)
    for s in spool.segments():
        assert t0 - 3 < s.start < time.time()
    assert list(spool.tmp_dir.iterdir()) == []


def _packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as c:
        return [p for p in c.demux(video=0) if p.size]


def test_in_band_resolution_change_starts_new_segment(tmp_path: Path, clips: dict[str, Path]) -> None:
    """Parameter sets change inside one session (no reconnect): the segment is cut right there."""
    spool = Spool(tmp_path / "spool", 10**9)
    now = [1_700_000_000.0]  # packets "arrive" in real time, 0.1 s after capture
    seg = Segmenter(DEV_A, spool, segment_seconds=30, clock=lambda: now[0])
    with av.open(str(clips["plain"])) as src:
        stream = src.streams.video[0]
        a = _packets(clips["plain"])
        b = _packets(clips["big"])
        offset = max(int(p.pts) for p in a) + 3600
        for p in b:
            p.pts, p.dts = int(p.pts) + offset, int(p.dts) + offset
        for p in [*a, *b]:
            now[0] = 1_700_000_000.1 + int(p.dts) / 90000
            seg.feed(p, stream)
        seg.close()
    segs = spool.segments()
    assert len(segs) == 2
    assert decode_count(segs[0].path)[0] == len(a) and decode_count(segs[1].path)[0] == len(b)
    assert segs[0].duration == pytest.approx(len(a) / 25, abs=0.05)
    assert segs[1].start - segs[0].start == pytest.approx(segs[0].duration, abs=0.05)
    assert segs[0].start == pytest.approx(1_700_000_000.1 + int(a[0].pts) / 90000, abs=0.05)
    assert parameter_sets(bytes(a[0]), "h264") != parameter_sets(bytes(b[0]), "h264")


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edge_agent.ingest import CameraIngest
    from vms.media.segmenter import Segmenter
    from edge_agent.spool import Spool
    spool = Spool(Path(sys.argv[2]), 10**9)
    CameraIngest(sys.argv[3], sys.argv[1], Segmenter(sys.argv[3], spool, 1.0)).start()
    time.sleep(60)
""")


def test_sigkill_mid_segment_leaves_no_half_segment(tmp_path: Path, clips: dict[str, Path]) -> None:
    root = tmp_path / "spool"
    with RtspServer({"/cam": clips["plain"]}) as srv:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, srv.url("/cam"), str(root), DEV_A], cwd=ROOT)
        try:
            def mid_segment() -> bool:
                parts = list((root / ".tmp").glob("*.part")) if (root / ".tmp").exists() else []
                done = list(root.glob("*.ts"))
                return len(done) >= 2 and bool(parts)
            assert wait_for(mid_segment, 20, step=0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
    assert list((root / ".tmp").glob("*.part"))  # the crash left a temp file behind
    spool = Spool(root, 10**9)  # restart
    assert spool.cleaned_tmp >= 1 and list(spool.tmp_dir.iterdir()) == []
    segs = spool.segments()
    assert len(segs) >= 2
    for s in segs:  # everything in the queue is complete and matches its checksum
        assert hashlib.sha256(s.path.read_bytes()).hexdigest() == s.sha256
        frames, packets, _ = decode_count(s.path)
        assert frames == packets >= 25


def test_full_disk_is_counted_and_ingest_keeps_going(small_disk: Any, clips: dict[str, Path]) -> None:
    mnt = small_disk("256k")
    spool = Spool(mnt / "spool", 10**9)
    seg = Segmenter(DEV_A, spool, 1.0)
    with RtspServer({"/cam": clips["plain"]}) as srv:
        ing = CameraIngest(DEV_A, srv.url("/cam"), seg)
        ing.start()
        try:
            assert wait_for(lambda: seg.write_errors >= 1, 25)
            assert ing.running and ing.snapshot().connected
            assert spool.write_errors >= 1
            for s in spool.segments():  # free the disk: ingest resumes writing
                spool.ack(s)
            n = seg.segments_written
            assert wait_for(lambda: seg.segments_written > n, 10)
        finally:
            ing.stop()
            assert ing.join(8)
    for s in spool.segments():
        assert hashlib.sha256(s.path.read_bytes()).hexdigest() == s.sha256


def _feed_file(seg: Segmenter, path: Path, skip_first_keyframe: bool = False) -> int:
    n = 0
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        for p in c.demux(vs):
            if not p.size:
                continue
            if skip_first_keyframe and n == 0 and p.is_keyframe:
                skip_first_keyframe = False
                continue
            seg.feed(p, vs)
            n += 1
    return n


def test_crash_leftover_is_salvaged_at_start_up(tmp_path: Path, clips: dict[str, Path]) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    seg = Segmenter(DEV_A, spool, 30.0, clock=lambda: 1_700_000_000.0)
    _feed_file(seg, clips["plain"])  # 4 s, never cut: the segment is still being written
    part = next(spool.tmp_dir.glob("*.part"))
    seg._out.close()  # what reached the disk before the "crash"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) * 6 // 10])  # the crash cut the file
    (spool.tmp_dir / f"{DEV_B}.5.6.part").write_bytes(b"\x47" + os.urandom(1000))  # nothing decodable
    restarted = Spool(tmp_path / "spool", 10**9)
    assert (restarted.salvaged_tmp, restarted.dropped_tmp, restarted.cleaned_tmp) == (1, 1, 2)
    assert list(restarted.tmp_dir.iterdir()) == []
    (s,) = restarted.segments()
    assert s.device_id == DEV_A and hashlib.sha256(s.path.read_bytes()).hexdigest() == s.sha256
    frames, packets, keys = decode_count(s.path)
    assert frames == packets and 25 <= packets < 100 and keys >= 1
    assert s.duration == pytest.approx(packets / 25, abs=0.05)
    with av.open(str(clips["plain"])) as c:
        first_pts = next(p.pts for p in c.demux(video=0) if p.size)
    assert s.start == pytest.approx(1_700_000_000.0 + first_pts / 90000, abs=0.01)


def test_segment_is_cut_when_keyframes_stop(tmp_path: Path, clips: dict[str, Path]) -> None:
    from tests.rtsp_fixture import make_clip

    one_key = make_clip(tmp_path / "onekey.ts", seconds=8.0, gop=1000)
    spool = Spool(tmp_path / "spool", 10**9)
    seg = Segmenter(DEV_A, spool, 1.0)
    n = _feed_file(seg, one_key)
    seg.close()
    segs = spool.segments()
    assert seg.forced_cuts == 2 and len(segs) == 3
    assert seg.fps == pytest.approx(25.0, rel=0.02)  # measured at the forced cuts: no keyframes to wait for
    assert [round(s.duration) for s in segs] == [3, 3, 2]
    assert sum(decode_count_packets(s.path) for s in segs) == n  # nothing lost at the cuts
    assert decode_count(segs[0].path)[0] == decode_count(segs[0].path)[1]

    # A camera whose keyframe was missed: recording starts without one after 3 segment lengths.
    spool2 = Spool(tmp_path / "spool2", 10**9)
    seg2 = Segmenter(DEV_A, spool2, 1.0)
    n2 = _feed_file(seg2, one_key, skip_first_keyframe=True)
    seg2.close()
    assert seg2.forced_cuts >= 1 and spool2.segments()
    kept = sum(decode_count_packets(s.path) for s in spool2.segments())
    assert kept == n2 - seg2.dropped_packets and seg2.dropped_packets <= 3 * 25 + 1


def decode_count_packets(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(video=0) if p.size)


def test_stream_figures_are_measured_while_cutting(tmp_path: Path, clips: dict[str, Path]) -> None:
    """fps, bit rate and keyframe interval come from the segmenter, on the camera's clock."""
    spool = Spool(tmp_path / "spool", 10**9)
    seg = Segmenter(DEV_A, spool, 1.0, clock=lambda: 1_700_000_000.0)  # arrival time plays no part
    assert (seg.fps, seg.bitrate_bps, seg.keyframe_interval_s) == (0.0, 0.0, None)
    packets = _packets(clips["plain"])
    n = _feed_file(seg, clips["plain"])
    assert n == len(packets) == 100
    assert seg.keyframe_interval_s == pytest.approx(1.0)
    assert seg.fps == pytest.approx(25.0, rel=0.02)
    # Windows run from keyframe to the first keyframe at least 2 s later: here packets 0..49.
    window = sum(p.size for p in packets[:50]) * 8 / 2.0
    assert seg.bitrate_bps == pytest.approx(window, rel=0.02)


def test_bad_timestamps_inside_a_segment_are_repaired_or_dropped(tmp_path: Path, clips: dict[str, Path]) -> None:
    """Repeated, missing and impossible DTS mid-segment: the segment still has strictly rising DTS."""
    spool = Spool(tmp_path / "spool", 10**9)
    seg = Segmenter(DEV_A, spool, 30.0, clock=lambda: 1_700_000_000.0)
    with av.open(str(clips["plain"])) as src:
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.size]
        packets[10].dts = packets[9].dts  # repeated: nudged forward
        packets[20].dts = None  # missing: filled in
        packets[30].dts = int(packets[30].pts) + 1  # after its PTS: dropped
        packets[40].dts = int(packets[38].dts)  # backwards by a frame: nudged forward
        for p in packets:
            seg.feed(p, stream)
        seg.close()
    assert seg.dropped_packets == 1
    (s,) = spool.segments()
    out = _packets(s.path)
    assert len(out) == len(packets) - 1
    dts = [int(p.dts) for p in out]
    assert all(b > a for a, b in itertools.pairwise(dts))
    assert all(int(p.dts) <= int(p.pts) for p in out)
    frames, n, _ = decode_count(s.path)
    assert frames == n == len(packets) - 1
