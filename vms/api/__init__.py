"""The hub's HTTP API: one router per domain under /api/v1, all behind role checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vms.api import (
    admin,
    agents,
    alerts,
    archive,
    centers,
    devices,
    discovery,
    events,
    gb28181,
    live,
    quality,
    reports,
    sites,
    superiors,
    system,
    web,
)
from vms.api.deps import MISSING, bearer_token
from vms.api.status import error_status
from vms.auth import TokenCache, Unauthenticated
from vms.errors import Busy, DomainError
from vms.hub import Hub
from vms.metrics import registry_for

ROUTERS = (system.router, devices.router, centers.router, agents.router, alerts.router, reports.router, admin.router,
           events.router, gb28181.router, web.router, live.router, archive.router, quality.router, discovery.router,
           sites.router, superiors.router)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, limit: int, large: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.large = large or {}  # path prefix -> its own limit (media uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next((v for k, v in self.large.items() if scope["path"].startswith(k)), self.limit)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, limit)


class _TooLarge(Exception):
    pass


class AuthFirst:
    """A request with a body to ``/api/`` is answered 401 before its body is read when its bearer token
    is missing, unknown, revoked or expired: a caller without a valid token costs no parsing and learns
    nothing of what its input would have been (no 422). Each route still checks the roles it admits."""

    BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: ASGIApp, tokens: TokenCache) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.BODY_METHODS and scope["path"].startswith("/api/"):
            header = dict(scope.get("headers") or []).get(b"authorization")
            token = bearer_token(header.decode("latin-1") if header is not None else None)
            refused = MISSING if token is None else None
            if token is not None:
                try:
                    await asyncio.to_thread(self.tokens.authenticate, token)  # a cache miss reads the store
                except Unauthenticated as exc:
                    refused = str(exc)
            if refused is not None:
                await _send_json(send, 401, {"detail": refused}, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


#: What a client needs to fix a request. ``input`` and ``ctx`` are left out: they repeat the values
#: sent (a stream URI with its password, a token in a query) and error bodies end up in logs.
ERROR_KEYS = ("type", "loc", "msg")


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field and why, never echoing what was sent."""
    return JSONResponse({"detail": [{k: e[k] for k in ERROR_KEYS if k in e} for e in exc.errors()]}, status_code=422)


async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
    """A refusal from a service (vms/errors.py), answered with its kind's status."""
    assert isinstance(exc, DomainError)
    headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, Busy) else None
    return JSONResponse({"detail": str(exc)}, status_code=error_status(exc), headers=headers)


def create_app(hub: Hub, run_threads: bool = True, extra_routers: tuple[Any, ...] = ()) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_threads:
            hub.start()
        try:
            yield
        finally:
            if run_threads:
                hub.stop()

    app = FastAPI(
        title="VMS monitoring center",
        version="1",
        lifespan=lifespan,
        description="Three-level video monitoring center hub (GB/T 28181 device IDs).",
        exception_handlers={RequestValidationError: validation_error, DomainError: domain_error},
    )
    app.state.hub = hub
    app.state.registry = registry_for(hub)
    for r in (*ROUTERS, *extra_routers):
        app.include_router(r)
    web.install(app)
    app.add_middleware(
        BodyLimit,
        limit=hub.cfg.server.max_body_bytes,
        large={agents.SEGMENTS_PREFIX: hub.cfg.archive.max_segment_bytes},
    )
    app.add_middleware(AuthFirst, tokens=hub.tokens)  # outermost: no body is read for a refused token
    return app
