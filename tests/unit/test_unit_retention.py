"""vms/archive/retention.py has no pure planning function: every decision is a query. So these tests
drive ``Retention`` alone (no hub) on a real temporary SQLite store, migrated by vms.db, and real files."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vms.archive.retention import Retention
from vms.config import RetentionConfig, RetentionPolicy
from vms.db import open_store
from vms.db.models import Device, LegalHold, Segment

T0 = 1_790_000_000.0
DAY = 86400.0
CAM = "32058501001320000001"
CAM2 = "32058501001320000002"
CAM3 = "32058502001320000001"


@dataclass
class Archive:
    root: Path
    sessions: sessionmaker[Session]
    capacity: int = 10**9

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def free_bytes(self) -> int:
        """Free space of a disk of ``capacity`` bytes holding the files actually under root."""
        return self.capacity - self.used_bytes()

    def put(self, device: str, start: float, size: int = 100, dur: float = 60.0) -> None:
        rel = f"{device}/{int(start // DAY)}/{start:.0f}.ts"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * size)
        with self.sessions() as s:
            if s.get(Device, device) is None:
                s.add(Device(id=device, created_at=T0 - 400 * DAY))
            s.add(
                Segment(
                    device_id=device, start_at=start, end_at=start + dur, bytes=size, path=rel,
                    sha256="0" * 64, received_at=start + dur, deleting=False,
                )
            )
            s.commit()

    def hold(self, device: str, start: float, end: float, released: bool = False) -> None:
        with self.sessions() as s:
            s.add(
                LegalHold(
                    device_id=device, start_at=start, end_at=end, case_number="2026-0042", reason="test",
                    created_by="officer-li", created_at=T0, released_at=T0 if released else None,
                )
            )
            s.commit()

    def starts(self, device: str) -> list[float]:
        with self.sessions() as s:
            q = select(Segment.start_at).where(Segment.device_id == device).order_by(Segment.start_at)
            return [t - T0 for t in s.scalars(q)]

    def files(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}

    def indexed(self) -> set[str]:
        with self.sessions() as s:
            return set(s.scalars(select(Segment.path)))

    def retention(
        self,
        cfg: RetentionConfig,
        policies: dict[str, tuple[RetentionPolicy, str]] | None = None,
        centers: dict[str, list[str]] | None = None,
    ) -> Retention:
        pols = policies or {}
        members = centers or {}
        policy_of: Callable[[str], tuple[RetentionPolicy, str]] = lambda d: pols.get(d, (cfg.default, "default"))  # noqa: E731
        return Retention(cfg, self.sessions, self.root, policy_of, lambda c: members.get(c, []), self.free_bytes)


def make_archive(tmp: Path) -> Archive:
    _engine, sessions = open_store(f"sqlite:///{tmp / 'vms.db'}")
    root = tmp / "recordings"
    root.mkdir()
    return Archive(root, sessions)


def config(**kw: Any) -> RetentionConfig:
    """No emergency cleanup unless asked: the disk of these tests is never low."""
    return RetentionConfig.model_validate({"emergency_free_bytes": 0, "emergency_target_free_bytes": 0, **kw})


def test_age_deletes_what_ended_before_the_cutoff_keeps_holds_and_empties_day_dirs(tmp_path: Path) -> None:
    a = make_archive(tmp_path)
    for k in range(10):
        a.put(CAM, T0 + k * DAY)
    a.hold(CAM, T0 + 2 * DAY + 30, T0 + 2 * DAY + 40)  # overlaps day 2's segment
    a.hold(CAM, T0 + 3 * DAY, T0 + 3 * DAY + 60, released=True)  # released: no longer protects
    cfg = config(batch_size=3)
    now = T0 + 35 * DAY + 60  # cutoff T0 + 5 d + 60 s: day 5's segment ends exactly at it
    rep = a.retention(cfg).run(now)
    assert a.starts(CAM) == [2 * DAY, 6 * DAY, 7 * DAY, 8 * DAY, 9 * DAY]
    assert rep.by_reason == {"age": 5} and rep.deleted_segments == 5 and rep.deleted_bytes == 500
    assert rep.held_skipped == 1 and not rep.emergency
    assert a.files() == a.indexed()
    assert sorted(p.name for p in (a.root / CAM).iterdir()) == sorted(str(int(T0 // DAY) + k) for k in (2, 6, 7, 8, 9))


def test_a_device_quota_removes_the_oldest_until_it_fits(tmp_path: Path) -> None:
    a = make_archive(tmp_path)
    for k in range(10):
        a.put(CAM, T0 + 60 * k, size=100)
        a.put(CAM2, T0 + 60 * k, size=100)
    a.hold(CAM, T0 + 60, T0 + 61)  # the second-oldest is held
    cfg = config(batch_size=4)
    capped = (RetentionPolicy(quota_bytes=450), f"device:{CAM}")
    rep = a.retention(cfg, {CAM: capped}).run(T0 + DAY)
    assert a.starts(CAM) == [60, 420, 480, 540]  # 400 bytes: the held one counts, it cannot go
    assert len(a.starts(CAM2)) == 10
    assert rep.by_reason == {"device_quota": 6} and rep.held_skipped == 1


def test_a_center_quota_caps_the_center_total_not_each_device(tmp_path: Path) -> None:
    a = make_archive(tmp_path)
    for k in range(6):
        a.put(CAM, T0 + 60 * k, size=100)
        a.put(CAM2, T0 + 60 * k + 30, size=100)
        a.put(CAM3, T0 + 60 * k, size=100)  # another center: untouched
    town = RetentionPolicy(quota_bytes=700)
    cfg = config(centers={"chengxiang": town}, batch_size=5)
    pols = {CAM: (town, "center:chengxiang"), CAM2: (town, "center:chengxiang")}
    rep = a.retention(cfg, pols, {"chengxiang": [CAM, CAM2]}).run(T0 + DAY)
    assert rep.by_reason == {"center_quota": 5}
    # the five oldest of the two devices together: 0, 30, 60, 90, 120
    assert a.starts(CAM) == [180, 240, 300] and a.starts(CAM2) == [150, 210, 270, 330]
    assert len(a.starts(CAM3)) == 6


def test_emergency_cleanup_frees_the_target_and_no_more(tmp_path: Path) -> None:
    a = make_archive(tmp_path)
    for k in range(8):
        a.put(CAM, T0 + 60 * k, size=1000)
        a.put(CAM2, T0 + 60 * k + 1, size=1000)
    a.hold(CAM2, T0, T0 + 2)  # CAM2's oldest is held
    a.capacity = 16_500  # 500 bytes free
    cfg = RetentionConfig(emergency_free_bytes=1000, emergency_target_free_bytes=3000, batch_size=4)
    rep = a.retention(cfg).run(T0 + DAY)
    assert rep.emergency and rep.free_bytes_before == 500 and rep.free_bytes_after == 3500
    assert rep.by_reason == {"emergency": 3}
    assert a.starts(CAM) == [120, 180, 240, 300, 360, 420] and a.starts(CAM2)[0] == 1  # held one kept
    assert a.files() == a.indexed()


def test_repair_finishes_marked_deletions_and_makes_index_and_disk_agree(tmp_path: Path) -> None:
    a = make_archive(tmp_path)
    for k in range(4):
        a.put(CAM, T0 + 60 * k)
        a.put(CAM2, T0 + 60 * k)
        a.put(CAM3, T0 + 60 * k)
    with a.sessions() as s:  # a pass cut off after marking two rows
        s.execute(update(Segment).where(Segment.device_id == CAM, Segment.start_at < T0 + 100).values(deleting=True))
        s.commit()
    (a.root / CAM2 / f"{int(T0 // DAY)}" / f"{T0 + 60:.0f}.ts").unlink()  # a row whose file is gone
    stray = a.root / CAM2 / "stray.ts"  # a file no row names (cut off between rename and commit)
    stray.write_bytes(b"x")
    for p in sorted((a.root / CAM3).rglob("*"), reverse=True):  # a whole device directory gone
        if p.is_file():
            p.unlink()
        else:
            p.rmdir()
    (a.root / CAM3).rmdir()
    rep = a.retention(config(batch_size=1)).repair()
    assert (rep.finished_deletions, rep.rows_without_file, rep.files_without_row) == (2, 1 + 4, 1)
    assert a.starts(CAM) == [120, 180] and a.starts(CAM2) == [0, 120, 180] and a.starts(CAM3) == []
    # The stray file is not video it can index: moved aside with its reason, never deleted.
    assert rep.quarantined == 1 and (a.root / ".quarantine" / CAM2 / "stray.ts").read_bytes() == b"x"
    assert {f for f in a.files() if not f.startswith(".quarantine/")} == a.indexed()
    again = a.retention(config()).repair()
    assert (again.finished_deletions, again.rows_without_file, again.files_without_row) == (0, 0, 0)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 200), st.integers(1, 9)), min_size=1, max_size=25),
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 200), st.integers(0, 30)), max_size=3),
    st.integers(0, 3000),
    st.integers(1, 5),
)
def test_a_quota_pass_keeps_holds_and_removes_only_the_oldest_unheld(
    segs: list[tuple[int, int, int]], holds: list[tuple[int, int, int]], quota: int, batch: int
) -> None:
    devices = [CAM, CAM2]
    with tempfile.TemporaryDirectory() as tmp:
        a = make_archive(Path(tmp))
        seen: set[tuple[int, int]] = set()
        sizes: dict[tuple[str, float], int] = {}
        for d, minute, hundreds in segs:
            if (d, minute) in seen:
                continue
            seen.add((d, minute))
            a.put(devices[d], T0 + 60 * minute, size=100 * hundreds)
            sizes[(devices[d], 60.0 * minute)] = 100 * hundreds
        for d, minute, length in holds:
            a.hold(devices[d], T0 + 60 * minute, T0 + 60 * minute + length)
        cfg = config(default=RetentionPolicy(quota_bytes=quota), batch_size=batch)
        rep = a.retention(cfg).run(T0 + DAY)
        for dev in devices:
            kept = set(a.starts(dev))
            gone = {t for (d, t) in sizes if d == dev} - kept

            def held(t: float, dev: str = dev) -> bool:
                return any(
                    devices[d] == dev and 60 * m < t + 60 and t < 60 * m + n for d, m, n in holds
                )

            assert not any(held(t) for t in gone)  # held footage is never deleted
            used = sum(sizes[(dev, t)] for t in kept)
            unheld_kept = sorted(t for t in kept if not held(t))
            if gone:
                assert max(gone) < min(unheld_kept, default=float("inf"))  # oldest first
                # nothing deleted that was not needed: putting back the newest deleted one breaks the quota
                assert used + sizes[(dev, max(gone))] > quota
            assert used <= quota or not unheld_kept  # under quota, or only held footage is left
        assert a.files() == a.indexed()
        assert rep.deleted_segments == len(sizes) - sum(len(a.starts(d)) for d in devices)
