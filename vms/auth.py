"""API tokens and roles. Tokens are ``vms_<id>_<secret>``; only SHA-256 of the secret is stored.

:func:`create` and :func:`revoke` are the bare store operations (the CLI's); :class:`TokenCache`, the
hub's ``tokens``, checks bearer tokens and issues, lists and revokes them for an admin, audited.
A token may expire (``expires_at``); its last use is kept in memory and written by the hub's tick
(:meth:`TokenCache.flush_used`), so a request never waits on the store for it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from vms import audit
from vms.db.models import Token
from vms.errors import DomainError, Invalid, NotFound
from vms.kernel import ids
from vms.kernel.timeutil import iso

log = logging.getLogger(__name__)

#: Token rows kept in memory at most, least recently used dropped first. Unknown IDs are never
#: kept, so made-up tokens cannot grow the cache; each costs one primary-key read.
MAX_CACHED_TOKENS = 10_000
#: A token's last use is written at most this often (by the tick), so it is this stale at worst.
LAST_USED_EVERY_S = 60.0
#: The longest expiry a token can be given.
MAX_EXPIRES_DAYS = 3650


class Role(StrEnum):
    duty = "duty"
    maintenance = "maintenance"
    police = "police"
    admin = "admin"
    agent = "agent"


#: People who may read the center's state.
READERS = (Role.duty, Role.maintenance, Role.police, Role.admin)


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: Role
    prefixes: tuple[str, ...]


class TokenError(DomainError, ValueError):
    """A token operation refused; one of the kinds below."""


class BadToken(TokenError, Invalid):
    """A token that cannot be created as asked: unknown role, bad or misplaced prefixes, name taken (HTTP 422)."""


class UnknownToken(TokenError, NotFound):
    """No token with that name or ID (HTTP 404)."""


class Unauthenticated(Exception):
    """A bearer token that is not accepted; the message says why (the API's 401)."""


#: The 401 for a token that is malformed, unknown, revoked or has the wrong secret: one message for all,
#: so a caller cannot tell an existing token ID from a made-up one.
INVALID = "invalid or revoked token"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    sessions: sessionmaker[Session], role: str, name: str | None = None, prefixes: list[str] | None = None,
    expires_days: float | None = None, now: float | None = None,
) -> tuple[str, Principal]:
    """Create a token and return its plaintext (shown once) with its principal; with ``expires_days``
    it is refused from ``now`` (default: the wall clock) plus that many days."""
    if expires_days is not None and not 0 < expires_days <= MAX_EXPIRES_DAYS:
        raise BadToken(f"expires_days must be more than 0 and at most {MAX_EXPIRES_DAYS}, got {expires_days:g}")
    try:
        r = Role(role)
    except ValueError:
        raise BadToken(f"unknown role {role!r}; choose one of: {', '.join(x.value for x in Role)}") from None
    try:
        pfx = [ids.check_prefix(p) for p in (prefixes or [])]
    except ids.InvalidDeviceId as exc:
        raise BadToken(str(exc)) from None
    if r is Role.agent and not pfx:
        raise BadToken("an agent token needs at least one --prefix (the IDs it may speak for)")
    if r is not Role.agent and pfx:
        raise BadToken("--prefix applies to agent tokens only")
    tid = secrets.token_hex(8)
    secret = secrets.token_urlsafe(24)
    nm = name or f"{r.value}-{tid[:6]}"
    at = time.time() if now is None else now
    expires_at = None if expires_days is None else at + expires_days * 86400.0
    with sessions() as s:
        if s.scalars(select(Token).where(Token.name == nm)).first():
            raise BadToken(f"a token named {nm!r} exists already")
        s.add(Token(id=tid, name=nm, role=r.value, prefixes=pfx, secret_hash=_hash(secret), created_at=at,
                    expires_at=expires_at))
        s.commit()
    return f"vms_{tid}_{secret}", Principal(tid, nm, r, tuple(pfx))


class TokenCache:
    """Checks bearer tokens without a database read per request (agents send many); issues, lists and
    revokes tokens for a person, each change audited.

    Rows are cached for ``ttl_s`` (a revocation elsewhere, e.g. by the CLI, takes effect within it),
    at most ``max_entries`` of them; a token ID with no row is never cached."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.time, ttl_s: float = 5.0,
                 max_entries: int = MAX_CACHED_TOKENS) -> None:
        self.sessions = sessions
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, Token]] = OrderedDict()
        self._used: dict[str, float] = {}  # token ID -> its newest use not yet written
        self._flushed = time.monotonic()

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def _row(self, tid: str) -> Token | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tid)
            if hit and now - hit[0] < self.ttl_s:
                self._cache.move_to_end(tid)
                return hit[1]
        with self.sessions() as s:
            row = s.get(Token, tid)
        with self._lock:
            if row is None:
                self._cache.pop(tid, None)
                return None
            self._cache[tid] = (now, row)
            self._cache.move_to_end(tid)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return row

    def authenticate(self, token: str) -> Principal:
        """The token's principal, its use noted; raises :class:`Unauthenticated` saying why not."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "vms" or not parts[1] or len(parts[1]) > 32:
            raise Unauthenticated(INVALID)
        row = self._row(parts[1])
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
            raise Unauthenticated(INVALID)
        now = self.clock()
        if row.expires_at is not None and now >= row.expires_at:
            raise Unauthenticated(f"token {row.name!r} expired at {iso(row.expires_at)}; ask an admin for a new one")
        with self._lock:
            self._used[row.id] = now
        return Principal(row.id, row.name, Role(row.role), tuple(row.prefixes or ()))

    def check(self, token: str) -> Principal | None:
        """The token's principal, or None if it is not accepted (see :meth:`authenticate` for why)."""
        try:
            return self.authenticate(token)
        except Unauthenticated:
            return None

    def flush_used(self, force: bool = False) -> int:
        """Write the last uses noted since the previous write, at most every ``LAST_USED_EVERY_S``
        unless ``force``; the number of tokens written. Kept for the next call if the store fails."""
        with self._lock:
            if not self._used or (not force and time.monotonic() - self._flushed < LAST_USED_EVERY_S):
                return 0
            used, self._used = self._used, {}
            self._flushed = time.monotonic()
        try:
            with self.sessions() as s:
                s.execute(update(Token), [{"id": tid, "last_used_at": at} for tid, at in used.items()])
                s.commit()
        except SQLAlchemyError as exc:
            log.warning("cannot write the tokens' last use (kept for the next try): %s", exc)
            with self._lock:
                for tid, at in used.items():
                    self._used[tid] = max(at, self._used.get(tid, at))
            return 0
        return len(used)

    def forget(self, tid: str) -> None:
        with self._lock:
            self._cache.pop(tid, None)

    def issue(self, who: Principal, role: str, name: str | None, prefixes: list[str],
              at: float, expires_days: float | None = None) -> tuple[str, Principal]:
        """``who`` creates a token (audited); raises :class:`BadToken`. The plaintext is returned once."""
        token, p = create(self.sessions, role, name, prefixes, expires_days, now=at)
        audit.record(self.sessions, who, at=at, action="token.create", target=p.name,
                     detail={"role": p.role.value, "prefixes": list(p.prefixes), "expires_days": expires_days})
        return token, p

    def withdraw(self, who: Principal, name_or_id: str, at: float) -> Token:
        """``who`` revokes a token (audited); it stops working at once. Raises :class:`UnknownToken`."""
        row = revoke(self.sessions, name_or_id)
        self.forget(row.id)
        audit.record(self.sessions, who, at=at, action="token.revoke", target=row.name, detail={})
        return row

    def listing(self) -> list[Token]:
        """Every token, oldest first, last uses up to now (hashes included: callers show what they choose)."""
        self.flush_used(force=True)
        with self.sessions() as s:
            return list(s.scalars(select(Token).order_by(Token.created_at)))


def revoke(sessions: sessionmaker[Session], name_or_id: str) -> Token:
    with sessions() as s:
        row = s.get(Token, name_or_id) or s.scalars(select(Token).where(Token.name == name_or_id)).first()
        if row is None:
            raise UnknownToken(f"no token named {name_or_id!r}")
        row.revoked_at = time.time()
        s.commit()
        return row
