"""The center tree with live counts and ratios against each center's targets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from vms.api.deps import get_hub, require
from vms.auth import READERS, Principal
from vms.hub import Hub

router = APIRouter(prefix="/api/v1/centers", tags=["centers"])


@router.get("")
def list_centers(hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The three-level tree; each center's figures include its sub-centers' devices once."""
    return {"centers": hub.snapshots.centers()}


@router.get("/{center_id}")
def get_center(
    center_id: str, hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    return hub.snapshots.center(center_id)  # UnknownCenter -> 404
