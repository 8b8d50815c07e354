"""Route dependencies: the hub, and the caller's role. Every route names the roles it admits."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from vms.auth import Principal, Role, Unauthenticated
from vms.hub import Hub
from vms.kernel.protocol import DEVICE_ID_PATTERN

bearer = HTTPBearer(auto_error=False, description="Token from `vms token create --role ...`")


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


#: The 401 of a request without a bearer token.
MISSING = "missing bearer token"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def require(*roles: Role) -> Callable[..., Principal]:
    """A dependency admitting only ``roles``; anything else is 401 (no, bad or expired token) or 403."""
    allowed = frozenset(roles)

    def dep(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        if creds is None or creds.scheme.lower() != "bearer":
            raise unauthorized(MISSING)
        try:
            who = get_hub(request).tokens.authenticate(creds.credentials)
        except Unauthenticated as exc:
            raise unauthorized(str(exc)) from None
        if who.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role {who.role.value!r} may not do this; needs one of {sorted(r.value for r in allowed)}",
            )
        request.state.principal = who
        return who

    dep.roles = allowed  # type: ignore[attr-defined]
    return dep


class Comment(BaseModel):
    """The body of an action a person takes with a word of why (acknowledge, resolve, release)."""

    model_config = ConfigDict(extra="forbid")
    comment: str = Field("", max_length=2000)

#: The ``{device_id}`` path parameter of every route that names a device.
DeviceIdPath = Path(pattern=DEVICE_ID_PATTERN, description="20-digit GB/T 28181 device ID")
