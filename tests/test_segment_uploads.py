"""Segment uploads: no duplicates, no shared temp files, no future segments (issue 16, item 6), and
bodies streamed to disk with sizes checked first and a per-agent limit (issue 16, item 5).

The store and the ingest service run in-process on real SQLite files; the HTTP cases run against
a real hub process (``vms serve``) over loopback, with a raw socket where a test needs to hold an
upload half-sent or send only its headers.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from tests.conftest import Clock, hub_config
from tests.rtsp_fixture import make_clip
from vms.api.status import http_status
from vms.archive.store import INCOMING
from vms.config import HubConfig
from vms.db.models import Segment
from vms.hub import Hub
from vms.metrics import registry_for, render

PREFIX = "32058501001320"
CAM = PREFIX + "000001"
PREFIX2 = "32058502001320"
CAM2 = PREFIX2 + "000001"


def make_hub(data: Path, clock: Clock) -> Hub:
    cfg = HubConfig.model_validate(hub_config(data, None, archive={"min_free_bytes": 0}))
    hub = Hub(cfg, clock=clock)
    hub.registry.add_device(CAM)
    return hub


def count_rows(hub: Hub) -> int:
    with hub.sessions() as s:
        return len(list(s.scalars(select(Segment.id).where(Segment.device_id == CAM))))


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_clip(tmp_path_factory.mktemp("clip") / "seg.ts", seconds=2, gop=25).read_bytes()


def test_a_retry_whose_start_the_skew_correction_moved_is_a_duplicate(
    tmp_path: Path, clock: Clock, segment: bytes
) -> None:
    """An agent 100 s behind: each try's start is moved by (hub now - sent_at), which differs by the
    network's delay; the retry must still be known as the segment already stored."""
    hub = make_hub(tmp_path / "data", clock)
    sha = hashlib.sha256(segment).hexdigest()
    agent_now = clock.t - 100
    first = hub.ingest.store("agent-1", CAM, agent_now - 2, 2.0, segment, sha, sent_at=agent_now)
    assert first.result.name == "STORED", first.message
    clock.advance(5.0)  # the answer was lost; the agent retries 5 s later, with a slower network
    retry = hub.ingest.store("agent-1", CAM, agent_now - 2, 2.0, segment, sha, sent_at=agent_now + 4.6)
    assert (retry.result.name, retry.segment_id) == ("DUPLICATE", first.segment_id)
    assert http_status(retry.result) == 200  # what the agent takes as "let it go"
    assert count_rows(hub) == 1
    # The same bytes at another start of the agent's are another segment (a looped clip after a
    # reconnect): stored, never answered "duplicate" (the agent would delete what the hub lacks).
    again = hub.ingest.store("agent-1", CAM, agent_now + 8, 2.0, segment, sha, sent_at=agent_now + 10.6)
    assert again.result.name == "STORED", again.message
    assert count_rows(hub) == 2
    hub.engine.dispose()


def test_the_durable_steps_of_each_stored_segment_are_timed_in_the_metrics(
    tmp_path: Path, clock: Clock, segment: bytes
) -> None:
    """``vms_segment_store_seconds``: one ``file`` and one ``index`` observation per segment stored (the
    fsyncs and the commit, timed at the hub); a duplicate or a refused body writes nothing, so none."""
    hub = make_hub(tmp_path / "data", clock)
    sha = hashlib.sha256(segment).hexdigest()
    for k in range(3):
        assert hub.ingest.store("agent-1", CAM, clock.t - 20 + 2 * k, 2.0, segment, sha, None).result.name == "STORED"
    assert hub.ingest.store("agent-1", CAM, clock.t - 20, 2.0, segment, sha, None).result.name == "DUPLICATE"
    assert hub.ingest.store("agent-1", CAM, clock.t - 8, 2.0, segment, "0" * 64, None).result.name == "BAD_CHECKSUM"
    text = render(registry_for(hub)).decode()
    samples = {(s.name, s.labels.get("step"), s.labels.get("le")): s.value
               for fam in text_string_to_metric_families(text) if fam.name == "vms_segment_store_seconds"
               for s in fam.samples}
    for step in ("file", "index"):
        assert samples[("vms_segment_store_seconds_count", step, None)] == 3, samples
        assert 0 < samples[("vms_segment_store_seconds_sum", step, None)] < 3 * 5.0
        assert samples[("vms_segment_store_seconds_bucket", step, "+Inf")] == 3
    hub.engine.dispose()


def test_concurrent_uploads_of_one_segment_never_share_a_temp_file(
    tmp_path: Path, clock: Clock, segment: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of the same segment at once (an agent retrying while the first is still in
    flight): one is stored, the other is a duplicate, and the stored file is intact."""
    hub = make_hub(tmp_path / "data", clock)
    sha = hashlib.sha256(segment).hexdigest()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # widen the window between writing the body and renaming it
        time.sleep(0.3)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    gate = threading.Barrier(2)
    results: list[str] = []

    def upload() -> None:
        gate.wait()
        out = hub.segments.ingest(CAM, clock.t - 2, 2.0, segment, sha, "agent-1", clock.t)
        results.append(out.result.name)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    monkeypatch.undo()
    assert sorted(results) == ["DUPLICATE", "STORED"]
    with hub.sessions() as s:
        (row,) = s.scalars(select(Segment).where(Segment.device_id == CAM)).all()
    assert hashlib.sha256((hub.segments.root / row.path).read_bytes()).hexdigest() == sha
    assert list((hub.segments.root / INCOMING).iterdir()) == []
    hub.engine.dispose()


def test_a_segment_from_the_future_is_refused(tmp_path: Path, clock: Clock, segment: bytes) -> None:
    """It would become the camera's newest segment (freezing live view) and escape retention."""
    hub = make_hub(tmp_path / "data", clock)
    sha = hashlib.sha256(segment).hexdigest()
    out = hub.ingest.store("agent-1", CAM, clock.t + 3600, 2.0, segment, sha, sent_at=None)
    assert out.result.name == "BAD_RANGE" and "in the future" in out.message and "max_clock_skew_s" in out.message
    assert http_status(out.result) == 422
    sub = hub.ingest.store_sub(CAM, clock.t + 3600, 1.0, segment, sha, sent_at=None)
    assert sub.result.name == "BAD_RANGE"
    assert count_rows(hub) == 0 and not (hub.segments.root / CAM).exists()
    assert list((hub.segments.root / INCOMING).iterdir()) == []
    # An agent whose clock is an hour ahead says so (sent_at): its segment is moved back, not refused.
    ahead = clock.t + 3600
    ok = hub.ingest.store("agent-1", CAM, ahead - 2, 2.0, segment, sha, sent_at=ahead)
    assert ok.result.name == "STORED", ok.message
    with hub.sessions() as s:
        assert s.scalars(select(Segment.end_at)).one() == pytest.approx(clock.t)
    hub.engine.dispose()


# -- over HTTP, against a real hub process -------------------------------------------------------------


def raw_put(port: int, token: str, device: str, body_len: int, sha: str, **params: Any) -> socket.socket:
    """Send a segment upload's request line and headers only; the caller sends (some of) the body."""
    q = "&".join(f"{k}={v}" for k, v in {"start": f"{time.time() - 2:.6f}", "duration": "2", **params}.items())
    head = (
        f"PUT /api/v1/agents/segments/{device}?{q} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nX-VMS-SHA256: {sha}\r\nContent-Type: video/mp2t\r\n"
        f"Content-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode())
    return sock


def read_status(sock: socket.socket, timeout: float = 10) -> tuple[int, str]:
    sock.settimeout(timeout)
    buf = b""
    try:
        while chunk := sock.recv(65536):
            buf += chunk
    except TimeoutError:
        if not buf:
            raise
    finally:
        sock.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def put(url: str, token: str, device: str, body: bytes) -> httpx.Response:
    return httpx.put(f"{url}/api/v1/agents/segments/{device}", content=body, timeout=30,
                     params={"start": f"{time.time() - 2:.6f}", "duration": "2"},
                     headers={"Authorization": f"Bearer {token}", "X-VMS-SHA256": hashlib.sha256(body).hexdigest(),
                              "X-VMS-Sent-At": f"{time.time():.6f}"})


def hold_upload(hp: Any, token: str) -> tuple[socket.socket, bytes, str]:
    """An upload of 3 MB with only half its body sent yet (the caller sends the rest)."""
    body = os.urandom(3_000_000)
    sha = hashlib.sha256(body).hexdigest()
    sock = raw_put(hp.port, token, CAM, len(body), sha)
    sock.sendall(body[:1_500_000])
    return sock, body, sha


def test_upload_body_goes_to_disk_as_it_arrives(make_hub_process: Any) -> None:
    hp = make_hub_process(archive={"min_free_bytes": 0})
    a1 = hp.token("agent", PREFIX, name="agent-1")
    hp.start()
    recordings = hp.config.parent / "data" / "recordings"
    sock, body, sha = hold_upload(hp, a1)
    # The body goes to a temporary file of its own as it arrives (hashed on the way), not into memory.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        parts = list((recordings / INCOMING).iterdir()) if (recordings / INCOMING).is_dir() else []
        if parts and parts[0].stat().st_size >= 1 << 20:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no upload file growing in {recordings / INCOMING}")
    sock.sendall(body[1_500_000:])
    status, text = read_status(sock)
    assert status == 201, text
    assert list((recordings / INCOMING).iterdir()) == []
    (stored,) = (recordings / CAM).rglob("*.ts")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha


def test_each_agent_has_a_bounded_number_of_uploads_in_progress(make_hub_process: Any) -> None:
    hp = make_hub_process(archive={"min_free_bytes": 0, "max_uploads_per_agent": 1})
    a1 = hp.token("agent", PREFIX, name="agent-1")
    a2 = hp.token("agent", PREFIX2, name="agent-2")
    hp.start()
    sock, body, _ = hold_upload(hp, a1)
    time.sleep(0.5)  # the held upload has its slot
    # The agent's only slot is taken: its next upload is told to come back later (the uplink
    # keeps the segment and retries after a pause)...
    busy = put(hp.url, a1, CAM, os.urandom(1000))
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1", busy.text
    assert "max_uploads_per_agent" in busy.json()["detail"]
    # ...while another agent is not held up.
    assert put(hp.url, a2, CAM2, os.urandom(1000)).status_code == 201
    sock.sendall(body[1_500_000:])
    status, text = read_status(sock)
    assert status == 201, text
    assert put(hp.url, a1, CAM, os.urandom(1000)).status_code == 201  # the slot is free again


def test_sizes_are_checked_from_content_length_before_the_body_is_read(make_hub_process: Any) -> None:
    hp = make_hub_process()
    a1 = hp.token("agent", PREFIX, name="agent-1")
    hp.start()
    # A sub-stream segment over live.sub_max_segment_bytes (4 MB): refused from its headers alone,
    # while the agent has not sent a byte of its body.
    sock = raw_put(hp.port, a1, CAM, 5_000_000, "0" * 64, stream="sub")
    status, text = read_status(sock, timeout=5)
    assert status == 413 and "sub_max_segment_bytes" in text, text
    # A body that says less than it sends cannot get past the limit either (h11 frames it); one that
    # fits is taken as before.
    small = os.urandom(2000)
    r = httpx.put(f"{hp.url}/api/v1/agents/segments/{CAM}", content=small, timeout=10,
                  params={"start": f"{time.time() - 1:.6f}", "duration": "1", "stream": "sub"},
                  headers={"Authorization": f"Bearer {a1}", "X-VMS-SHA256": hashlib.sha256(small).hexdigest()})
    assert r.status_code == 201 and r.json()["stream"] == "sub", r.text
