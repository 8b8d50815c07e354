"""Spool: ordering (live first, backlog oldest-first), quota drops counted, restart rescan."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from edge_agent.spool import Segment, Spool

DEV_A = "32058501001320000001"
DEV_B = "32058501001320000002"


def put(spool: Spool, dev: str, start: float, size: int = 1000, live: bool = True) -> Segment:
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    tmp = spool.tmp_path(dev)
    tmp.write_bytes(data)
    final = spool.root / Segment.file_name(dev, start, 4.0, sha)
    os.replace(tmp, final)
    seg = Segment.from_path(final)
    assert seg is not None
    if live:
        spool.added(seg)
    return seg


def test_name_round_trip(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10**9)
    seg = put(sp, DEV_A, 1_700_000_000.123456)
    assert seg.start == 1_700_000_000.123456 and seg.duration == 4.0 and seg.size == 1000
    assert seg.device_id == DEV_A


def test_live_first_backlog_oldest_first(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10**9, live_window_s=5)
    t0 = 1_700_000_000.0
    for i in range(6):  # backlog: found on disk at start
        put(sp, DEV_A, t0 + 4 * i, live=False)
    sp = Spool(tmp_path, 10**9, live_window_s=5)  # restart rescans
    assert sp.stats().queued_segments == 6
    live = [put(sp, DEV_B, t0 + 1000), put(sp, DEV_A, t0 + 1001)]
    batch = sp.next_batch(4)
    assert batch[:2] == live
    assert [s.start for s in batch[2:]] == [t0, t0 + 4]
    # Many live segments still leave one slot to the backlog.
    more = [put(sp, DEV_B, t0 + 1004 + i) for i in range(5)]
    batch = sp.next_batch(4)
    assert len(batch) == 4 and batch[-1].start == t0 and all(s.start >= t0 + 1000 for s in batch[:3])
    # Excluded (in-flight) segments and blocked devices are skipped.
    batch = sp.next_batch(10, exclude={live[0].name}, skip_devices={DEV_A})
    assert live[0] not in batch and all(s.device_id == DEV_B for s in batch) and len(batch) == 5
    for s in [*live, *more]:
        sp.ack(s)
        assert not s.path.exists()
    assert sp.stats().queued_segments == 6


def test_live_becomes_backlog_after_window(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10**9, live_window_s=0.05)
    a = put(sp, DEV_A, 100.0)
    time.sleep(0.1)
    b = put(sp, DEV_A, 200.0)
    assert sp.next_batch(2) == [b, a]


def test_quota_drops_oldest_and_counts(tmp_path: Path, caplog: object) -> None:
    sp = Spool(tmp_path, quota_bytes=3500)
    segs = [put(sp, DEV_A, 1000.0 + 4 * i) for i in range(5)]
    st = sp.stats()
    assert st.dropped_segments == 2 and st.queued_segments == 3 and st.queued_bytes == 3000
    assert not segs[0].path.exists() and not segs[1].path.exists() and segs[4].path.exists()
    assert [s.start for s in sp.segments()] == [1008.0, 1012.0, 1016.0]
    # The drop count survives a restart.
    sp2 = Spool(tmp_path, quota_bytes=3500)
    assert sp2.stats().dropped_segments == 2 and sp2.stats().queued_segments == 3
    # A smaller quota at start-up drops at once.
    sp3 = Spool(tmp_path, quota_bytes=1500)
    assert sp3.stats().queued_segments == 1 and sp3.stats().dropped_segments == 4


def test_restart_cleans_temp_files_and_rejects_strangers(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10**9)
    put(sp, DEV_A, 1000.0)
    (sp.tmp_dir / f"{DEV_A}.1.2.part").write_bytes(b"\x47" * 188 * 3)  # a crash mid-write
    (tmp_path / "junk.ts").write_bytes(b"x")
    sp2 = Spool(tmp_path, 10**9)
    assert sp2.cleaned_tmp == 1 and list(sp2.tmp_dir.iterdir()) == []
    assert (sp2.rejected_dir / "junk.ts").exists()
    assert sp2.stats().queued_segments == 1


def test_reject_moves_aside(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10**9)
    s = put(sp, DEV_A, 1000.0)
    sp.reject(s, "test")
    assert (sp.rejected_dir / s.name).exists() and sp.stats().queued_segments == 0 and sp.rejected == 1


def test_rejected_segments_count_against_the_quota(tmp_path: Path) -> None:
    sp = Spool(tmp_path, quota_bytes=3000)
    bad = put(sp, DEV_A, 1000.0)
    sp.reject(bad, "test")
    put(sp, DEV_A, 1004.0)
    put(sp, DEV_B, 1004.0)
    assert sp.stats().queued_segments == 2 and sp.dropped_rejected == 0
    put(sp, DEV_A, 1008.0)  # 3000 queued + 1000 rejected: the rejected one goes first
    assert sp.dropped_rejected == 1 and sp.dropped == 0 and sp.stats().queued_segments == 3
    assert list(sp.rejected_dir.iterdir()) == []
    # Rejected files found at start-up count too.
    (sp.rejected_dir / "old.ts").write_bytes(b"x" * 500)
    sp2 = Spool(tmp_path, quota_bytes=3000)
    assert sp2.dropped_rejected == 1 and sp2.stats().queued_segments == 3


def test_sync_and_hash_matches_the_file(tmp_path: Path) -> None:
    from vms.kernel.fsutil import sync_and_hash

    for size in (0, 1, 300_000, 1_000_003):  # empty, tiny, and across the read buffer
        p = tmp_path / f"{size}.ts"
        data = os.urandom(size)
        p.write_bytes(data)
        assert sync_and_hash(p) == (hashlib.sha256(data).hexdigest(), size)
