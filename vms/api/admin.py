"""Administration: tokens and the audit log. The rules live in ``vms/auth.py`` (``hub.tokens``) and
``vms/audit.py``; a refusal (``BadToken`` 422, ``UnknownToken`` 404) is answered by the one handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from vms import audit
from vms.api.deps import get_hub, require
from vms.auth import MAX_EXPIRES_DAYS, Principal, Role
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1", tags=["admin"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    name: str | None = Field(None, min_length=1, max_length=100)
    prefixes: list[str] = Field(default_factory=list, max_length=100)
    expires_days: float | None = Field(None, gt=0, le=MAX_EXPIRES_DAYS, description="Refused after this many "
                                       "days (401 saying so); none: until revoked")


class TokenCreated(BaseModel):
    token: str = Field(description="The secret: shown in this response only")
    name: str
    role: Role
    prefixes: list[str]
    expires_at: str | None


class TokenOut(BaseModel):
    id: str
    name: str
    role: Role
    prefixes: list[str]
    created_at: str
    revoked_at: str | None
    expires_at: str | None
    last_used_at: str | None = Field(description="Up to a minute behind the newest use")


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
    verified: bool | None = Field(description="The whole hash chain checks out (None: not checked, verify=false)")
    rows: int = Field(description="Rows verified before the first bad one (all of them when verified)")
    first_bad_seq: int | None
    reason: str
    entries: list[AuditEntryOut] = Field(description="At most `limit` entries before `before`, oldest first")
    next_before: int | None = Field(description="`before` for the page of older entries (None: no older ones)")


#: Entries in one page of ``GET /audit`` at most.
AUDIT_PAGE_MAX = 1000


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(
    body: TokenIn, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))
) -> TokenCreated:
    """Create a token; its secret is in this response only."""
    token, p = hub.tokens.issue(who, body.role.value, body.name, body.prefixes, at=hub.clock(),
                                expires_days=body.expires_days)
    expires = None if body.expires_days is None else iso(hub.clock() + body.expires_days * 86400.0)
    return TokenCreated(token=token, name=p.name, role=p.role, prefixes=list(p.prefixes), expires_at=expires)


@router.get("/tokens", response_model=TokenList)
def list_tokens(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> TokenList:
    return TokenList(
        tokens=[
            TokenOut(id=r.id, name=r.name, role=Role(r.role), prefixes=r.prefixes, created_at=iso(r.created_at) or "",
                     revoked_at=iso(r.revoked_at), expires_at=iso(r.expires_at), last_used_at=iso(r.last_used_at))
            for r in hub.tokens.listing()
        ]
    )


@router.delete("/tokens/{name}", response_model=Revoked)
def revoke_token(name: str, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))) -> Revoked:
    return Revoked(revoked=hub.tokens.withdraw(who, name, at=hub.clock()).name)


@router.get("/audit", response_model=AuditOut)
def read_audit(
    limit: int = Query(200, ge=1, le=AUDIT_PAGE_MAX, description="Entries in this page"),
    before: int | None = Query(None, ge=1, le=2**62, description="Only entries with a smaller seq (the "
                               "previous page's next_before); none: the newest"),
    verify: bool = Query(True, description="The hash chain's verdict, against the newest signed checkpoint too "
                         "(cheap: only rows added since the last call are read)"),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(Role.admin)),
) -> AuditOut:
    """A page of the audit log, newest first by page (oldest first within it), and the chain's verdict."""
    verdict = hub.audit_anchor.verdict() if verify else None
    entries = audit.export(hub.sessions, last=limit, before=before)
    older = bool(entries) and entries[0]["seq"] > 1
    return AuditOut(
        verified=verdict.ok if verdict else None,
        rows=verdict.rows if verdict else 0,
        first_bad_seq=verdict.first_bad_seq if verdict else None,
        reason=verdict.reason if verdict else "",
        entries=[AuditEntryOut.model_validate(e) for e in entries],
        next_before=entries[0]["seq"] if older else None,
    )
