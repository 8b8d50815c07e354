"""Clips are built in worker processes at a lower CPU priority, not in the hub's threads (issue 16).

Demuxing and muxing hold the interpreter lock for every packet: built in the hub's own threads, 20
clip downloads delayed its heartbeats and uploads by hundreds of milliseconds. A worker process
builds the same bytes, tells its progress through a pipe, stops when its build is cancelled, and
ends with the hub; a worker that dies fails its build and is replaced.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, wait_until
from vms.archive.clip import (
    WORKER_NICE,
    ClipCancelled,
    ClipFailed,
    ClipPlan,
    ClipWorkers,
    Piece,
    build_clip,
)

SEG_S = 2.0
T0 = 1_790_000_000.0
CAM = "32058501001320000001"


def plan_of(root: Path, segments: list[bytes], minutes: float) -> ClipPlan:
    """``minutes`` of CAM in 2 s segments (``segments`` over and over) under ``root``, and its plan."""
    pieces = []
    for k in range(int(minutes * 60 / SEG_S)):
        data = segments[k % len(segments)]
        rel = f"{CAM}/{k // 1000}/{k}.ts"
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        start = T0 + k * SEG_S
        pieces.append(Piece(k + 1, rel, start, start + SEG_S, len(data), hashlib.sha256(data).hexdigest()))
    return ClipPlan(CAM, T0, T0 + minutes * 60, pieces)


def worker_pids(parent: int) -> list[int]:
    """Living clip worker processes whose parent is ``parent``."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and b"worker_main" in cmd:
            out.append(int(p.name))
    return out


def lowered(parent: int) -> int:
    """The niceness of a worker of ``parent``: ``WORKER_NICE`` more than its parent's, at most 19."""
    return min(19, os.getpriority(os.PRIO_PROCESS, parent) + WORKER_NICE)


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.fixture
def workers() -> Iterator[ClipWorkers]:
    w = ClipWorkers(2)
    yield w
    w.close()


def test_a_worker_builds_the_very_clip_the_hub_built(
    tmp_path: Path, black_segments: list[bytes], workers: ClipWorkers
) -> None:
    """Same bytes, same manifest: only where the work runs changed."""
    root = tmp_path / "recordings"
    plan = plan_of(root, black_segments, 2)
    plan.start += 3.0  # inside a segment: the clip starts at the keyframe before
    here = build_clip(plan, root, tmp_path / "here.mp4")
    seen: list[tuple[int, float]] = []
    there = workers.build(plan, root, tmp_path / "there.mp4", lambda n, f: seen.append((n, f)))
    assert (tmp_path / "there.mp4").read_bytes() == (tmp_path / "here.mp4").read_bytes()
    assert there.manifest() == here.manifest() and there.sha256 == here.sha256
    assert seen and seen[-1] == (there.bytes, 1.0)
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert len(worker_pids(os.getpid())) == 1  # built in a child process


def test_the_worker_runs_at_a_lower_priority_in_a_session_of_its_own(
    tmp_path: Path, black_segments: list[bytes], workers: ClipWorkers
) -> None:
    root = tmp_path / "recordings"
    workers.build(plan_of(root, black_segments, 0.5), root, tmp_path / "a.mp4")
    (pid,) = worker_pids(os.getpid())
    assert os.getpriority(os.PRIO_PROCESS, pid) == lowered(os.getpid())
    assert os.getsid(pid) != os.getsid(0)
    group = Path(f"/proc/{pid}/autogroup")
    if group.exists():  # where CPU shares go by session, the session's share is lowered too
        assert group.read_text().split()[-1] == str(WORKER_NICE)
    # Kept for the next clip: no process start per clip.
    workers.build(plan_of(root, black_segments, 0.5), root, tmp_path / "b.mp4")
    assert worker_pids(os.getpid()) == [pid]


def test_a_cancelled_build_stops_and_its_worker_builds_the_next_clip(
    tmp_path: Path, black_segments: list[bytes], workers: ClipWorkers
) -> None:
    root = tmp_path / "recordings"
    plan = plan_of(root, black_segments, 60)
    out = tmp_path / "gone.mp4"
    progressed = threading.Event()
    with pytest.raises(ClipCancelled, match=r"cancelled after \d+ bytes: the client went away"):
        workers.build(plan, root, out, lambda n, f: progressed.set(),
                      lambda: "the client went away" if progressed.is_set() else None)
    assert not out.exists()  # removed by the worker as it stopped
    (pid,) = worker_pids(os.getpid())
    result = workers.build(plan_of(root, black_segments, 0.5), root, tmp_path / "next.mp4")
    assert result.frames > 0 and worker_pids(os.getpid()) == [pid]


def test_a_worker_that_dies_fails_its_build_and_is_replaced(
    tmp_path: Path, black_segments: list[bytes], workers: ClipWorkers
) -> None:
    root = tmp_path / "recordings"
    killed: list[int] = []

    def kill_it(n: int, f: float) -> None:
        if not killed:
            (pid,) = worker_pids(os.getpid())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with pytest.raises(ClipFailed, match=r"its worker process ended \(exit code -9\)"):
        workers.build(plan_of(root, black_segments, 60), root, tmp_path / "dead.mp4", kill_it)
    result = workers.build(plan_of(root, black_segments, 0.5), root, tmp_path / "next.mp4")
    (new,) = worker_pids(os.getpid())
    assert result.frames > 0 and new != killed[0]


def test_closing_stops_the_builds_and_refuses_new_ones(tmp_path: Path, black_segments: list[bytes]) -> None:
    root = tmp_path / "recordings"
    workers = ClipWorkers(1)
    errors: list[BaseException] = []
    started = threading.Event()

    def build() -> None:
        try:
            workers.build(plan_of(root, black_segments, 60), root, tmp_path / "x.mp4", lambda n, f: started.set())
        except BaseException as exc:
            errors.append(exc)

    plan_of(root, black_segments, 60)  # the files, before the clock starts
    th = threading.Thread(target=build)
    th.start()
    assert started.wait(30)
    workers.close()
    th.join(30)
    assert len(errors) == 1 and isinstance(errors[0], ClipFailed), errors
    assert "the hub stopped during the build" in str(errors[0])
    assert worker_pids(os.getpid()) == []
    with pytest.raises(ClipFailed, match="the hub is stopping"):
        workers.build(plan_of(root, black_segments, 0.5), root, tmp_path / "y.mp4")


def test_the_hub_builds_clips_in_a_worker_that_ends_with_it(make_hub_process: Any, black_segments: list[bytes]) -> None:
    """Before: clips were built in threads of the hub process. The worker must not outlive a hub killed
    with SIGKILL (its pipe closes), or every crash would leave processes behind."""
    hp: HubProcess = make_hub_process(
        devices=[{"id": CAM, "name": "gate"}], archive={"min_free_bytes": 0},
        retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0})
    police = hp.token("police", name="li")
    agent = hp.token("agent", CAM[:14], name="agent")
    hp.start()
    t0 = float(int(time.time()) - 600)
    for k, seg in enumerate(black_segments[:3]):
        r = httpx.put(f"{hp.url}/api/v1/agents/segments/{CAM}", content=seg, timeout=30,
                      params={"start": t0 + SEG_S * k, "duration": SEG_S},
                      headers={"Authorization": f"Bearer {agent}", "X-VMS-SHA256": hashlib.sha256(seg).hexdigest()})
        assert r.status_code == 201, r.text
    assert hp.proc is not None
    assert worker_pids(hp.proc.pid) == []  # started when first needed
    r = httpx.get(f"{hp.url}/api/v1/devices/{CAM}/clip.mp4", headers={"Authorization": f"Bearer {police}"},
                  params={"start": str(t0), "end": str(t0 + 6), "case": "2026-0300"}, timeout=60)
    assert r.status_code == 200 and r.content[4:8] == b"ftyp", r.text
    (pid,) = worker_pids(hp.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, pid) == lowered(hp.proc.pid)
    hp.kill()
    wait_until(lambda: not alive(pid), 10, "the clip worker to end with the hub it served")
