"""The center tree with live counts and ratios against each center's targets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from vms.api.deps import get_hub, require
from vms.auth import READERS, Principal
from vms.centers import Center, UnknownCenter
from vms.hub import Hub

router = APIRouter(prefix="/api/v1/centers", tags=["centers"])


def center_view(hub: Hub, c: Center, deep: bool = True) -> dict[str, Any]:
    counts = hub.health.counts(hub.registry.member_indices(c.id))
    total = counts["devices"]
    ratios = {k: (counts[k] / total if total else None) for k in ("online", "uploading", "intact")}
    targets = c.targets.model_dump()
    return {
        "id": c.id,
        "name": c.name,
        "level": c.level,
        "civil_code": c.civil_code,
        "industries": list(c.industries),
        "gb_id": c.gb_id,
        "path": c.path(),
        "counts": counts,
        "online_ratio": ratios["online"],
        "upload_ratio": ratios["uploading"],
        "intact_ratio": ratios["intact"],
        "targets": targets,
        "meets_targets": None
        if not total
        else (
            ratios["online"] is not None
            and ratios["online"] >= targets["online"]
            and (ratios["uploading"] or 0) >= targets["upload"]
            and (ratios["intact"] or 0) >= targets["intact"]
        ),
        "children": [center_view(hub, ch) for ch in c.children] if deep else [ch.id for ch in c.children],
    }


@router.get("")
def list_centers(hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The three-level tree; each center's figures include its sub-centers' devices once."""
    with hub.registry.lock:
        return {"centers": [center_view(hub, r) for r in hub.tree.roots]}


@router.get("/{center_id}")
def get_center(
    center_id: str, hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    with hub.registry.lock:
        try:
            c = hub.tree.get(center_id)
        except UnknownCenter as exc:
            raise HTTPException(404, str(exc)) from None
        return center_view(hub, c)
