"""Liveness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from vms.api.deps import bearer, get_hub
from vms.auth import Role
from vms.metrics import render

router = APIRouter(tags=["system"])

PUBLIC_PATHS = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class Liveness(BaseModel):
    status: Literal["ok"]
    ticks: int = Field(description="Health ticks since the hub started")


class PrometheusText(PlainTextResponse):
    """The Prometheus text exposition format, version 0.0.4."""

    media_type = "text/plain; version=0.0.4"


@router.get("/healthz", response_model=Liveness)
def healthz(request: Request) -> Liveness:
    """Liveness for load balancers and compose health checks; reveals no data."""
    hub = get_hub(request)
    return Liveness(status="ok", ticks=hub.monitor.ticks)


@router.get(
    "/metrics",
    response_class=PrometheusText,
    responses={
        200: {
            "description": "Prometheus metrics",
            "content": {PrometheusText.media_type: {"schema": {"type": "string"}}},
        },
        401: {"description": "no or invalid bearer token (unless metrics.public)"},
        403: {"description": "an agent token"},
    },
)
def metrics(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> PrometheusText:
    """Prometheus exposition. Needs a token (any human role) unless ``metrics.public`` is set."""
    hub = get_hub(request)
    if not hub.cfg.metrics.public:
        who = hub.tokens.check(creds.credentials) if creds else None
        if who is None:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        if who.role is Role.agent:
            raise HTTPException(403, "agent tokens may not read metrics")
    return PrometheusText(render(request.app.state.registry))
