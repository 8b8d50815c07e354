"""The append-only, hash-chained audit log, anchored by signed checkpoints kept outside the database.

Each row's hash covers its own content and the previous row's hash, so editing, deleting or
reordering any row breaks the chain at that row: ``vms audit verify`` names it. The chain alone
is unkeyed: deleting the newest rows leaves a shorter valid chain, and whoever can write the
database can rebuild every hash after an edit. So the hub signs **checkpoints** (HMAC-SHA256 of
the newest row's sequence number and chain hash, :class:`AuditAnchor`) every
``audit.checkpoint_interval_s`` when the log has grown, at shutdown and for every clip manifest,
with a key that never enters the database: ``audit.key_file`` (default ``data_dir/audit.key``,
64 hex digits, created with mode 0600 at the first start; a key file others may read is refused).
Each checkpoint is appended to ``audit.checkpoints_file`` (default
``data_dir/audit-checkpoints.jsonl``, fsynced), logged as a JSON line (``audit checkpoint {...}``)
and written into clip manifests, so copies live outside the store. ``vms audit verify`` checks the
chain against every checkpoint it is given: rows missing after the last row the log still has
(the newest deleted) and a chain whose hashes differ from a signed checkpoint (rebuilt without
the key) are told with the rows concerned; a checkpoint whose HMAC is wrong is named. Checkpoints
none of which agrees with the log (a new database started beside an old one's checkpoints file, or
a log replaced whole) are told as such: the hub then signs nothing and says how to resolve it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vms.db.models import AuditEntry
from vms.kernel.fsutil import fsync_dir
from vms.kernel.timeutil import iso

if TYPE_CHECKING:
    from vms.auth import Principal
    from vms.config import HubConfig

log = logging.getLogger(__name__)

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
    head_seq: int = 0  # the newest row verified (0: none)
    head_hash: str = GENESIS


def verify(sessions: sessionmaker[Session], batch: int = 5000, after: tuple[int, str] = (0, GENESIS)) -> Verdict:
    """Walk the chain; with ``after`` = (seq, hash) of a row verified before, only the rows after it
    (the row itself must still carry that hash). ``rows`` counts from the log's start."""
    start_seq, prev = after
    expected_seq, count = start_seq + 1, start_seq
    with sessions() as s:
        if start_seq > 0:
            anchor = s.get(AuditEntry, start_seq)
            if anchor is None:
                return Verdict(False, 0, start_seq, f"row {start_seq} is missing")
            if anchor.hash != prev:
                return Verdict(False, 0, start_seq, f"row {start_seq} changed since it was verified")
        last_seq = start_seq
        while True:
            rows = s.scalars(
                select(AuditEntry).where(AuditEntry.seq > last_seq).order_by(AuditEntry.seq).limit(batch)
            ).all()
            if not rows:
                return Verdict(True, count, head_seq=last_seq, head_hash=prev)
            for r in rows:
                if r.seq != expected_seq:
                    return Verdict(False, count, expected_seq, f"row {expected_seq} is missing")
                if r.prev_hash != prev:
                    return Verdict(False, count, r.seq, "previous-hash link broken")
                want = row_hash(prev, r.seq, r.at, r.actor, r.role, r.action, r.target, r.detail)
                if want != r.hash:
                    return Verdict(False, count, r.seq, "content does not match its hash")
                prev, expected_seq, count, last_seq = r.hash, expected_seq + 1, count + 1, r.seq


# -- signed checkpoints ----------------------------------------------------------------------------
KEY_BYTES = 32
_CHECKPOINT_TAG = "vms-audit-checkpoint/1"
#: The verdict of ``GET /api/v1/audit`` walks the whole chain again at most this often; in between
#: it verifies only the rows added since (and that the last verified row is unchanged).
FULL_VERIFY_S = 3600.0


class AuditKeyError(ValueError):
    """The checkpoint key file is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """Rows 1..``seq`` of the log with ``hash`` as the chain hash of row ``seq``, signed at ``at``."""

    seq: int
    hash: str
    at: float
    mac: str

    @staticmethod
    def message(seq: int, chain_hash: str, at: float) -> bytes:
        return f"{_CHECKPOINT_TAG}\n{seq}\n{chain_hash}\n{at!r}".encode()

    @classmethod
    def sign(cls, key: bytes, seq: int, chain_hash: str, at: float) -> Checkpoint:
        return cls(seq, chain_hash, at, hmac.new(key, cls.message(seq, chain_hash, at), hashlib.sha256).hexdigest())

    def signed_by(self, key: bytes) -> bool:
        want = hmac.new(key, self.message(self.seq, self.hash, self.at), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, self.mac)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "at": self.at, "signed_at": iso(self.at),
                "hmac_sha256": self.mac}

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        """A checkpoint as written by :meth:`as_dict`; ValueError naming the field that is wrong."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        seq, h, at, mac = d.get("seq"), d.get("hash"), d.get("at"), d.get("hmac_sha256")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"seq {seq!r} is not a row number")
        if not isinstance(h, str) or len(h) != 64:
            raise ValueError(f"hash {h!r} is not a SHA-256")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise ValueError(f"at {at!r} is not a time")
        if not isinstance(mac, str) or len(mac) != 64:
            raise ValueError(f"hmac_sha256 {mac!r} is not an HMAC-SHA256")
        return cls(seq, h, float(at), mac)


def anchor_files(cfg: HubConfig) -> tuple[Path, Path]:
    """(key file, checkpoints file) of a hub configuration."""
    a, data = cfg.audit, cfg.storage.data_dir
    return a.key_file or data / "audit.key", a.checkpoints_file or data / "audit-checkpoints.jsonl"


def load_key(path: Path, create: bool) -> bytes | None:
    """The checkpoint key; with ``create``, a new random one is written first if there is none (mode
    0600). None when there is none and ``create`` is false. :class:`AuditKeyError` for a key file that
    others may read or that does not hold 64 hex digits."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first: read theirs
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(path.parent)
            log.info("audit checkpoint key created in %s (mode 0600): keep a copy where the database is not", path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key file {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise AuditKeyError(f"audit key file {path} may be read by others (mode {st.st_mode & 0o777:o}): "
                            f"chmod 600 {path}")
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key file {path}: {exc.strerror or exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise AuditKeyError(f"audit key file {path} must hold {2 * KEY_BYTES} hex digits")
    return key


def parse_checkpoints(text: str, source: str) -> list[tuple[str, Checkpoint | str]]:
    """Checkpoints in ``text``: JSON lines of checkpoints, one checkpoint, or a clip manifest (its
    ``audit_checkpoint``). Each with where it came from (``source:line``) and the checkpoint or why
    the entry is not one."""
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict):
            entry = doc.get("audit_checkpoint", doc) if "hmac_sha256" not in doc else doc
            if entry is None:
                return [(source, "carries no audit checkpoint (the hub had no checkpoint key)")]
            try:
                return [(source, Checkpoint.from_dict(entry))]
            except ValueError as exc:
                return [(source, f"not a checkpoint: {exc}")]
    out: list[tuple[str, Checkpoint | str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            out.append((where, Checkpoint.from_dict(json.loads(line))))
        except ValueError as exc:
            out.append((where, f"not a checkpoint: {exc}"))
    return out


def _rows_text(first: int, last: int) -> str:
    return f"row {first} is" if first == last else f"rows {first}-{last} are"


def anchor_problem(cp: Checkpoint, head_seq: int, hash_at: str | None) -> str | None:
    """What a valid checkpoint says is wrong with a log whose newest row is ``head_seq`` and whose row
    ``cp.seq`` has chain hash ``hash_at`` (None: no such row); None if the log agrees with it."""
    if cp.seq > head_seq:
        return (f"{_rows_text(head_seq + 1, cp.seq)} missing: the log ends at row {head_seq}, but the checkpoint "
                f"signed {iso(cp.at)} covers row {cp.seq} (the newest rows were deleted)")
    if cp.seq > 0 and hash_at != cp.hash:
        return (f"row {cp.seq} does not match the checkpoint signed {iso(cp.at)}: the chain up to it was "
                "rewritten and its hashes recomputed without the checkpoint key")
    return None


def foreign_problem(earliest: Checkpoint | None, head: int, hash_at: str | None, sources: str) -> str | None:
    """Why the checkpoints of ``sources`` belong to another log, judged by ``earliest`` (the valid one of
    the lowest row above 0) against a log whose newest row is ``head`` and whose row ``earliest.seq`` has
    chain hash ``hash_at``; None if it agrees. A chain that agrees with a checkpoint agrees with every
    earlier one, so when even the earliest does not, none does: no row of this log was ever signed. A
    checkpoint of row 0 (an empty log) agrees with every log and tells nothing."""
    if earliest is None or anchor_problem(earliest, head, hash_at) is None:
        return None
    differs = f"its row {earliest.seq} differs" if earliest.seq <= head else f"it has only {head} row(s)"
    return (f"the audit checkpoints in {sources} do not belong to this audit log: not even the earliest (row "
            f"{earliest.seq}, signed {iso(earliest.at)}) agrees with it ({differs}). Either this database is new "
            "and the checkpoints are an older database's, or every row of this log was replaced or deleted. If the "
            "database was recreated on purpose, keep the old checkpoints with the old database's backup and move "
            "them out of audit.checkpoints_file: the hub then starts a new one")


def _sources(entries: list[tuple[str, Checkpoint | str]]) -> str:
    """The files ``entries`` came from (their ``path:line`` without the line), in order."""
    names: dict[str, None] = {}
    for where, _ in entries:
        path, _, line = where.rpartition(":")
        names[path if path and line.isdigit() else where] = None
    return ", ".join(names)


def _hashes_at(sessions: sessionmaker[Session], seqs: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(seqs))
    out: dict[int, str] = {}
    with sessions() as s:
        for i in range(0, len(wanted), 500):
            out.update(s.execute(select(AuditEntry.seq, AuditEntry.hash)
                                 .where(AuditEntry.seq.in_(wanted[i:i + 500]))).all())
    return out


def head_seq(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.max(AuditEntry.seq))) or 0)


@dataclass
class AnchorReport:
    """The checkpoints' side of ``vms audit verify``."""

    problems: list[str]
    checked: int  # checkpoints with a valid HMAC
    newest: Checkpoint | None  # the valid checkpoint covering the most rows


def check_anchors(
    sessions: sessionmaker[Session], key: bytes, entries: list[tuple[str, Checkpoint | str]]
) -> AnchorReport:
    """Check the log against every checkpoint: each entry's HMAC, then the newest rows (truncation,
    against the checkpoint covering most rows) and each checkpoint's row hash (a rebuilt chain: the
    earliest checkpoint it no longer matches, and the latest one it still matches). Checkpoints none of
    which agrees with the log are told as another log's (:func:`foreign_problem`), not row by row."""
    problems: list[str] = []
    valid: list[Checkpoint] = []
    for where, cp in entries:
        if isinstance(cp, str):
            problems.append(f"{where}: {cp}")
        elif not cp.signed_by(key):
            problems.append(f"{where}: checkpoint of row {cp.seq} (signed {iso(cp.at)}) has a wrong HMAC: forged, "
                            "or signed with another key")
        else:
            valid.append(cp)
    if not valid:
        return AnchorReport(problems, 0, None)
    head = head_seq(sessions)
    hashes = _hashes_at(sessions, (c.seq for c in valid if 0 < c.seq <= head))
    newest = max(valid, key=lambda c: (c.seq, c.at))
    earliest = min((c for c in valid if c.seq > 0), key=lambda c: (c.seq, c.at), default=None)
    foreign = foreign_problem(earliest, head, hashes.get(earliest.seq) if earliest else None, _sources(entries))
    if foreign is not None:
        problems.append(foreign)
        return AnchorReport(problems, len(valid), newest)
    if newest.seq > head:
        problems.append(str(anchor_problem(newest, head, None)))
    by_seq = sorted({c.seq: c for c in valid if c.seq <= head}.values(), key=lambda c: c.seq)
    matching = [c for c in by_seq if anchor_problem(c, head, hashes.get(c.seq)) is None]
    wrong = [c for c in by_seq if c not in matching]
    if wrong:
        first = wrong[0]
        before = [c for c in matching if c.seq < first.seq]
        since = f"after row {before[-1].seq} (which still matches)" if before else "at or before it"
        problems.append(f"{anchor_problem(first, head, hashes.get(first.seq))}; the rewrite starts {since}, "
                        f"{len(wrong)} checkpoint(s) disagree")
    return AnchorReport(problems, len(valid), newest)


def _head(path: Path, size: int = 1 << 16) -> str:
    """The whole lines of the first ``size`` bytes of ``path``: where the earliest checkpoints are."""
    with path.open("rb") as f:
        data = f.read(size)
    if len(data) == size:
        data = data.rpartition(b"\n")[0]
    return data.decode("utf-8", errors="replace")


def _tail(path: Path, size: int = 1 << 16) -> str:
    """The whole lines of the last ``size`` bytes of ``path``: where the newest checkpoints are."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(0, end - size))
        data = f.read()
    if end > size:
        data = data.partition(b"\n")[2]
    return data.decode("utf-8", errors="replace")


class AuditAnchor:
    """Signs checkpoints of the log and keeps the cheap verdict of ``GET /api/v1/audit``.

    Without a key (a read-only hub beside the serving one, before the first start) it signs nothing
    and :meth:`checkpoint` returns None. Nor with a checkpoints file of another log (``foreign``, told
    at start and in every verdict): signing this log after another's would make the file say that
    the other one's rows were deleted, and a manifest would carry a checkpoint of no row of this log.
    """

    def __init__(self, sessions: sessionmaker[Session], key: bytes | None, checkpoints_file: Path,
                 clock: Callable[[], float], interval_s: float) -> None:
        self.sessions = sessions
        self.key = key
        self.file = checkpoints_file
        self.clock = clock
        self.interval_s = interval_s
        self.last: Checkpoint | None = None
        self.unsigned: Verdict | None = None  # why the last checkpoint could not be signed
        self._lock = threading.Lock()
        self._verdict_lock = threading.Lock()
        self._good: tuple[int, str] | None = None  # (seq, hash) of the newest row verified with all before it
        self._full_at = float("-inf")
        self.foreign: str | None = None  # why the checkpoints file is another log's (nothing is signed then)
        if key is not None and checkpoints_file.exists():
            good = [c for _, c in parse_checkpoints(_tail(checkpoints_file), str(checkpoints_file))
                    if isinstance(c, Checkpoint) and c.signed_by(key)]
            self.last = max(good, key=lambda c: (c.seq, c.at), default=None)
            first = [c for _, c in parse_checkpoints(_head(checkpoints_file), str(checkpoints_file))
                     if isinstance(c, Checkpoint) and c.seq > 0 and c.signed_by(key)]
            earliest = min(first, key=lambda c: (c.seq, c.at), default=None)
            if earliest is not None:
                at = _hashes_at(sessions, [earliest.seq]).get(earliest.seq)
                self.foreign = foreign_problem(earliest, head_seq(sessions), at, str(checkpoints_file))
            if self.foreign is not None:
                log.error("audit log not signed: %s", self.foreign)

    @classmethod
    def for_config(cls, cfg: HubConfig, sessions: sessionmaker[Session], clock: Callable[[], float],
                   read_only: bool) -> AuditAnchor:
        key_file, checkpoints = anchor_files(cfg)
        return cls(sessions, load_key(key_file, create=not read_only), checkpoints, clock,
                   cfg.audit.checkpoint_interval_s)

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the log as it stands if it grew since the last checkpoint, and return the newest
        checkpoint. Only rows that extend the last checkpoint's chain are signed: a log that no longer
        does is reported (logged, and in ``unsigned``) and left unsigned, so tampering is never blessed."""
        if self.key is None or self.foreign is not None:
            return None
        with self._lock:
            base = (self.last.seq, self.last.hash) if self.last else (0, GENESIS)
            v = verify(self.sessions, after=base)
            if not v.ok:
                if self.unsigned is None or self.unsigned.reason != v.reason:
                    log.error("audit log not signed: %s at row %s (checked from row %d of the last checkpoint)",
                              v.reason, v.first_bad_seq, base[0])
                self.unsigned = v
                return self.last.as_dict() if self.last else None
            self.unsigned = None
            if self.last is not None and (v.head_seq, v.head_hash) == base:
                return self.last.as_dict()
            cp = Checkpoint.sign(self.key, v.head_seq, v.head_hash, self.clock())
            line = json.dumps(cp.as_dict(), separators=(",", ":"))
            new = not self.file.exists()
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.file.parent)
            log.info("audit checkpoint %s", line)
            self.last = cp
            return cp.as_dict()

    def loop(self, stop: threading.Event) -> None:
        """Sign every ``audit.checkpoint_interval_s`` (the first at once) until ``stop``."""
        while True:
            try:
                self.checkpoint()
            except Exception:
                log.exception("audit checkpoint failed")
            if stop.wait(self.interval_s):
                return

    def verdict(self) -> Verdict:
        """The chain's verdict, cheaply: only rows added since the last call are read (and the newest
        row verified then must be unchanged); the whole chain again every :data:`FULL_VERIFY_S`. The
        newest checkpoint is checked too: rows deleted after it, or a chain rebuilt under it."""
        with self._verdict_lock:
            now = time.monotonic()
            v = None
            if self._good is not None and now - self._full_at < FULL_VERIFY_S:
                v = verify(self.sessions, after=self._good)
                if not v.ok and v.first_bad_seq == self._good[0]:
                    v = None  # an old row changed: walk it all to find the first bad one
            if v is None:
                v = verify(self.sessions)
                self._full_at = now
            self._good = (v.head_seq, v.head_hash) if v.ok else None
            if v.ok and self.foreign is not None:
                return Verdict(False, v.rows, None, self.foreign, v.head_seq, v.head_hash)
            cp = self.last
            if v.ok and cp is not None:
                problem = anchor_problem(cp, v.head_seq, _hashes_at(self.sessions, [cp.seq]).get(cp.seq))
                if problem is not None:
                    bad = min(cp.seq, v.head_seq + 1)
                    return Verdict(False, min(v.rows, bad - 1), bad, problem, v.head_seq, v.head_hash)
            return v


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
