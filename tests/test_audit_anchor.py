"""The audit log is anchored by signed checkpoints kept outside the database (issue 16, item 7).

Against a real hub process: it creates its checkpoint key (mode 0600) at the first start, signs
checkpoints into its checkpoints file and its log, and writes one into every clip manifest. Then the
database is tampered with as someone who can write it but cannot read the key would:
the newest rows deleted, the chain rebuilt with recomputed hashes, a checkpoint forged.
``vms audit verify`` and ``GET /api/v1/audit`` must say precisely what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import HubProcess, vms_cli, wait_until
from vms import audit

PREFIX = "32058501001320"
CAM = PREFIX + "000001"


def data_of(hp: HubProcess) -> Path:
    return hp.config.parent / "data"


def checkpoints(hp: HubProcess) -> list[dict[str, Any]]:
    f = data_of(hp) / "audit-checkpoints.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def hub_with_rows(make_hub_process: Any, **sections: Any) -> HubProcess:
    """A hub whose log has rows 1-2 (tokens made by the CLI before it first starts) and 3-5 (tokens an
    admin made through it), with a checkpoint over rows 1-2 (signed at the start) and one over 1-5."""
    hp: HubProcess = make_hub_process(audit={"checkpoint_interval_s": 1}, **sections)
    hp.token("admin")
    hp.token("agent", PREFIX, name="agent")
    hp.start()
    wait_until(lambda: any(c["seq"] == 2 for c in checkpoints(hp)), 20, "the checkpoint signed at the start")
    for i in range(3):
        r = httpx.post(f"{hp.url}/api/v1/tokens", json={"role": "duty", "name": f"duty{i}"},
                       headers={"Authorization": f"Bearer {hp.tokens['admin']}"}, timeout=30)
        assert r.status_code == 201, r.text
    wait_until(lambda: checkpoints(hp)[-1]["seq"] == 5, 20, "a checkpoint over rows 1-5")
    return hp


def read_audit(hp: HubProcess) -> dict[str, Any]:
    r = httpx.get(f"{hp.url}/api/v1/audit", headers={"Authorization": f"Bearer {hp.tokens['admin']}"}, timeout=30)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def verify(hp: HubProcess, *extra: str) -> tuple[int, str]:
    r = vms_cli("audit", "verify", "--config", str(hp.config), *extra, check=False)
    return r.returncode, r.stdout + r.stderr


def test_deleting_the_newest_rows_is_told_with_the_rows_missing(make_hub_process: Any) -> None:
    hp = hub_with_rows(make_hub_process)
    assert read_audit(hp)["verified"] is True
    hp.stop()
    key = data_of(hp) / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(bytes.fromhex(key.read_text().strip())) == 32
    # Shipped outside the store: each checkpoint is a JSON line of the hub's log, signed with that key.
    logged = [json.loads(line.split("audit checkpoint ", 1)[1]) for line in hp.log.read_text().splitlines()
              if "audit checkpoint {" in line] if hp.log else []
    assert logged == checkpoints(hp) and [c["seq"] for c in logged] == [2, 5]
    assert all(audit.Checkpoint.from_dict(c).signed_by(bytes.fromhex(key.read_text())) for c in logged)
    code, out = verify(hp)
    assert code == 0 and "ok: 5 rows, chain intact; 2 signed checkpoint(s) agree" in out, out
    assert "covers row 5; 0 newer row(s)" in out

    with sqlite3.connect(data_of(hp) / "vms.db") as c:
        c.execute("DELETE FROM audit_log WHERE seq >= 4")
    code, out = verify(hp)
    assert code == 1, out
    assert "rows 4-5 are missing: the log ends at row 3, but the checkpoint signed" in out and "covers row 5" in out
    # The hub sees it too, cheaply: GET /audit checks the rows since its last look and the newest checkpoint.
    hp.start()
    v = read_audit(hp)
    assert v["verified"] is False and v["first_bad_seq"] == 4 and "rows 4-5 are missing" in v["reason"], v


def rebuild_chain(db: Path, from_seq: int, detail: dict[str, Any]) -> None:
    """Edit row ``from_seq`` and recompute every hash after it: a valid chain, made without the key."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT seq, at, actor, role, action, target, detail, prev_hash FROM audit_log "
                         "WHERE seq >= ? ORDER BY seq", (from_seq,)).fetchall()
        prev = rows[0][7]
        for seq, at, actor, role, action, target, d, _ in rows:
            d = detail if seq == from_seq else json.loads(d)
            h = audit.row_hash(prev, seq, at, actor, role, action, target, d)
            c.execute("UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                      (json.dumps(d), prev, h, seq))
            prev = h


def test_a_chain_rebuilt_without_the_key_is_detected(make_hub_process: Any) -> None:
    hp = hub_with_rows(make_hub_process)
    hp.stop()
    db = data_of(hp) / "vms.db"
    rebuild_chain(db, 3, {"name": "someone-else", "role": "duty"})
    assert audit.verify(audit_sessions(db)).ok  # the chain alone cannot tell
    code, out = verify(hp)
    assert code == 1, out
    assert "row 5 does not match the checkpoint signed" in out and "rewritten" in out
    assert "the rewrite starts after row 2 (which still matches)" in out
    # A checkpoint forged for the rebuilt chain, signed without the hub's key, is named as such.
    head = sqlite3.connect(db).execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    forged = audit.Checkpoint.sign(os.urandom(32), head[0], head[1], time.time())
    with (data_of(hp) / "audit-checkpoints.jsonl").open("a") as f:
        f.write(json.dumps(forged.as_dict()) + "\n")
    code, out = verify(hp)
    assert code == 1 and "audit-checkpoints.jsonl:3: checkpoint of row 5" in out and "wrong HMAC" in out, out
    # The running hub refuses to sign the rewritten rows and says so.
    hp.start()
    v = read_audit(hp)
    assert v["verified"] is False and "row 5 does not match the checkpoint" in v["reason"], v
    wait_until(lambda: "audit log not signed" in hp.log.read_text() if hp.log else False, 20,
               "the hub to refuse signing a log that no longer extends its last checkpoint")


def audit_sessions(db: Path) -> Any:
    from vms.db import open_store

    return open_store(f"sqlite:///{db}")[1]


def test_every_clip_manifest_carries_a_checkpoint(make_hub_process: Any, black_segments: list[bytes]) -> None:
    hp = hub_with_rows(make_hub_process, devices=[{"id": CAM, "name": "gate"}], archive={"min_free_bytes": 0},
                       retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0})
    police = hp.token("police", name="li")
    t0 = float(int(time.time()) - 600)
    for k, seg in enumerate(black_segments[:3]):
        r = httpx.put(f"{hp.url}/api/v1/agents/segments/{CAM}", content=seg, timeout=30,
                      params={"start": t0 + 2 * k, "duration": 2},
                      headers={"Authorization": f"Bearer {hp.tokens['agent']}",
                               "X-VMS-SHA256": hashlib.sha256(seg).hexdigest()})
        assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {police}"}
    r = httpx.get(f"{hp.url}/api/v1/devices/{CAM}/clip.mp4", headers=auth, timeout=60,
                  params={"start": str(t0), "end": str(t0 + 6), "case": "2026-0200"})
    assert r.status_code == 200, r.text
    export_id = r.headers["x-vms-export-id"]
    man = httpx.get(f"{hp.url}/api/v1/exports/{export_id}/manifest.json", headers=auth, timeout=30).json()
    hp.stop()
    cp = man["audit_checkpoint"]
    with sqlite3.connect(data_of(hp) / "vms.db") as c:
        (req_seq,) = c.execute("SELECT seq FROM audit_log WHERE action = 'clip.request' AND detail LIKE ?",
                               (f"%{export_id}%",)).fetchone()
    # It covers the clip's own request, and is signed with the hub's key.
    assert cp["seq"] >= req_seq
    assert audit.Checkpoint.from_dict(cp).signed_by(bytes.fromhex((data_of(hp) / "audit.key").read_text()))
    saved = hp.config.parent / "manifest.json"
    saved.write_text(json.dumps(man))
    assert verify(hp, "--anchor", str(saved))[0] == 0
    # Someone deletes the clip's audit rows and every checkpoint that covers them from the hub's disk:
    # the checkpoints file alone no longer tells, the manifest handed out with the clip still does.
    with sqlite3.connect(data_of(hp) / "vms.db") as c:
        c.execute("DELETE FROM audit_log WHERE seq >= ?", (req_seq,))
    kept = [c for c in checkpoints(hp) if c["seq"] < req_seq]
    (data_of(hp) / "audit-checkpoints.jsonl").write_text("".join(json.dumps(c) + "\n" for c in kept))
    assert verify(hp)[0] == 0
    code, out = verify(hp, "--anchor", str(saved))
    assert code == 1 and f"the log ends at row {req_seq - 1}, but the checkpoint signed" in out, out
    assert f"covers row {cp['seq']}" in out


def test_a_key_others_can_read_is_refused(make_hub_process: Any) -> None:
    hp = make_hub_process()
    key = data_of(hp) / "audit.key"
    key.parent.mkdir(parents=True)
    key.write_text(os.urandom(32).hex())
    key.chmod(0o644)
    code, out = verify(hp)
    assert code == 1 and f"audit key file {key} may be read by others (mode 644): chmod 600 {key}" in out, out


def test_serve_refuses_a_key_others_can_read_in_one_clear_message(make_hub_process: Any) -> None:
    """Before: ``vms serve`` ended in a Python traceback."""
    hp = make_hub_process()
    key = data_of(hp) / "audit.key"
    key.parent.mkdir(parents=True)
    key.write_text(os.urandom(32).hex())
    key.chmod(0o644)
    r = vms_cli("serve", "--config", str(hp.config), "--port", str(hp.port), check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"error: cannot start: audit key file {key} may be read by others (mode 644): chmod 600 {key}" in out, out
    assert "Traceback" not in out, out


def test_checkpoints_of_another_database_are_told_as_such_and_kept(make_hub_process: Any) -> None:
    """A new database started beside the old one's checkpoints file. Before: the hub only logged that the
    log was not signed, ``GET /audit`` and ``vms audit verify`` said that the newest rows were deleted, and
    every clip manifest carried a checkpoint of the old log."""
    hp = hub_with_rows(make_hub_process)
    hp.stop()
    data = data_of(hp)
    old = data / "old-db"
    old.mkdir()
    for f in data.glob("vms.db*"):
        f.rename(old / f.name)
    file = data / "audit-checkpoints.jsonl"
    kept = file.read_bytes()
    hp.token("admin", name="admin2")  # row 1 of the new log
    code, out = verify(hp)
    assert code == 1, out
    assert f"the audit checkpoints in {file} do not belong to this audit log: not even the earliest (row 2" in out
    assert "this database is new and the checkpoints are an older database's" in out
    assert "move them out of audit.checkpoints_file" in out
    assert "newest rows were deleted" not in out, out
    hp.start()
    v = httpx.get(f"{hp.url}/api/v1/audit", headers={"Authorization": f"Bearer {hp.tokens['admin2']}"},
                  timeout=30).json()
    assert v["verified"] is False and "do not belong to this audit log" in v["reason"], v
    log = hp.log
    assert log is not None
    wait_until(lambda: "audit log not signed: the audit checkpoints in" in log.read_text(), 20,
               "the hub to say at start that the checkpoints are another log's")
    time.sleep(2.5)  # two checkpoint intervals: nothing of this log is signed into the other's file
    hp.stop()
    assert file.read_bytes() == kept
    # Resolved as told: the old checkpoints go with the old database, and the hub starts a new file.
    file.rename(old / file.name)
    hp.start()
    wait_until(lambda: bool(checkpoints(hp)), 20, "a checkpoint of the new log")
    hp.stop()
    code, out = verify(hp)
    assert code == 0 and "chain intact;" in out and "signed checkpoint(s) agree" in out, out
