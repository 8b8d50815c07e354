"""The analysis at the hub: backpressure that never delays the store, and defects that become
alerts with a snapshot, over a real hub process and real HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import hub_config, wait_until
from vms.analysis.config import AnalysisConfig
from vms.analysis.pool import AnalysisPool
from vms.analysis.sampler import Report, Work
from vms.auth import Principal, Role
from vms.config import HubConfig
from vms.hub import Hub

DEV = "32058501001320000001"
PREFIX = "32058501"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", analysis={"workers": 1, "queue_per_worker": 1}))
    h = Hub(cfg)
    h.registry.add_device(DEV)
    h.start()
    yield h
    h.stop()


def test_a_saturated_analysis_drops_and_counts_but_never_delays_the_store(
    hub: Hub, black_segments: list[bytes]
) -> None:
    who = Principal("t", "agent-1", Role.agent, (PREFIX,))
    pool = hub.quality.pool
    assert pool is not None
    base = time.time() - 60
    took = []
    for k in range(30):
        data = black_segments[k % len(black_segments)]
        t0 = time.perf_counter()
        out = hub.ingest.store(who.name, DEV, base + 2 * k, 2.0, data, hashlib.sha256(data).hexdigest(), None)
        took.append(time.perf_counter() - t0)
        assert out.result.name == "STORED"
    # The worker is still starting (a spawned process importing OpenCV and PyAV) and its queue holds
    # one segment: the rest are dropped at once instead of waiting for it.
    assert pool.stats.submitted == 30 and pool.stats.dropped >= 20
    assert max(took) < 0.5, f"store_segment waited for the analysis: {max(took):.3f} s"
    wait_until(lambda: pool.stats.analysed == pool.stats.submitted - pool.stats.dropped, 60, "queued segments")


def test_a_dead_worker_is_replaced(hub: Hub, black_segments: list[bytes]) -> None:
    pool = hub.quality.pool
    assert pool is not None
    seg = Path(hub.cfg.storage.data_dir) / "one.ts"
    seg.write_bytes(black_segments[0])
    assert pool.submit(Work(DEV, str(seg), time.time(), time.time() + 2))
    wait_until(lambda: pool.stats.analysed == 1, 60, "first analysis")
    proc = pool._procs[0]
    assert proc is not None and proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    wait_until(lambda: pool.stats.restarts == 1, 10, "worker restart")
    assert pool.submit(Work(DEV, str(seg), time.time() + 2, time.time() + 4))
    wait_until(lambda: pool.stats.analysed == 2, 60, "analysis after the restart")


def test_black_screen_becomes_an_alert_with_snapshot_and_clears(
    make_hub_process: Any, black_segments: list[bytes]
) -> None:
    hp = make_hub_process(analysis={"workers": 1}, alerts={"resolve_hold_s": 0})
    agent = {"Authorization": f"Bearer {hp.token('agent', PREFIX, name='agent-1')}"}
    duty = {"Authorization": f"Bearer {hp.token('duty')}"}
    hp.start()
    base = time.time() - 18
    with httpx.Client(base_url=hp.url, timeout=10) as c:

        def upload(k: int) -> None:
            data = black_segments[k]
            r = c.put(
                f"/api/v1/agents/segments/{DEV}",
                params={"start": base + 2 * k, "duration": 2.0},
                content=data,
                headers={**agent, "X-VMS-SHA256": hashlib.sha256(data).hexdigest()},
            )
            assert r.status_code == 201, r.text

        def quality() -> dict[str, Any]:
            r = c.get(f"/api/v1/devices/{DEV}/quality", headers=duty)
            assert r.status_code == 200, r.text
            return r.json()

        def alerts(state: str) -> list[dict[str, Any]]:
            r = c.get("/api/v1/alerts", params={"state": state}, headers=duty)
            return [a for a in r.json()["alerts"] if a["kind"] == "device_degraded"]

        for k in range(9):  # 0-18 s: clean until 8 s, then black
            upload(k)
        wait_until(lambda: quality()["defects"], 60, "black_screen raised")
        q = quality()
        assert [d["check"] for d in q["defects"]] == ["black_screen"]
        snap = c.get(q["defects"][0]["snapshot_url"].removeprefix(hp.url), headers=duty)
        assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg"
        assert snap.content[:2] == b"\xff\xd8" and len(snap.content) > 1000
        assert c.get(q["defects"][0]["snapshot_url"].removeprefix(hp.url)).status_code == 401
        alert = wait_until(lambda: alerts("open"), 20, "device_degraded alert")[0]
        assert "black_screen" in alert["title"]
        assert alert["detail"]["snapshot_url"] == q["defects"][0]["snapshot_url"]
        metrics = c.get("/metrics", headers=duty).text
        assert f'vms_device_quality_defect{{check="black_screen",device_id="{DEV}"}} 1.0' in metrics
        assert 'vms_quality_raised_total{check="black_screen"} 1.0' in metrics
        with httpx.Client(base_url=hp.url) as c2:
            r = c2.get(f"/api/v1/devices/{DEV}/quality", headers=duty, params={"period": "forever"})
            assert r.status_code == 422
            assert c2.get(f"/api/v1/devices/{DEV[:-1]}9/quality", headers=duty).status_code == 404

        for k in range(9, 13):  # picture back
            upload(k)
        wait_until(lambda: not quality()["defects"], 60, "black_screen cleared")
        events = quality()["events"]
        assert [(e["check"], e["state"]) for e in events] == [("black_screen", "cleared"), ("black_screen", "raised")]
        wait_until(lambda: alerts("resolved"), 20, "alert resolved")


def test_a_raised_defect_survives_a_hub_restart_without_flapping(
    make_hub_process: Any, black_segments: list[bytes]
) -> None:
    """Black screen raised, hub restarted: the camera stays degraded and its alert open (no resolve
    and re-open, no notifications for nothing), a further black segment raises nothing new, and the
    picture coming back clears it once."""
    hp = make_hub_process(analysis={"workers": 1}, alerts={"resolve_hold_s": 0})
    agent = {"Authorization": f"Bearer {hp.token('agent', PREFIX, name='agent-1')}"}
    duty = {"Authorization": f"Bearer {hp.token('duty')}"}
    hp.start()
    base = time.time() - 14  # segment 6 ends now: the camera is online, so degraded
    with httpx.Client(base_url=hp.url, timeout=10) as c:

        def upload(k: int) -> None:
            data = black_segments[k]
            r = c.put(f"/api/v1/agents/segments/{DEV}", params={"start": base + 2 * k, "duration": 2.0},
                      content=data, headers={**agent, "X-VMS-SHA256": hashlib.sha256(data).hexdigest()})
            assert r.status_code == 201, r.text

        def events() -> list[tuple[str, str]]:
            r = c.get(f"/api/v1/devices/{DEV}/quality", headers=duty)
            return [(e["check"], e["state"]) for e in r.json()["events"]]

        def degraded_alerts() -> list[tuple[int, str]]:
            r = c.get("/api/v1/alerts", params={"kind": "device_degraded"}, headers=duty)
            return [(a["id"], a["state"]) for a in r.json()["alerts"]]

        def analysed() -> float:
            text = c.get("/metrics", headers=duty).text
            return next(float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("vms_analysis_segments_analysed_total"))

        for k in range(7):  # clean until 8 s, then black
            upload(k)
        wait_until(lambda: events() == [("black_screen", "raised")], 60, "black_screen raised")
        (alert,) = wait_until(degraded_alerts, 20, "device_degraded alert")
        assert alert[1] == "open"
        hp.stop()
        hp.start()
        defects = c.get(f"/api/v1/devices/{DEV}/quality", headers=duty).json()["defects"]
        assert [d["check"] for d in defects] == ["black_screen"]  # back from the store, before any segment
        time.sleep(3)  # ticks with resolve_hold_s 0: a lost defect would resolve the alert now
        assert degraded_alerts() == [alert]
        upload(7)  # still black, analysed by a new worker
        wait_until(lambda: analysed() >= 1, 60, "the segment analysed after the restart")
        assert events() == [("black_screen", "raised")] and degraded_alerts() == [alert]
        for k in range(9, 13):  # picture back
            upload(k)
        wait_until(lambda: ("black_screen", "cleared") in events(), 60, "black_screen cleared")
        assert events() == [("black_screen", "cleared"), ("black_screen", "raised")]
        wait_until(lambda: degraded_alerts() == [(alert[0], "resolved")], 20, "the same alert resolved")


def test_backlog_never_takes_more_than_half_of_a_workers_queue(tmp_path: Path, black_segments: list[bytes]) -> None:
    """An hour of one camera's backlog (``Work.backlog``) must not push out live segments: it is queued
    only while its worker's queue is at most half full, and what is refused is counted."""
    paths = []
    for k, data in enumerate(black_segments[:4]):
        (p := tmp_path / f"{k}.ts").write_bytes(data)
        paths.append(str(p))
    reports: list[Report] = []
    pool = AnalysisPool(AnalysisConfig(workers=1, queue_per_worker=4), reports.append)
    pool.start()
    try:
        # The worker is still starting (a spawned process importing OpenCV and PyAV): nothing leaves the queue.
        assert pool.submit(Work(DEV, paths[0], 0.0, 2.0, backlog=True))  # an empty queue takes backlog
        assert pool.submit(Work(DEV, paths[1], 2.0, 4.0))
        assert not pool.submit(Work(DEV, paths[2], 4.0, 6.0, backlog=True))  # half full: refused
        assert pool.stats.backlog_dropped == 1 and pool.stats.dropped == 1
        assert pool.submit(Work(DEV, paths[3], 6.0, 8.0))  # live work still finds room
        wait_until(lambda: len(reports) == 3, 60, "the queued segments analysed")
        assert sorted(r.backlog for r in reports) == [False, False, True]
    finally:
        pool.stop()


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


#: A process owning an analysis pool of one worker: it has the worker analyse a segment, prints the
#: worker's PID and waits; ``{on_sigterm}`` is what it does on SIGTERM.
_OWNER = (
    "import signal, sys, time\n"
    "from vms.analysis.config import AnalysisConfig\n"
    "from vms.analysis.pool import AnalysisPool\n"
    "from vms.analysis.sampler import Work\n"
    "pool = AnalysisPool(AnalysisConfig(workers=1), lambda r: print('analysed', flush=True))\n"
    "pool.start()\n"
    "pool.submit(Work(sys.argv[2], sys.argv[1], 0.0, 2.0))\n"
    "{on_sigterm}"
    "print(pool._procs[0].pid, flush=True)\n"
    "time.sleep(600)\n"
)


@contextlib.contextmanager
def pool_owner(seg: Path, on_sigterm: str = "", **popen: Any) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """An owner process (see ``_OWNER``) once its worker has analysed ``seg``, and the worker's PID."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER.replace("{on_sigterm}", on_sigterm), str(seg), DEV],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1], **popen)
    worker = 0
    try:
        assert owner.stdout is not None
        worker = int(owner.stdout.readline())
        assert owner.stdout.readline().strip() == "analysed"  # the worker runs
        yield owner, worker
    finally:
        owner.kill()
        if worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)


def test_workers_end_with_a_hub_killed_by_sigkill(tmp_path: Path, black_segments: list[bytes]) -> None:
    """A hub or agent killed with SIGKILL cannot stop its analysis workers (before: each kill left one
    running for ever, holding its memory). A worker ends once the process that started it is gone."""
    seg = tmp_path / "seg.ts"
    seg.write_bytes(black_segments[0])
    with pool_owner(seg) as (owner, worker):
        assert _running(worker)
        owner.kill()
        owner.wait(10)
        wait_until(lambda: not _running(worker), 15, f"analysis worker {worker} to end after its hub was killed")


def test_a_sigterm_to_the_hubs_process_group_stops_its_workers_in_order(
    tmp_path: Path, black_segments: list[bytes]
) -> None:
    """A SIGTERM to the whole process group (Ctrl-C in a terminal, ``vms demo`` stopping, a supervisor)
    reaches the hub, not its analysis workers: before, they died with it and, while the hub was still
    stopping, were logged as crashed ("exited (code -15)") and started again."""
    seg = tmp_path / "seg.ts"
    seg.write_bytes(black_segments[0])
    on_sigterm = (
        "def stop(*_):\n"
        "    time.sleep(1.5)  # a hub's shutdown: its connections close before its services stop\n"
        "    first = pool._procs[0]\n"
        "    pool.stop()\n"
        "    print(pool.stats.restarts, first.exitcode, flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
    )
    with pool_owner(seg, on_sigterm, start_new_session=True) as (owner, worker):
        assert owner.stdout is not None
        os.killpg(owner.pid, signal.SIGTERM)
        restarts, exitcode = owner.stdout.readline().split()
        assert owner.wait(15) == 0
        assert (restarts, exitcode) == ("0", "0"), "the worker was killed with its hub and started again"
        assert not _running(worker)


def test_a_hub_ended_by_sigterm_reports_no_leaked_semaphores(make_hub_process: Any) -> None:
    """Uvicorn raises SIGTERM again once it has shut down, so a hub's interpreter never runs its exit
    handlers: the analysis pool's queues were never released, and every stop printed "There appear to
    be 9 leaked semaphore objects" (the semaphores stayed in /dev/shm when the tracker died too)."""
    hp = make_hub_process(analysis={"enabled": True, "workers": 2})
    hp.start()
    hp.stop()
    assert hp.log is not None
    log = hp.log.read_text()
    assert "Finished server process" in log
    assert "leaked semaphore" not in log, log[-1000:]
