"""Property-based fuzzing of every API operation from the hub's own OpenAPI schema (schemathesis).

Runs the schemathesis command against a real hub process with an admin token (so requests reach
the handlers rather than stopping at auth) and asserts that no input produces a server error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import HubProcess, free_port, hub_config, write_config


def test_no_input_causes_a_server_error(tmp_path: Path) -> None:
    hp = HubProcess(write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "data")), free_port())
    token = hp.token("admin")
    hp.start()
    try:
        st = Path(sys.executable).parent / "schemathesis"
        r = subprocess.run(
            [str(st), "run", f"{hp.url}/openapi.json", "--checks", "not_a_server_error",
             "--header", f"Authorization: Bearer {token}", "--max-examples", "40", "--workers", "1",
             "--seed", "1"],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        hp.stop()
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary + r.stderr[-2000:]
    import re

    m = re.search(r"(\d+) generated, (\d+) passed", r.stdout)
    assert m and int(m.group(1)) > 300 and m.group(1) == m.group(2), summary  # hundreds of requests ran
