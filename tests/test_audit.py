"""The audit log is append-only in effect: any edit, deletion or reordering is detected."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import hub_config, vms_cli, write_config
from vms import audit
from vms.db import open_store


def make(tmp_path: Path) -> tuple[Path, Path]:
    cfg = write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "data"))
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'data' / 'vms.db'}")
    for i in range(5):
        audit.append(sessions, at=1_790_000_000.0 + i, actor="li", role="police", action="clip.pull",
                     target="32058501001320000001", detail={"reason": f"case {i}", "sha256": "ab" * 32})
    assert audit.verify(sessions).ok and audit.verify(sessions).rows == 5
    engine.dispose()
    return cfg, tmp_path / "data" / "vms.db"


def test_intact_chain_verifies(tmp_path: Path) -> None:
    cfg, _ = make(tmp_path)
    out = vms_cli("audit", "verify", "--config", str(cfg))
    assert "ok: 5 rows" in out.stdout
    lines = vms_cli("audit", "export", "--config", str(cfg)).stdout.splitlines()
    assert len(lines) == 5 and '"case 3"' in lines[3]


def test_edited_row_is_detected(tmp_path: Path) -> None:
    cfg, db = make(tmp_path)
    with sqlite3.connect(db) as c:
        c.execute("""UPDATE audit_log SET detail = '{"reason": "nothing to see", "sha256": "00"}' WHERE seq = 3""")
    r = vms_cli("audit", "verify", "--config", str(cfg), check=False)
    assert r.returncode == 1 and "row 3" in r.stderr and "does not match its hash" in r.stderr


def test_deleted_row_is_detected(tmp_path: Path) -> None:
    cfg, db = make(tmp_path)
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM audit_log WHERE seq = 2")
    r = vms_cli("audit", "verify", "--config", str(cfg), check=False)
    assert r.returncode == 1 and "row 2 is missing" in r.stderr


def test_rewritten_tail_is_detected(tmp_path: Path) -> None:
    """Recomputing one row's own hash is not enough: the next row's link breaks."""
    cfg, db = make(tmp_path)
    with sqlite3.connect(db) as c:
        prev = c.execute("SELECT prev_hash FROM audit_log WHERE seq = 4").fetchone()[0]
        detail = {"reason": "forged", "sha256": "ab" * 32}
        h = audit.row_hash(prev, 4, 1_790_000_003.0, "li", "police", "clip.pull", "32058501001320000001", detail)
        c.execute("UPDATE audit_log SET detail = ?, hash = ? WHERE seq = 4",
                  ('{"reason": "forged", "sha256": "' + "ab" * 32 + '"}', h))
    r = vms_cli("audit", "verify", "--config", str(cfg), check=False)
    assert r.returncode == 1 and "row 5" in r.stderr and "link broken" in r.stderr
