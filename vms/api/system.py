"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from vms.api.deps import bearer, get_hub
from vms.auth import Role
from vms.metrics import render

router = APIRouter(tags=["system"])

PUBLIC_PATHS = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@router.get("/healthz")
def healthz(request: Request) -> dict[str, object]:
    """Liveness for load balancers and compose health checks; reveals no data."""
    hub = get_hub(request)
    return {"status": "ok", "ticks": hub.monitor.ticks}


@router.get("/metrics", response_class=Response)
def metrics(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
    """Prometheus exposition. Needs a token (any human role) unless ``metrics.public`` is set."""
    hub = get_hub(request)
    if not hub.cfg.metrics.public:
        who = hub.tokens.check(creds.credentials) if creds else None
        if who is None:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        if who.role is Role.agent:
            raise HTTPException(403, "agent tokens may not read metrics")
    return Response(render(request.app.state.registry), media_type="text/plain; version=0.0.4")
