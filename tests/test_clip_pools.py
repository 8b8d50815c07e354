"""Clip downloads cannot starve ingest, heartbeats or live view, and no route blocks the event loop
(issue 16, items 4 and 9).

A real hub process holds an hour of footage of one camera (2 s segments planted in its archive and
index while it is stopped: hard links of real H.264 segments). Officers then ask for many one-hour
clips at once, with ``Range`` (which waits for the whole build) and streamed; while those build, an
agent's segment uploads and heartbeats must still be answered fast. The caps on clips per user and
in total answer 429 saying which; a client that goes away stops its build; the export queue is
bounded. The event-loop cases run the hub in this process (uvicorn on loopback) so that a test can
hold a lock the way a long tick or a slow store write would.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, free_port, hub_config, vms_cli, wait_until, write_config
from vms.archive.store import relative_path
from vms.db import open_store
from vms.db.models import Segment

PREFIX = "32058501001320"
CAM = PREFIX + "000001"
PROBE_CAM = PREFIX + "000002"
HOUR = 3600.0
SEG_S = 2.0
#: Uploads and heartbeats under clip load must answer within this (before: 20 s to a minute; now well
#: under a second, but the machine running the tests may be loaded by others).
FAST_S = 3.0
#: A cheap request while another waits for a lock (before: nothing until the lock was released).
LOOP_FREE_S = 2.0


def plant_hour(data: Path, segments: list[bytes], t0: float) -> None:
    """An hour of CAM from ``t0`` in 2 s segments: files (hard links of ``segments``) and index rows."""
    rec = data / "recordings"
    src = data / "planted"
    src.mkdir(exist_ok=True)
    originals = []
    for i, seg in enumerate(segments):
        p = src / f"{i}.ts"
        p.write_bytes(seg)
        originals.append((p, len(seg), hashlib.sha256(seg).hexdigest()))
    engine, sessions = open_store(f"sqlite:///{data / 'vms.db'}")
    rows = []
    for k in range(int(HOUR / SEG_S)):
        p, size, sha = originals[k % len(originals)]
        start = t0 + k * SEG_S
        rel = relative_path(CAM, start, sha)
        (rec / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(p, rec / rel)
        rows.append(Segment(device_id=CAM, start_at=start, end_at=start + SEG_S, bytes=size, path=rel, sha256=sha,
                            received_at=start + SEG_S, agent_id="agent"))
    with sessions() as s:
        s.add_all(rows)
        s.commit()
    engine.dispose()


@pytest.fixture(scope="module")
def loaded_hub(
    tmp_path_factory: pytest.TempPathFactory, black_segments: list[bytes]
) -> Iterator[tuple[HubProcess, float]]:
    d = tmp_path_factory.mktemp("clip-pools")
    cfg = hub_config(
        d / "data",
        devices=[{"id": CAM, "name": "entrance"}, {"id": PROBE_CAM, "name": "probe"}],
        archive={"min_free_bytes": 0, "max_clips": 4, "max_clips_per_user": 2, "max_queued_exports": 1},
        retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0},
    )
    hp = HubProcess(write_config(d / "hub.yaml", cfg), free_port())
    for name in ("li", "wang", "zhao"):
        hp.token("police", name=name)
    hp.token("agent", PREFIX, name="agent")
    hp.start()  # creates the store and the devices
    hp.stop()
    t0 = float(int(time.time()) - 2 * 86400)
    plant_hour(d / "data", black_segments, t0)
    hp.start()
    yield hp, t0
    hp.stop()


def auth(hp: HubProcess, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {hp.tokens[who]}"}


def clip_params(t0: float, minutes: float = 60) -> dict[str, str]:
    return {"start": str(t0), "end": str(t0 + minutes * 60), "reason": "load", "case": "2026-0099"}


def clip_get(hp: HubProcess, who: str, t0: float, byte_range: str | None = None) -> httpx.Response:
    headers = auth(hp, who) | ({"Range": byte_range} if byte_range else {})
    return httpx.get(f"{hp.url}/api/v1/devices/{CAM}/clip.mp4", headers=headers, timeout=300, params=clip_params(t0))


def timed_upload(hp: HubProcess) -> tuple[float, int]:
    body = os.urandom(50_000)
    t = time.perf_counter()
    r = httpx.put(f"{hp.url}/api/v1/agents/segments/{PROBE_CAM}", content=body, timeout=120,
                  params={"start": f"{time.time() - 2:.6f}", "duration": "2"},
                  headers=auth(hp, "agent") | {"X-VMS-SHA256": hashlib.sha256(body).hexdigest(),
                                               "X-VMS-Sent-At": f"{time.time():.6f}"})
    return time.perf_counter() - t, r.status_code


def timed_heartbeat(hp: HubProcess) -> tuple[float, int]:
    t = time.perf_counter()
    r = httpx.post(f"{hp.url}/api/v1/agents/heartbeat", timeout=120, headers=auth(hp, "agent"),
                   json={"sent_at": time.time(), "cameras": [
                       {"device_id": PROBE_CAM, "connected": True, "last_packet_age_s": 0.1, "fps": 25}]})
    return time.perf_counter() - t, r.status_code


def job(hp: HubProcess, who: str, export_id: str) -> dict[str, object]:
    r = httpx.get(f"{hp.url}/api/v1/exports/{export_id}", headers=auth(hp, who), timeout=30)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_uploads_and_heartbeats_stay_fast_while_long_clips_build(loaded_hub: tuple[HubProcess, float]) -> None:
    """20 one-hour clips asked at once (before: all built at once, each waiting reader holding one of
    the event loop's few shared threads, and an upload waited 20 s and more)."""
    hp, t0 = loaded_hub
    quiet = [timed_upload(hp)[0] for _ in range(3)]
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def pull(who: str, byte_range: str | None) -> None:
        r = clip_get(hp, who, t0, byte_range)
        with lock:
            results.append(r)

    pulls = [threading.Thread(target=pull, args=(who, rng)) for who in ("li", "wang", "zhao")
             for rng in ("bytes=0-1023", None) for _ in range(3)]
    pulls += [threading.Thread(target=pull, args=("li", None)), threading.Thread(target=pull, args=("wang", None))]
    for th in pulls:
        th.start()
    time.sleep(1.0)
    uploads: list[float] = []
    beats: list[float] = []
    loaded = 0  # probes made while a clip was still being built or sent
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        busy = any(th.is_alive() for th in pulls)
        dt, status = timed_upload(hp)
        assert status == 201
        uploads.append(dt)
        dt, status = timed_heartbeat(hp)
        assert status == 200
        beats.append(dt)
        loaded += busy and any(th.is_alive() for th in pulls)
        time.sleep(0.3)
    for th in pulls:
        th.join(300)
    codes = sorted(r.status_code for r in results)
    print(f"\nquiet upload {statistics.median(quiet) * 1000:.0f} ms; {len(pulls)} one-hour clips asked "
          f"({codes.count(200) + codes.count(206)} served, {codes.count(429)} refused); {loaded} probes under load: "
          f"uploads median {statistics.median(uploads) * 1000:.0f} ms max {max(uploads) * 1000:.0f} ms, "
          f"heartbeats median {statistics.median(beats) * 1000:.0f} ms max {max(beats) * 1000:.0f} ms")
    assert max(uploads) < FAST_S, uploads
    assert max(beats) < FAST_S, beats
    assert loaded >= 3, "the clips were done before the probes: nothing was measured under load"
    served = [r for r in results if r.status_code in (200, 206)]
    refused = [r for r in results if r.status_code == 429]
    assert len(served) + len(refused) == len(pulls), [(r.status_code, r.text[:200]) for r in results]
    assert len(served) >= 1 and len(refused) >= len(pulls) - 8
    assert all("archive.max_clips" in r.json()["detail"] and r.headers["retry-after"] for r in refused)


class Held:
    """A streamed one-hour clip with its first bytes read and the rest left unread (its slot stays taken)."""

    def __init__(self, hp: HubProcess, who: str, t0: float) -> None:
        self.client = httpx.Client(timeout=120)
        self.r = self.client.send(self.client.build_request(
            "GET", f"{hp.url}/api/v1/devices/{CAM}/clip.mp4", headers=auth(hp, who), params=clip_params(t0)),
            stream=True)
        assert self.r.status_code == 200, self.r.status_code
        self.chunks = self.r.iter_bytes()  # kept: dropping a half-read iterator closes the connection
        next(self.chunks)

    def close(self) -> None:
        self.r.close()
        self.client.close()


def test_clips_are_capped_per_user_and_in_total(loaded_hub: tuple[HubProcess, float]) -> None:
    hp, t0 = loaded_hub
    held = [Held(hp, "li", t0), Held(hp, "li", t0)]
    try:
        r = clip_get(hp, "li", t0)
        assert r.status_code == 429 and r.headers["retry-after"] == "5", r.status_code
        assert "li has 2 clip downloads in progress (archive.max_clips_per_user 2)" in r.json()["detail"]
        held += [Held(hp, "wang", t0), Held(hp, "wang", t0)]
        r = clip_get(hp, "zhao", t0)
        assert r.status_code == 429, r.status_code
        assert "4 clip downloads are in progress (archive.max_clips 4)" in r.json()["detail"]
        held.pop(0).close()
        # The slot comes back when the response ends.
        ok = wait_until(lambda: (r := clip_get(hp, "zhao", t0, "bytes=0-99")).status_code == 206 and r, 60,
                        "a clip slot given back by a client that left")
        assert len(ok.content) == 100
    finally:
        for h in held:
            h.close()


def test_a_client_that_goes_away_stops_its_build(loaded_hub: tuple[HubProcess, float]) -> None:
    hp, t0 = loaded_hub
    h = Held(hp, "zhao", t0)
    export_id = h.r.headers["x-vms-export-id"]
    h.close()
    row = wait_until(lambda: (j := job(hp, "zhao", export_id))["status"] == "failed" and j, 60,
                     "the abandoned clip's build to stop")
    assert "cancelled" in str(row["error"]) and "client went away" in str(row["error"]), row
    assert float(str(row["progress"])) < 1.0
    assert not (hp.config.parent / "data" / "exports" / f"{export_id}.mp4.part").exists()
    # A Range request waits for the whole build: a client that gives up waiting stops it too (this
    # hour of footage builds in about a second; the hub checks for the client every 0.25 s).
    def listed() -> list[dict[str, Any]]:
        return list(httpx.get(f"{hp.url}/api/v1/exports", headers=auth(hp, "zhao"), timeout=30).json())

    before = {e["id"] for e in listed()}
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{hp.url}/api/v1/devices/{CAM}/clip.mp4", params=clip_params(t0), timeout=0.3,
                  headers=auth(hp, "zhao") | {"Range": "bytes=0-99"})
    # On a loaded machine the request may not have reached its handler when the client gave up: wait for
    # its build to be listed (the newest listed was then the abandoned one above).
    newest = wait_until(lambda: next((e for e in listed() if e["id"] not in before), None), 60,
                        "the Range request's build to be listed")
    row = wait_until(lambda: (j := job(hp, "zhao", str(newest["id"])))["status"] == "failed" and j, 60,
                     "the build of a Range request whose client left")
    assert "before the clip was ready" in str(row["error"]), row


def test_the_export_queue_is_bounded(loaded_hub: tuple[HubProcess, float]) -> None:
    hp, t0 = loaded_hub
    body = {"device_id": CAM, "start": str(t0), "end": str(t0 + HOUR), "case": "2026-0100"}
    first = httpx.post(f"{hp.url}/api/v1/exports", json=body, headers=auth(hp, "wang"), timeout=60)
    assert first.status_code == 202, first.text
    full = httpx.post(f"{hp.url}/api/v1/exports", json=body, headers=auth(hp, "wang"), timeout=60)
    assert full.status_code == 429 and full.headers["retry-after"] == "30", full.text
    assert "export queue is full: 1 exports are waiting or building (archive.max_queued_exports 1)" in \
        full.json()["detail"]
    wait_until(lambda: job(hp, "wang", first.json()["id"])["status"] == "done", 120, "the queued export")
    again = httpx.post(f"{hp.url}/api/v1/exports", json=body, headers=auth(hp, "wang"), timeout=60)
    assert again.status_code == 202, again.text
    wait_until(lambda: job(hp, "wang", again.json()["id"])["status"] == "done", 120, "the second export")


# -- the event loop is never blocked ----------------------------------------------------------------
class InProcessHub:
    """The hub app served by uvicorn in a thread of this process, on loopback."""

    def __init__(self, data: Path, segments: list[bytes]) -> None:
        import uvicorn

        from vms.api import create_app
        from vms.config import HubConfig
        from vms.hub import Hub

        cfg_dict = hub_config(data, devices=[{"id": CAM, "name": "entrance"}], archive={"min_free_bytes": 0},
                              retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0})
        path = write_config(data.parent / "hub.yaml", cfg_dict)
        self.tokens = {
            "police": vms_cli("token", "create", "--config", str(path), "--role", "police").stdout.strip(),
            "agent": vms_cli("token", "create", "--config", str(path), "--role", "agent", "--prefix", PREFIX,
                             "--name", "agent").stdout.strip(),
        }
        self.hub = Hub(HubConfig.model_validate(cfg_dict))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.hub), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the in-process hub to listen")
        self.t0 = float(int(time.time()) - 600)
        for k, seg in enumerate(segments[:4]):
            r = httpx.put(f"{self.url}/api/v1/agents/segments/{CAM}", content=seg, timeout=30,
                          params={"start": self.t0 + k * SEG_S, "duration": SEG_S},
                          headers={"Authorization": f"Bearer {self.tokens['agent']}",
                                   "X-VMS-SHA256": hashlib.sha256(seg).hexdigest()})
            assert r.status_code == 201, r.text

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory, black_segments: list[bytes]) -> Iterator[InProcessHub]:
    h = InProcessHub(tmp_path_factory.mktemp("inproc") / "data", black_segments)
    yield h
    h.stop()


def healthz_while(h: InProcessHub, lock: threading.Lock | threading.RLock, request: dict[str, object]) -> float:
    """Hold ``lock`` (as a long tick or a slow store write would), send ``request``, which needs that lock,
    and time a cheap request meanwhile: it must not wait for the lock."""
    done: list[httpx.Response] = []
    with lock:
        th = threading.Thread(target=lambda: done.append(httpx.request(timeout=60, **request)))  # type: ignore[arg-type]
        th.start()
        time.sleep(0.5)  # the request is in the route, waiting for the lock
        t = time.perf_counter()
        try:  # a loop blocked on the held lock answers nothing until it is released: never, here
            ok = httpx.get(f"{h.url}/healthz", timeout=5).status_code == 200
        except httpx.TimeoutException:
            ok = False
        dt = time.perf_counter() - t if ok else float("inf")
        time.sleep(max(0.0, 3.0 - (time.perf_counter() - t)))
    th.join(60)
    assert done and done[0].status_code < 500, done
    return dt


def test_a_live_route_waiting_for_the_registry_lock_leaves_the_loop_free(inproc: InProcessHub) -> None:
    """Before: the live routes took the registry's lock on the event loop, so a long tick froze every request."""
    dt = healthz_while(inproc, inproc.hub.registry.lock, {
        "method": "GET", "url": f"{inproc.url}/api/v1/live/{CAM}/index.m3u8",
        "headers": {"Authorization": f"Bearer {inproc.tokens['police']}"}})
    assert dt < LOOP_FREE_S, f"/healthz took {dt:.2f} s while a live request waited for the registry's lock"


def test_an_audit_write_of_a_clip_leaves_the_loop_free(inproc: InProcessHub) -> None:
    """Before: the audit row of a served clip was written on the event loop."""
    from vms import audit

    h = inproc
    police = {"Authorization": f"Bearer {h.tokens['police']}"}
    r = httpx.get(f"{h.url}/api/v1/devices/{CAM}/clip.mp4", headers=police, timeout=60,
                  params={"start": str(h.t0), "end": str(h.t0 + 6), "case": "2026-0101"})
    assert r.status_code == 200, r.text
    export_id = r.headers["x-vms-export-id"]
    wait_until(lambda: httpx.get(f"{h.url}/api/v1/exports/{export_id}", headers=police).json()["status"] == "done",
               30, "the clip's job to be done")
    dt = healthz_while(h, audit._lock, {"method": "GET", "url": f"{h.url}/api/v1/exports/{export_id}/clip.mp4",
                                        "headers": police})
    assert dt < LOOP_FREE_S, f"/healthz took {dt:.2f} s while a clip's audit row waited to be written"
