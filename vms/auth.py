"""API tokens and roles. Tokens are ``vms_<id>_<secret>``; only SHA-256 of the secret is stored.

:func:`create` and :func:`revoke` are the bare store operations (the CLI's); :class:`TokenCache`, the
hub's ``tokens``, checks bearer tokens and issues, lists and revokes them for an admin, audited.
A token may expire (``expires_at``); its last use is kept in memory and written by the hub's tick
(:meth:`TokenCache.flush_used`), so a request never waits on the store for it.

:class:`MediaTokens` signs short-lived, device-scoped media tokens for the live media URLs, so a
person's long-lived token never ends up in a URL (browser history, proxy logs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
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


def gb_agent(device_id: str) -> str:
    """The agent name a device registering by GB/T 28181 acts under: it reports itself and its
    channels as an edge agent reports its cameras."""
    return f"gb:{device_id}"


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

    def holder(self, tid: str) -> Principal:
        """The principal of token ``tid`` while it is valid: a media token is worth no more than the token
        it was issued to, so revoking that token stops its media tokens too (within ``ttl_s``).
        Raises :class:`Unauthenticated`."""
        row = self._row(tid)
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("the token this media token was issued to is revoked")
        if row.expires_at is not None and self.clock() >= row.expires_at:
            raise Unauthenticated(f"token {row.name!r}, which this media token was issued to, expired at "
                                  f"{iso(row.expires_at)}")
        return Principal(row.id, row.name, Role(row.role), tuple(row.prefixes or ()))

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


# --------------------------------------------------------------------------- media tokens

#: The first part of a media token (``vmm.<payload>.<signature>``); a person's token starts ``vms_``.
MEDIA_PREFIX = "vmm"
#: The 401 of a person's own token in a media URL: it would end up in browser history and proxy logs.
USE_MEDIA_TOKEN = ("a bearer token is not accepted in the URL: use a media token "
                   "(POST /api/v1/live/{device_id}/media-token), or send the token in the Authorization header")


class MediaTokenError(Exception):
    """A media token refused; the message says why."""


class MediaTokenInvalid(MediaTokenError):
    """Malformed, forged, expired, or a person's token in its place (the API's 401)."""


class MediaTokenScope(MediaTokenError):
    """A valid media token for another device or stream (the API's 403)."""


@dataclass(frozen=True)
class MediaGrant:
    """What a verified media token allows: ``streams`` of ``device_id`` until ``expires_at``, for the
    holder of token ``token_id`` (named ``name``)."""

    device_id: str
    streams: tuple[str, ...]
    name: str
    token_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MediaTokens:
    """Signs and verifies media tokens: ``vmm.<payload>.<signature>``, the payload base64url JSON
    (device, streams, holder's name and token ID, expiry), the signature HMAC-SHA256 of
    ``vmm.<payload>`` under ``key``.

    The key is random per hub start unless given: nothing to keep secret on disk, and a restart costs
    a page one new token (its player fetches one when a request is refused). Expiry is ``ttl_s`` on
    ``clock`` (the hub's)."""

    def __init__(self, ttl_s: float, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s:g}")
        self.ttl_s = ttl_s
        self.clock = clock
        self._key = key if key is not None else secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{MEDIA_PREFIX}.{payload}".encode(), hashlib.sha256).digest())

    def issue(self, who: Principal, device_id: str, streams: Iterable[str], now: float | None = None) -> MediaGrant:
        """A grant for ``who`` to play ``streams`` of ``device_id`` for ``ttl_s`` from ``now``; its token
        is :meth:`encode` of it."""
        at = self.clock() if now is None else now
        s = tuple(dict.fromkeys(streams))
        if not s:
            raise ValueError("a media token needs at least one stream")
        return MediaGrant(device_id, s, who.name, who.token_id, round(at + self.ttl_s, 3))

    def encode(self, grant: MediaGrant) -> str:
        body = {"d": grant.device_id, "s": list(grant.streams), "u": grant.name, "t": grant.token_id,
                "e": grant.expires_at}
        payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{MEDIA_PREFIX}.{payload}.{self._sign(payload)}"

    def verify(self, token: str, device_id: str, stream: str, now: float | None = None) -> MediaGrant:
        """The grant of ``token`` if it allows ``stream`` of ``device_id`` now. Raises
        :class:`MediaTokenInvalid` (the signature is checked before anything in the payload is
        believed) or :class:`MediaTokenScope`."""
        if token.startswith("vms_"):
            raise MediaTokenInvalid(USE_MEDIA_TOKEN)
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != MEDIA_PREFIX or not parts[1] or not parts[2]:
            raise MediaTokenInvalid(f"malformed media token: expected {MEDIA_PREFIX}.<payload>.<signature>")
        if not hmac.compare_digest(parts[2], self._sign(parts[1])):
            raise MediaTokenInvalid("media token not signed by this hub (altered, or issued before the hub "
                                    "restarted): fetch a new one")
        try:
            body = json.loads(_unb64(parts[1]))
            grant = MediaGrant(str(body["d"]), tuple(str(x) for x in body["s"]), str(body["u"]), str(body["t"]),
                               float(body["e"]))
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:  # signed by this hub: a bug, not an attack
            raise MediaTokenInvalid(f"unreadable media token payload: {exc}") from None
        at = self.clock() if now is None else now
        if at >= grant.expires_at:
            raise MediaTokenInvalid(f"media token expired at {iso(grant.expires_at)}: fetch a new one")
        if grant.device_id != device_id:
            raise MediaTokenScope(f"this media token is for device {grant.device_id}, not {device_id}")
        if stream not in grant.streams:
            raise MediaTokenScope(f"this media token allows the {'/'.join(grant.streams)} stream of {device_id}, "
                                  f"not the {stream} stream")
        return grant
