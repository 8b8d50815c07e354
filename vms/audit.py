"""The append-only, hash-chained audit log.

Each row's hash covers its own content and the previous row's hash, so editing, deleting or
reordering any row breaks the chain at that row: ``vms audit verify`` names it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vms.db.models import AuditEntry

if TYPE_CHECKING:
    from vms.auth import Principal

GENESIS = "0" * 64
_lock = threading.Lock()


def row_hash(
    prev_hash: str, seq: int, at: float, actor: str, role: str, action: str, target: str, detail: dict[str, Any]
) -> str:
    body = json.dumps(
        [seq, repr(at), actor, role, action, target, detail],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(
    sessions: sessionmaker[Session],
    *,
    at: float,
    actor: str,
    role: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in its own transaction; retries if another writer took the sequence."""
    d = detail or {}
    for _ in range(20):
        with _lock, sessions() as s:
            last = s.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
            seq = (last.seq + 1) if last else 1
            prev = last.hash if last else GENESIS
            entry = AuditEntry(
                seq=seq,
                at=at,
                actor=actor,
                role=role,
                action=action,
                target=target,
                detail=d,
                prev_hash=prev,
                hash=row_hash(prev, seq, at, actor, role, action, target, d),
            )
            s.add(entry)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                continue
            return entry
    raise RuntimeError("audit log busy: could not append after 20 tries")


def record(sessions: sessionmaker[Session], who: Principal, *, at: float, action: str, target: str,
           detail: dict[str, Any] | None = None) -> AuditEntry:
    """Append an entry for what a token holder did (the actor and role come from the token)."""
    return append(sessions, at=at, actor=who.name, role=who.role.value, action=action, target=target, detail=detail)


@dataclass
class Verdict:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify(sessions: sessionmaker[Session], batch: int = 5000) -> Verdict:
    prev, expected_seq, count = GENESIS, 1, 0
    with sessions() as s:
        last_seq = 0
        while True:
            rows = s.scalars(
                select(AuditEntry).where(AuditEntry.seq > last_seq).order_by(AuditEntry.seq).limit(batch)
            ).all()
            if not rows:
                return Verdict(True, count)
            for r in rows:
                if r.seq != expected_seq:
                    return Verdict(False, count, expected_seq, f"row {expected_seq} is missing")
                if r.prev_hash != prev:
                    return Verdict(False, count, r.seq, "previous-hash link broken")
                want = row_hash(prev, r.seq, r.at, r.actor, r.role, r.action, r.target, r.detail)
                if want != r.hash:
                    return Verdict(False, count, r.seq, "content does not match its hash")
                prev, expected_seq, count, last_seq = r.hash, expected_seq + 1, count + 1, r.seq


def export(sessions: sessionmaker[Session], last: int | None = None, before: int | None = None) -> list[dict[str, Any]]:
    """Every entry, oldest first; with ``last``, only the newest ``last`` of them (still oldest first);
    with ``before``, only entries whose ``seq`` is smaller (the pages of ``GET /api/v1/audit``)."""
    q = select(AuditEntry).order_by(AuditEntry.seq)
    if last is not None:
        q = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(last)
    if before is not None:
        q = q.where(AuditEntry.seq < before)
    with sessions() as s:
        rows = list(s.scalars(q))
        if last is not None:
            rows.reverse()
        return [
            {
                "seq": r.seq,
                "at": r.at,
                "actor": r.actor,
                "role": r.role,
                "action": r.action,
                "target": r.target,
                "detail": r.detail,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in rows
        ]
