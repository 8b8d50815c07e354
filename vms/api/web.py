"""The web pages (wall, alerts, camera, reports), served by the hub itself.

The pages are static files under ``vms/web`` (plain ES modules and CSS, no build step). They hold
no data: every figure comes from the API with the user's bearer token, so the files are public
like ``/docs`` and are mounted on the app by :func:`install` rather than listed in ``ROUTERS``
(which holds only role-checked routes). ``GET /api/v1/session`` tells a page whose token it holds.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from vms.api.deps import require
from vms.auth import READERS, Principal, Role

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
WEB_PREFIX = "/web"

#: Which views each role may open; the API enforces the same rules on every call.
VIEWS: dict[Role, list[str]] = {
    Role.duty: ["wall", "map", "camera", "reports"],
    Role.maintenance: ["wall", "alerts", "map", "camera", "reports"],
    Role.police: ["wall", "map", "camera", "clip"],
    Role.admin: ["wall", "alerts", "map", "camera", "clip", "reports", "discovered"],
}

router = APIRouter(prefix="/api/v1", tags=["web"])


class SessionOut(BaseModel):
    name: str = Field(description="The token's name")
    role: Role
    views: list[str] = Field(description="The pages this role may open")


@router.get("/session", response_model=SessionOut)
def session(who: Principal = Depends(require(*READERS))) -> SessionOut:
    """The caller's name, role and the views the pages offer it."""
    return SessionOut(name=who.name, role=who.role, views=VIEWS[who.role])


def install(app: FastAPI) -> None:
    """Mount the static pages at ``/web/`` and send ``/`` there."""
    app.mount(WEB_PREFIX, StaticFiles(directory=WEB_DIR, html=True), name="web")

    @app.get("/", include_in_schema=False, response_class=RedirectResponse)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{WEB_PREFIX}/", status_code=307)
