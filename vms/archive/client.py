"""``vms clip``: pull a clip from a running hub over HTTP, as a police liaison officer does.

It goes through the hub (never the files) so that the hub audits the request and the download;
the clip is built as an export job (progress bar), downloaded, checked against the SHA-256 the hub
recorded, and saved with its JSON manifest beside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


class ClipClientError(Exception):
    pass


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise ClipClientError(f"hub answered {r.status_code}: {detail}")
    return r.json()


def pull_clip(
    hub: str, token: str, device_id: str, start: str, end: str, out: Path, reason: str, case: str
) -> dict[str, Any]:
    """Export, wait, download and verify; returns the export job as the hub reports it."""
    headers = {"Authorization": f"Bearer {token}"}
    part = out.with_name(out.name + ".part")
    with (
        httpx.Client(base_url=hub.rstrip("/"), headers=headers, timeout=60) as c,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ) as bar,
    ):
        body = {"device_id": device_id, "start": start, "end": end, "reason": reason, "case": case}
        job = _check(c.post("/api/v1/exports", json=body))
        task = bar.add_task("building", total=100)
        while job["status"] in ("queued", "running"):
            bar.update(task, completed=100 * job["progress"])
            time.sleep(0.3)
            job = _check(c.get(f"/api/v1/exports/{job['id']}"))
        if job["status"] != "done":
            raise ClipClientError(f"export {job['id']} {job['status']}: {job.get('error')}")
        bar.update(task, completed=100)
        dl = bar.add_task("download", total=job["bytes"])
        h = hashlib.sha256()
        with c.stream("GET", f"/api/v1/exports/{job['id']}/clip.mp4") as r:
            if r.status_code != 200:
                r.read()
                _check(r)
            with open(part, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(dl, advance=len(chunk))
        if h.hexdigest() != job["sha256"]:
            part.unlink(missing_ok=True)
            raise ClipClientError(f"downloaded SHA-256 {h.hexdigest()} differs from the hub's {job['sha256']}")
        manifest = _check(c.get(f"/api/v1/exports/{job['id']}/manifest.json"))
    part.replace(out)
    out.with_name(out.name + ".json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return dict(job)
