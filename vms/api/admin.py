"""Administration: tokens and the audit log. The rules live in ``vms/auth.py`` (``hub.tokens``) and
``vms/audit.py``; a refusal (``BadToken`` 422, ``UnknownToken`` 404) is answered by the one handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from vms import audit
from vms.api.deps import get_hub, require
from vms.auth import Principal, Role
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1", tags=["admin"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    name: str | None = Field(None, min_length=1, max_length=100)
    prefixes: list[str] = Field(default_factory=list, max_length=100)


class TokenCreated(BaseModel):
    token: str = Field(description="The secret: shown in this response only")
    name: str
    role: Role
    prefixes: list[str]


class TokenOut(BaseModel):
    id: str
    name: str
    role: Role
    prefixes: list[str]
    created_at: str
    revoked_at: str | None


class TokenList(BaseModel):
    tokens: list[TokenOut]


class Revoked(BaseModel):
    revoked: str = Field(description="The revoked token's name")


class AuditEntryOut(BaseModel):
    seq: int
    at: float
    actor: str
    role: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditOut(BaseModel):
    verified: bool = Field(description="The whole hash chain checks out")
    rows: int = Field(description="Rows verified before the first bad one (all of them when verified)")
    first_bad_seq: int | None
    reason: str
    entries: list[AuditEntryOut] = Field(description="The newest 1000 entries, oldest first")


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(
    body: TokenIn, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))
) -> TokenCreated:
    """Create a token; its secret is in this response only."""
    token, p = hub.tokens.issue(who, body.role.value, body.name, body.prefixes, at=hub.clock())
    return TokenCreated(token=token, name=p.name, role=p.role, prefixes=list(p.prefixes))


@router.get("/tokens", response_model=TokenList)
def list_tokens(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> TokenList:
    return TokenList(
        tokens=[
            TokenOut(id=r.id, name=r.name, role=Role(r.role), prefixes=r.prefixes, created_at=iso(r.created_at) or "",
                     revoked_at=iso(r.revoked_at))
            for r in hub.tokens.listing()
        ]
    )


@router.delete("/tokens/{name}", response_model=Revoked)
def revoke_token(name: str, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))) -> Revoked:
    return Revoked(revoked=hub.tokens.withdraw(who, name, at=hub.clock()).name)


@router.get("/audit", response_model=AuditOut)
def read_audit(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> AuditOut:
    verdict = audit.verify(hub.sessions)
    return AuditOut(
        verified=verdict.ok,
        rows=verdict.rows,
        first_bad_seq=verdict.first_bad_seq,
        reason=verdict.reason,
        entries=[AuditEntryOut.model_validate(e) for e in audit.export(hub.sessions, last=1000)],
    )
