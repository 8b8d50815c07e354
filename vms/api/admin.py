"""Administration: tokens and the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vms import audit, auth
from vms.api.deps import get_hub, require
from vms.auth import Principal, Role
from vms.db.models import Token
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1", tags=["admin"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    name: str | None = Field(None, min_length=1, max_length=100)
    prefixes: list[str] = Field(default_factory=list, max_length=100)


@router.post("/tokens", status_code=201)
def create_token(
    body: TokenIn, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Create a token; its secret is in this response only."""
    try:
        token, p = auth.create(hub.sessions, body.role.value, body.name, body.prefixes)
    except (auth.TokenError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    audit.record(
        hub.sessions,
        who,
        at=hub.clock(),
        action="token.create",
        target=p.name,
        detail={"role": p.role.value, "prefixes": list(p.prefixes)},
    )
    return {"token": token, "name": p.name, "role": p.role.value, "prefixes": list(p.prefixes)}


@router.get("/tokens")
def list_tokens(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    with hub.sessions() as s:
        rows = s.scalars(select(Token).order_by(Token.created_at)).all()
    return {
        "tokens": [
            {
                "id": r.id,
                "name": r.name,
                "role": r.role,
                "prefixes": r.prefixes,
                "created_at": iso(r.created_at),
                "revoked_at": iso(r.revoked_at),
            }
            for r in rows
        ]
    }


@router.delete("/tokens/{name}")
def revoke_token(
    name: str, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    try:
        row = auth.revoke(hub.sessions, name)
    except auth.TokenError as exc:
        raise HTTPException(404, str(exc)) from None
    hub.tokens.forget(row.id)
    audit.record(
        hub.sessions,
        who,
        at=hub.clock(),
        action="token.revoke",
        target=row.name,
        detail={},
    )
    return {"revoked": row.name}


@router.get("/audit")
def read_audit(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    verdict = audit.verify(hub.sessions)
    return {
        "verified": verdict.ok,
        "rows": verdict.rows,
        "first_bad_seq": verdict.first_bad_seq,
        "reason": verdict.reason,
        "entries": audit.export(hub.sessions)[-1000:],
    }
