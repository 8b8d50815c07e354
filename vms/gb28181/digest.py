"""HTTP digest authentication for SIP: RFC 2617 (MD5) and RFC 7616 (SHA-256), qop=auth. Pure.

Nonces are self-validating (issue time plus an HMAC), so answering a REGISTER flood costs no
memory; only nonces actually used are tracked, to refuse replays, in a bounded table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

_SNIP = 80
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_PARAM = re.compile(
    r"\s*([A-Za-z0-9.!%*_+`'~-]+)\s*=\s*"  # name
    r'(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9.!%*_+`\'~/:@-]+))'  # quoted string or token
    r"\s*(,|$)",
    re.DOTALL,
)
_NC = re.compile(r"[0-9A-Fa-f]{8}")
#: What a client's Authorization must carry, with and without qop.
REQUIRED = ("username", "realm", "nonce", "uri", "response")

CheckResult = Literal["ok", "stale", "invalid", "replay"]


class DigestError(ValueError):
    """A malformed Digest header; str() quotes at most 80 characters of it."""


def _snip(text: str) -> str:
    return repr(text[:_SNIP]) + ("…" if len(text) > _SNIP else "")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Challenge:
    """What a server asks for in WWW-Authenticate (qop None: an RFC 2069 server without qop)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    stale: bool = False
    qop: str | None = "auth"
    opaque: str | None = None

    def header(self) -> str:
        """The WWW-Authenticate value: ``Digest realm="…", nonce="…", algorithm=MD5, qop="auth"``."""
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}", f"algorithm={self.algorithm}"]
        if self.qop:
            parts.append(f"qop={_quote(self.qop)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


def _parse_params(value: str) -> dict[str, str]:
    scheme, *tail = re.split(r"\s+", value.strip(), maxsplit=1)
    rest = tail[0] if tail else ""
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest header: {_snip(value)}")
    out: dict[str, str] = {}
    pos, rest = 0, rest.strip()
    if not rest:
        raise DigestError("Digest header without parameters")
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise DigestError(f"malformed parameter at {_snip(rest[pos:])}")
        name = m.group(1).lower()
        if name in out:
            raise DigestError(f"parameter {name!r} given twice")
        quoted, token = m.group(2), m.group(3)
        out[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        pos = m.end()
        if m.group(4) == "," and pos >= len(rest):
            raise DigestError(f"trailing comma in {_snip(value)}")
    return out


def parse_authorization(value: str) -> dict[str, str]:
    """An Authorization value into lowercased keys; DigestError if malformed or incomplete."""
    params = _parse_params(value)
    missing = [k for k in REQUIRED if k not in params]
    if missing:
        raise DigestError(f"Authorization lacks {', '.join(missing)}")
    if "qop" in params:
        if "nc" not in params or "cnonce" not in params:
            raise DigestError("Authorization with qop lacks nc or cnonce")
        if not _NC.fullmatch(params["nc"]):
            raise DigestError(f"nc must be 8 hex digits: {_snip(params['nc'])}")
    return params


def parse_challenge(value: str) -> Challenge:
    """A WWW-Authenticate value (for the cascade client); picks qop=auth when offered."""
    params = _parse_params(value)
    if "realm" not in params or "nonce" not in params:
        raise DigestError(f"challenge lacks realm or nonce: {_snip(value)}")
    offered = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    if offered and "auth" not in offered:
        raise DigestError(f"challenge offers no qop=auth: {_snip(params['qop'])}")
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5").upper(),
        stale=params.get("stale", "").lower() == "true",
        qop="auth" if offered else None,
        opaque=params.get("opaque"),
    )


def _response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
) -> str | None:
    """The expected ``response`` value, or None for an algorithm or qop we do not support."""
    h = _HASHES.get(algorithm.upper())
    if h is None:
        return None

    def H(text: str) -> str:
        return h(text.encode("utf-8")).hexdigest()

    ha1 = H(f"{username}:{realm}:{password}")
    ha2 = H(f"{method}:{uri}")
    if qop is None:
        return H(f"{ha1}:{nonce}:{ha2}")
    if qop.lower() != "auth" or nc is None or cnonce is None:
        return None
    return H(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop.lower()}:{ha2}")


def verify(auth: dict[str, str], method: str, password: str) -> bool:
    """Whether ``auth`` (from :func:`parse_authorization`) answers for ``password``.

    MD5 and SHA-256, with or without qop=auth; anything else (-sess, auth-int, userhash) is False.
    The caller still checks that realm, nonce and uri are the ones it expects.
    """
    if auth.get("userhash", "false").lower() == "true" or any(k not in auth for k in REQUIRED):
        return False
    expected = _response(
        auth.get("algorithm", "MD5"),
        auth["username"],
        auth["realm"],
        password,
        method,
        auth["uri"],
        auth["nonce"],
        auth.get("qop"),
        auth.get("nc"),
        auth.get("cnonce"),
    )
    if expected is None:
        return False
    return hmac.compare_digest(expected.encode(), auth["response"].lower().encode("utf-8", "replace"))


def client_authorization(
    challenge: Challenge, method: str, uri: str, username: str, password: str, cnonce: str, nc: int
) -> str:
    """The Authorization value answering ``challenge`` (qop=auth when the challenge offers it)."""
    nc_hex = f"{nc:08x}"
    qop = challenge.qop
    response = _response(
        challenge.algorithm,
        username,
        challenge.realm,
        password,
        method,
        uri,
        challenge.nonce,
        qop,
        nc_hex if qop else None,
        cnonce if qop else None,
    )
    if response is None:
        raise DigestError(f"unsupported algorithm {challenge.algorithm!r} or qop {qop!r}")
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop:
        parts += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc_hex}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


_STAMP = struct.Struct(">Q")  # issue time in milliseconds
_RAND = 8
_MAC = 16
_USED_WITHOUT_QOP = 1 << 32  # above any nc: no later use of that nonce passes


class Nonces:
    """Issues nonces that carry their own time and an HMAC, so issuing keeps no state, and checks them.

    A bad MAC is "invalid"; older than ``ttl_s`` is "stale" (answer with a new challenge,
    stale=true). Replays: with qop=auth the nonce-count must grow per nonce; without qop a nonce
    is good once. Used nonces sit in a table of ``max_tracked``; when one is evicted, every
    untracked nonce issued up to its time counts as stale, so eviction never lets a replay in.
    Call :meth:`check` only after :func:`verify` succeeded: it records the count.
    """

    def __init__(self, key: bytes, ttl_s: float = 300.0, max_tracked: int = 100_000) -> None:
        if len(key) < 16:
            raise ValueError("nonce key must have at least 16 bytes")
        if max_tracked < 1 or ttl_s <= 0:
            raise ValueError("ttl_s and max_tracked must be positive")
        self._key = key
        self._ttl_ms = int(ttl_s * 1000)
        self._max = max_tracked
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._floor_ms = -1  # newest issue time among evicted nonces

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC]

    def issue(self, now: float) -> str:
        body = _STAMP.pack(int(now * 1000)) + secrets.token_bytes(_RAND)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode("ascii")

    def check(self, nonce: str, nc: str | None, now: float) -> CheckResult:
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return "invalid"
        if len(raw) != _STAMP.size + _RAND + _MAC:
            return "invalid"
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return "invalid"
        issued_ms = _STAMP.unpack(body[: _STAMP.size])[0]
        now_ms = int(now * 1000)
        if issued_ms > now_ms + 5_000:  # from the future: not a clock we issued with
            return "invalid"
        if now_ms - issued_ms > self._ttl_ms:
            return "stale"
        count = _USED_WITHOUT_QOP
        if nc is not None:
            if not _NC.fullmatch(nc) or int(nc, 16) == 0:
                return "invalid"
            count = int(nc, 16)
        last = self._seen.get(body)
        if last is None and issued_ms <= self._floor_ms:
            return "stale"
        if last is not None and (nc is None or count <= last):
            return "replay"
        self._seen[body] = count
        self._seen.move_to_end(body)
        while len(self._seen) > self._max:
            old, _ = self._seen.popitem(last=False)
            self._floor_ms = max(self._floor_ms, _STAMP.unpack(old[: _STAMP.size])[0])
        return "ok"
