"""Clips and exports from a real hub process: exact ranges, playable MP4s, Range, gaps, damage, audit.

Segments are real H.264 (High profile with B-frames, as cameras send) made with PyAV at test time,
cut at keyframes like the edge agent does, and uploaded through the agent route.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.conftest import HubProcess, free_port, hub_config, vms_cli, write_config
from tests.rtsp_fixture import make_clip

CAM = "32058501001320000001"
OTHER = "32058501001320000002"  # registered, never recorded
GOP_S = 1.0
SEG_S = 2.0


def split_segments(ts: Path, seconds: float) -> list[tuple[bytes, float]]:
    """Cut an MPEG-TS file into keyframe-aligned MPEG-TS segments (stream copy); (bytes, duration)."""
    out: list[tuple[bytes, float]] = []
    with av.open(str(ts)) as src:
        st = src.streams.video[0]
        tb = st.time_base
        assert tb is not None
        cur: Any = None
        buf = io.BytesIO()
        first = end = 0

        def close() -> None:
            cur.close()
            out.append((buf.getvalue(), float((end - first) * tb)))

        for pkt in src.demux(st):
            if pkt.dts is None or pkt.pts is None:
                continue
            if pkt.is_keyframe and (cur is None or (pkt.pts - first) * tb >= seconds):
                if cur is not None:
                    end = pkt.pts
                    close()
                buf = io.BytesIO()
                cur = av.open(buf, "w", format="mpegts")
                ost = cur.add_stream_from_template(st)
                first = pkt.pts
            pkt.stream = ost
            cur.mux(pkt)
            end = max(end, pkt.pts + (pkt.duration or 0))
        close()
    return out


def upload(hp: HubProcess, device: str, start: float, data: bytes, duration: float) -> httpx.Response:
    return httpx.put(
        f"{hp.url}/api/v1/agents/segments/{device}",
        params={"start": start, "duration": duration},
        content=data,
        headers={"Authorization": f"Bearer {hp.tokens['agent']}", "X-VMS-SHA256": hashlib.sha256(data).hexdigest()},
        timeout=30,
    )


@pytest.fixture(scope="module")
def archive_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, float, list[float]]]:
    """A hub holding 20 s of CAM in 2 s segments starting at T0, with the segment at T0+10 missing."""
    d = tmp_path_factory.mktemp("archive")
    cfg = hub_config(
        d / "data",
        devices=[{"id": OTHER, "name": "never recorded"}],
        archive={"min_free_bytes": 0},
        retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0},
    )
    hp = HubProcess(write_config(d / "hub.yaml", cfg), free_port())
    for role in ("admin", "police", "duty"):
        hp.token(role)
    hp.token("agent", "320585", name="agent")
    hp.start()
    segs = split_segments(make_clip(d / "src.ts", seconds=20, gop=25, bframes=2, bitrate=300_000), SEG_S)
    t0 = float(int(time.time()) - 600)
    starts: list[float] = []
    t = t0
    for data, dur in segs:
        starts.append(t)
        if abs(t - (t0 + 10)) > 1e-6:  # leave a hole
            assert upload(hp, CAM, t, data, dur).status_code == 201
        t += dur
    yield hp, t0, starts
    hp.stop()


def get(hp: HubProcess, path: str, role: str = "police", **kw: Any) -> httpx.Response:
    return httpx.get(
        hp.url + path, headers={"Authorization": f"Bearer {hp.tokens[role]}", **kw.pop("headers", {})}, timeout=60, **kw
    )


def clip(hp: HubProcess, start: Any, end: Any, role: str = "police", device: str = CAM, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", {})
    params = {"start": str(start), "end": str(end), "reason": "burglary report", "case": "2026-0042", **kw}
    return get(hp, f"/api/v1/devices/{device}/clip.mp4", role, params=params, headers=headers)


def audit_rows(hp: HubProcess) -> list[dict[str, Any]]:
    out = vms_cli("audit", "export", "--config", str(hp.config)).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def decode_all(data: bytes) -> tuple[int, float, float]:
    """Decode every frame; (frames, first pts s, last pts s). Raises on any decoding error."""
    times: list[float] = []
    with av.open(io.BytesIO(data), "r") as c:
        st = c.streams.video[0]
        for frame in c.decode(st):
            assert frame.pts is not None and frame.time_base is not None
            times.append(float(frame.pts * frame.time_base))
    return len(times), min(times), max(times)


def test_clip_is_exact_playable_and_audited(archive_hub: tuple[HubProcess, float, list[float]]) -> None:
    hp, t0, _ = archive_hub
    start, end = t0 + 3.3, t0 + 8.7
    r = clip(hp, start, end)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert json.loads(r.headers["x-vms-gaps"]) == []
    frames, first, last = decode_all(r.content)
    man = get(hp, f"/api/v1/exports/{r.headers['x-vms-export-id']}/manifest.json").json()
    origin = man["origin_unix"]
    # Starts at the keyframe at or before start, ends at end: within one GOP either side.
    assert 0 <= start - (origin + first) < GOP_S + 1e-3
    assert abs((origin + last) - end) < GOP_S
    assert frames == pytest.approx((origin + last - (origin + first)) * 25 + 1, abs=3)
    digest = hashlib.sha256(r.content).hexdigest()
    assert man["sha256"] == digest
    served = [
        a for a in audit_rows(hp) if a["action"] == "clip.served" and a["detail"]["export_id"] == man["export_id"]
    ]
    assert len(served) == 1
    d = served[0]["detail"]
    assert (d["sha256"], d["bytes"], d["complete"]) == (digest, len(r.content), True)
    assert (d["reason"], d["case"], served[0]["target"], served[0]["role"]) == (
        "burglary report",
        "2026-0042",
        CAM,
        "police",
    )
    asked = [
        a for a in audit_rows(hp) if a["action"] == "clip.request" and a["detail"]["export_id"] == man["export_id"]
    ]
    assert len(asked) == 1 and asked[0]["seq"] < served[0]["seq"]


def test_range_requests_and_download_later(archive_hub: tuple[HubProcess, float, list[float]]) -> None:
    hp, t0, _ = archive_hub
    whole = clip(hp, t0 + 1, t0 + 7)
    assert whole.status_code == 200
    part = clip(hp, t0 + 1, t0 + 7, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    size = len(whole.content)
    assert part.headers["content-range"] == f"bytes 100-1099/{size}"
    assert part.content == whole.content[100:1100]  # the same bytes: the build is deterministic
    job = part.headers["x-vms-export-id"]
    tail = get(hp, f"/api/v1/exports/{job}/clip.mp4", headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == whole.content[-500:]
    bad = get(hp, f"/api/v1/exports/{job}/clip.mp4", headers={"Range": f"bytes={size + 10}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{size}"
    served = [a["detail"] for a in audit_rows(hp) if a["action"] == "clip.served" and a["detail"]["export_id"] == job]
    assert {(s["range"], s["sha256"]) for s in served} >= {
        ("bytes=100-1099", hashlib.sha256(part.content).hexdigest()),
        (f"bytes={size - 500}-{size - 1}", hashlib.sha256(tail.content).hexdigest()),
    }


def test_gap_is_reported_not_hidden(archive_hub: tuple[HubProcess, float, list[float]]) -> None:
    hp, t0, _starts = archive_hub
    r = clip(hp, t0 + 6, t0 + 16)
    assert r.status_code == 200
    gaps = json.loads(r.headers["x-vms-gaps"])
    assert len(gaps) == 1 and gaps[0]["seconds"] == pytest.approx(SEG_S, abs=0.1)
    decode_all(r.content)
    man = get(hp, f"/api/v1/exports/{r.headers['x-vms-export-id']}/manifest.json").json()
    assert man["gaps"] == gaps


def test_long_range_export_job(archive_hub: tuple[HubProcess, float, list[float]]) -> None:
    hp, t0, _ = archive_hub
    body = {"device_id": CAM, "start": str(t0), "end": str(t0 + 20), "case": "2026-0043"}
    r = httpx.post(f"{hp.url}/api/v1/exports", json=body, headers={"Authorization": f"Bearer {hp.tokens['police']}"})
    assert r.status_code == 202, r.text
    job = r.json()["id"]  # the officer's own export: polled and downloaded with the same token
    deadline = time.monotonic() + 60
    while (v := get(hp, f"/api/v1/exports/{job}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert v["status"] == "done" and v["progress"] == 1.0
    assert [g for g in v["gaps"] if g["seconds"] > 1] != []  # the hole at T0+10
    dl = get(hp, f"/api/v1/exports/{job}/clip.mp4")
    assert dl.status_code == 200 and hashlib.sha256(dl.content).hexdigest() == v["sha256"]
    frames, _, _ = decode_all(dl.content)
    assert frames >= 17 * 25


def test_damaged_segments_are_skipped_and_reported(tmp_path: Path, make_hub_process: Any) -> None:
    hp: HubProcess = make_hub_process(
        archive={"min_free_bytes": 0}, retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0}
    )
    hp.token("police")
    hp.token("agent", "320585", name="agent")
    hp.start()
    segs = split_segments(make_clip(tmp_path / "src.ts", seconds=8, gop=25, bframes=2, bitrate=300_000), SEG_S)
    t0 = float(int(time.time()) - 300)
    t = t0
    for data, dur in segs:
        assert upload(hp, CAM, t, data, dur).status_code == 201
        t += dur
    files = sorted((hp.config.parent / "data" / "recordings" / CAM).rglob("*.ts"))
    assert len(files) == 4
    flipped = bytearray(files[1].read_bytes())
    flipped[5000:5100] = bytes(100)  # same size, different content
    files[1].write_bytes(bytes(flipped))
    files[2].write_bytes(files[2].read_bytes()[:7000])  # truncated
    r = clip(hp, t0, t0 + 8)
    assert r.status_code == 200, r.text
    header_gaps = json.loads(r.headers["x-vms-gaps"])
    assert len(header_gaps) == 1 and header_gaps[0]["seconds"] == pytest.approx(SEG_S, abs=0.1)  # truncated: by stat
    frames, _, _ = decode_all(r.content)
    assert frames == pytest.approx(4 * 25, abs=3)  # the two good segments
    man = get(hp, f"/api/v1/exports/{r.headers['x-vms-export-id']}/manifest.json").json()
    reasons = sorted(s["reason"] for s in man["skipped_segments"])
    assert len(reasons) == 2 and "SHA-256" in reasons[0] and "truncated" in reasons[1]
    assert len(man["gaps"]) == 1 and man["gaps"][0]["seconds"] == pytest.approx(2 * SEG_S, abs=0.1)


@pytest.mark.parametrize(
    ("device", "start", "end", "extra", "status", "words"),
    [
        (OTHER, "T+0", "T+5", {}, 404, "no recordings"),
        ("32058501001320009999", "T+0", "T+5", {}, 404, "unknown device"),
        (CAM, "T+5", "T+1", {}, 422, "must be after"),
        (CAM, "T-7200", "T-3600", {}, 404, "no recordings"),
        (CAM, "T+0", "T+7776000", {}, 422, "export"),
        (CAM, "2026-13-01T00:00:00Z", "T+5", {}, 422, "RFC 3339"),
        (CAM, "2026-11-01T00:00:00", "T+5", {}, 422, "time zone"),
        (CAM, "2026-11-01T00:00:00+25:00", "T+5", {}, 422, "start"),
        (CAM, "T+0", "T+5", {"reason": "", "case": ""}, 422, "reason"),
        ("..%2F..%2Fvms.db", "T+0", "T+5", {}, 404, ""),
        ("3205850100132000000%00", "T+0", "T+5", {}, 422, ""),
    ],
)
def test_bad_clip_requests(
    archive_hub: tuple[HubProcess, float, list[float]],
    device: str,
    start: str,
    end: str,
    extra: dict[str, str],
    status: int,
    words: str,
) -> None:
    hp, t0, _ = archive_hub

    def t(v: str) -> str:
        return str(t0 + float(v[1:])) if v.startswith("T") else v

    before = len(list((hp.config.parent / "data" / "exports").glob("*.mp4")))
    r = get(hp, f"/api/v1/devices/{device}/clip.mp4", params={"start": t(start), "end": t(end), "reason": "x", **extra})
    assert r.status_code == status, r.text
    assert words in r.text
    assert len(list((hp.config.parent / "data" / "exports").glob("*.mp4"))) == before  # nothing half-made


def test_roles_and_path_tricks(archive_hub: tuple[HubProcess, float, list[float]]) -> None:
    hp, t0, _ = archive_hub
    assert clip(hp, t0, t0 + 2, role="duty").status_code == 403
    assert httpx.get(f"{hp.url}/api/v1/devices/{CAM}/clip.mp4", params={"start": t0, "end": t0 + 2}).status_code == 401
    for bad in ("../../vms.db", "..%2F..%2Fvms.db", "0" * 31 + "/", "%2e%2e"):
        r = get(hp, f"/api/v1/exports/{bad}/clip.mp4")
        assert r.status_code in (404, 422), (bad, r.status_code)
        assert b"SQLite" not in r.content
    r = get(hp, f"/api/v1/exports/{'0' * 32}/manifest.json")
    assert r.status_code == 404
    # A case number with path characters is stored as text and never reaches a file name.
    r = clip(hp, t0, t0 + 2, case="../../../etc/passwd")
    assert r.status_code == 200
    assert "passwd" not in r.headers["content-disposition"]


def test_tampered_audit_row_is_detected(archive_hub: tuple[HubProcess, float, list[float]]) -> None:
    hp, t0, _ = archive_hub
    assert clip(hp, t0, t0 + 2).status_code == 200
    assert vms_cli("audit", "verify", "--config", str(hp.config)).returncode == 0
    db = hp.config.parent / "data" / "vms.db"
    row = next(a for a in audit_rows(hp) if a["action"] == "clip.served")
    con = sqlite3.connect(db)
    try:
        detail = dict(row["detail"], sha256="0" * 64)  # someone rewrites which bytes were handed over
        con.execute("UPDATE audit_log SET detail = ? WHERE seq = ?", (json.dumps(detail), row["seq"]))
        con.commit()
        r = vms_cli("audit", "verify", "--config", str(hp.config), check=False)
        assert r.returncode == 1 and f"row {row['seq']}" in r.stderr
    finally:
        con.execute("UPDATE audit_log SET detail = ? WHERE seq = ?", (json.dumps(row["detail"]), row["seq"]))
        con.commit()
        con.close()
    assert vms_cli("audit", "verify", "--config", str(hp.config)).returncode == 0


def test_vms_clip_command_pulls_through_the_hub(
    archive_hub: tuple[HubProcess, float, list[float]], tmp_path: Path
) -> None:
    hp, t0, _ = archive_hub
    out = tmp_path / "case.mp4"
    r = vms_cli(
        "clip",
        CAM,
        "--from",
        str(t0 + 2),
        "--to",
        str(t0 + 6),
        "-o",
        str(out),
        "--hub",
        hp.url,
        "--token",
        hp.tokens["police"],
        "--case",
        "2026-0050",
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest in r.stdout
    manifest = json.loads(out.with_name("case.mp4.json").read_text())
    assert manifest["sha256"] == digest
    decode_all(out.read_bytes())
    served = [a for a in audit_rows(hp) if a["action"] == "clip.served" and a["detail"]["case"] == "2026-0050"]
    assert [s["detail"]["sha256"] for s in served] == [digest]
    bad = vms_cli(
        "clip",
        CAM,
        "--from",
        str(t0 + 6),
        "--to",
        str(t0 + 2),
        "-o",
        str(tmp_path / "x.mp4"),
        "--hub",
        hp.url,
        "--token",
        hp.tokens["duty"],
        "--case",
        "x",
        check=False,
    )
    assert bad.returncode == 1 and "403" in bad.stderr and not (tmp_path / "x.mp4").exists()


def test_clip_downloads_together_keep_to_the_sending_rate(tmp_path: Path, make_hub_process: Any) -> None:
    """``archive.clip_send_mbit_s``: what one download sent is paid for by the next one's wait, so
    downloads together never go faster than the rate (here 1 Mbit/s), and the wait is counted."""
    hp: HubProcess = make_hub_process(archive={"min_free_bytes": 0, "clip_send_mbit_s": 1},
                                      retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0})
    for role in ("police", "duty"):
        hp.token(role)
    hp.token("agent", "320585", name="agent")
    hp.start()
    segs = split_segments(make_clip(tmp_path / "src.ts", seconds=8, gop=25, bitrate=300_000), SEG_S)
    t0 = float(int(time.time()) - 300)
    for k, (data, dur) in enumerate(segs):
        assert upload(hp, CAM, t0 + k * SEG_S, data, dur).status_code == 201
    began = time.monotonic()
    first = clip(hp, t0, t0 + 8, reason="first")
    second = clip(hp, t0, t0 + 8, reason="second")
    took = time.monotonic() - began
    assert first.status_code == second.status_code == 200
    assert decode_all(second.content)[0] == pytest.approx(8 * 25, abs=3)
    # The first clip went at once; the second started only once the rate had paid for the first.
    sent_s = (len(first.content) + len(second.content)) * 8 / 1e6
    assert took >= sent_s - len(second.content) * 8 / 1e6 - 0.1, (took, sent_s)
    metrics = get(hp, "/metrics", "duty").text
    waited = float(next(line.split()[1] for line in metrics.splitlines()
                        if line.startswith("vms_clip_send_waited_seconds_total ")))
    assert waited >= len(first.content) * 8 / 1e6 - 0.5, (waited, len(first.content))
