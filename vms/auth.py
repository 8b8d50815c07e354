"""API tokens and roles. Tokens are ``vms_<id>_<secret>``; only SHA-256 of the secret is stored.

:func:`create` and :func:`revoke` are the bare store operations (the CLI's); :class:`TokenCache`, the
hub's ``tokens``, checks bearer tokens and issues, lists and revokes them for an admin, audited.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms import audit
from vms.db.models import Token
from vms.errors import DomainError, Invalid, NotFound
from vms.kernel import ids


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


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    sessions: sessionmaker[Session], role: str, name: str | None = None, prefixes: list[str] | None = None
) -> tuple[str, Principal]:
    """Create a token and return its plaintext (shown once) with its principal."""
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
    with sessions() as s:
        if s.scalars(select(Token).where(Token.name == nm)).first():
            raise BadToken(f"a token named {nm!r} exists already")
        s.add(Token(id=tid, name=nm, role=r.value, prefixes=pfx, secret_hash=_hash(secret), created_at=time.time()))
        s.commit()
    return f"vms_{tid}_{secret}", Principal(tid, nm, r, tuple(pfx))


class TokenCache:
    """Checks bearer tokens without a database read per request (agents send many); issues, lists and
    revokes tokens for a person, each change audited."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = 5.0) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Token | None]] = {}

    def _row(self, tid: str) -> Token | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tid)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        with self.sessions() as s:
            row = s.get(Token, tid)
        with self._lock:
            self._cache[tid] = (now, row)
        return row

    def check(self, token: str) -> Principal | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "vms" or not parts[1] or len(parts[1]) > 32:
            return None
        row = self._row(parts[1])
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
            return None
        return Principal(row.id, row.name, Role(row.role), tuple(row.prefixes or ()))

    def forget(self, tid: str) -> None:
        with self._lock:
            self._cache.pop(tid, None)

    def issue(self, who: Principal, role: str, name: str | None, prefixes: list[str],
              at: float) -> tuple[str, Principal]:
        """``who`` creates a token (audited); raises :class:`BadToken`. The plaintext is returned once."""
        token, p = create(self.sessions, role, name, prefixes)
        audit.record(self.sessions, who, at=at, action="token.create", target=p.name,
                     detail={"role": p.role.value, "prefixes": list(p.prefixes)})
        return token, p

    def withdraw(self, who: Principal, name_or_id: str, at: float) -> Token:
        """``who`` revokes a token (audited); it stops working at once. Raises :class:`UnknownToken`."""
        row = revoke(self.sessions, name_or_id)
        self.forget(row.id)
        audit.record(self.sessions, who, at=at, action="token.revoke", target=row.name, detail={})
        return row

    def listing(self) -> list[Token]:
        """Every token, oldest first (hashes included: callers show what they choose)."""
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
