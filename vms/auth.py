"""API tokens and roles. Tokens are ``vms_<id>_<secret>``; only SHA-256 of the secret is stored."""

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

from vms.db.models import Token
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


class TokenError(ValueError):
    pass


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    sessions: sessionmaker[Session], role: str, name: str | None = None, prefixes: list[str] | None = None
) -> tuple[str, Principal]:
    """Create a token and return its plaintext (shown once) with its principal."""
    try:
        r = Role(role)
    except ValueError:
        raise TokenError(f"unknown role {role!r}; choose one of: {', '.join(x.value for x in Role)}") from None
    pfx = [ids.check_prefix(p) for p in (prefixes or [])]
    if r is Role.agent and not pfx:
        raise TokenError("an agent token needs at least one --prefix (the IDs it may speak for)")
    if r is not Role.agent and pfx:
        raise TokenError("--prefix applies to agent tokens only")
    tid = secrets.token_hex(8)
    secret = secrets.token_urlsafe(24)
    nm = name or f"{r.value}-{tid[:6]}"
    with sessions() as s:
        if s.scalars(select(Token).where(Token.name == nm)).first():
            raise TokenError(f"a token named {nm!r} exists already")
        s.add(Token(id=tid, name=nm, role=r.value, prefixes=pfx, secret_hash=_hash(secret), created_at=time.time()))
        s.commit()
    return f"vms_{tid}_{secret}", Principal(tid, nm, r, tuple(pfx))


class TokenCache:
    """Checks bearer tokens without a database read per request (agents send many)."""

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


def revoke(sessions: sessionmaker[Session], name_or_id: str) -> Token:
    with sessions() as s:
        row = s.get(Token, name_or_id) or s.scalars(select(Token).where(Token.name == name_or_id)).first()
        if row is None:
            raise TokenError(f"no token named {name_or_id!r}")
        row.revoked_at = time.time()
        s.commit()
        return row
