"""Read models: snapshots of the live state for the API, the pages and the metrics.

Each call takes the registry's lock once, copies what it needs into plain models, and lets go;
views (``vms/api``, ``vms/metrics.py``) read these and never take the lock themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from vms.centers import Center
from vms.errors import Invalid, NotFound
from vms.health import defect_names
from vms.kernel import ids
from vms.kernel.timeutil import iso
from vms.services.monitor import Monitor
from vms.services.registry import Registry

State = Literal["offline", "degraded", "uploading", "online", "unknown", "retired"]


class UnknownDevice(NotFound):
    """No device with that ID is registered."""


class DeviceOut(BaseModel):
    id: str
    name: str
    location: str
    state: State
    since: str | None
    centers: list[str]
    agent: str | None
    last_seen: str | None
    fps: float
    bitrate_bps: float
    reconnects: int
    defects: list[str]


class DeviceList(BaseModel):
    total: int
    devices: list[DeviceOut]


@dataclass(frozen=True)
class Columns:
    """The state table's columns, copied (for metrics)."""

    ids: list[str]
    known: npt.NDArray[np.bool_]
    flags: npt.NDArray[np.uint8]
    last_signal: npt.NDArray[np.float64]
    fps: npt.NDArray[np.float64]
    bitrate: npt.NDArray[np.float64]
    reconnects: npt.NDArray[np.int64]
    defects: npt.NDArray[np.uint32]
    retired: npt.NDArray[np.bool_]
    counts: dict[str, dict[str, int]]  # center ID -> devices by state
    open_alerts: int


class Snapshots:
    def __init__(self, registry: Registry, monitor: Monitor) -> None:
        self.reg = registry
        self.health = registry.health
        self.monitor = monitor

    # -- devices --------------------------------------------------------------------------------
    def _device(self, i: int) -> DeviceOut:
        h, inf = self.health, self.reg.info[i]
        a = int(h.agent[i])
        last = float(h.last_signal[i])
        return DeviceOut(
            id=h.ids[i],
            name=inf.name,
            location=inf.location,
            state=h.state_of(i),
            since=iso(float(h.open_start[i])) if h.known[i] else None,
            centers=list(inf.homes),
            agent=self.reg.agent_name(a) if a >= 0 else None,
            last_seen=iso(last) if math.isfinite(last) else None,
            fps=float(h.fps[i]),
            bitrate_bps=float(h.bitrate[i]),
            reconnects=int(h.reconnects[i]),
            defects=defect_names(int(h.defects[i])),
        )

    def _index(self, device_id: str) -> int:
        i = self.health.index.get(device_id)
        if i is None:
            try:
                ids.parse(device_id)
            except ids.InvalidDeviceId as exc:
                raise Invalid(f"invalid device ID: {exc}") from None
            raise UnknownDevice(f"unknown device {device_id}")
        return i

    def index(self, device_id: str) -> int:
        """The device's row; raises ``Invalid`` or ``UnknownDevice``."""
        with self.reg.lock:
            return self._index(device_id)

    def device(self, device_id: str) -> DeviceOut:
        with self.reg.lock:
            return self._device(self._index(device_id))

    def devices_by_id(self, device_ids: list[str]) -> list[DeviceOut]:
        """The views of those of ``device_ids`` that are registered."""
        with self.reg.lock:
            idx = self.health.index
            return [self._device(idx[d]) for d in device_ids if d in idx]

    def devices(self, center: str | None, state: State | None, offset: int, limit: int) -> DeviceList:
        """A page of devices, optionally of one center (``UnknownCenter`` if there is none) and state."""
        with self.reg.lock:
            if center is not None:
                self.reg.tree.get(center)
                pool = [int(x) for x in self.reg.member_indices(center)]
            else:
                pool = list(range(self.health.n))
            if state is not None:
                pool = [i for i in pool if self.health.state_of(i) == state]
            return DeviceList(total=len(pool), devices=[self._device(i) for i in pool[offset: offset + limit]])

    def device_detail(self, device_id: str, now: float) -> dict[str, Any]:
        """A device's view with its availability over the last 24 hours and 7 days."""
        with self.reg.lock:
            i = self._index(device_id)
            view = self._device(i).model_dump()
            av = {k: self.health.availability(now - s, now, now) for k, s in (("24h", 86400), ("7d", 7 * 86400))}
            view["availability"] = {k: self.monitor.device_figures(a, i) for k, a in av.items()}
        return view

    def problems(self, shown: int) -> tuple[int, list[DeviceOut], dict[str, int]]:
        """Dark or degraded devices (how many, the longest ``shown`` first) and devices by state."""
        with self.reg.lock:
            h = self.health
            states = [h.state_of(i) for i in range(h.n)]
            bad = [i for i, s in enumerate(states) if s in ("offline", "degraded")]
            bad.sort(key=lambda i: float(h.open_start[i]))
            counts = {s: states.count(s) for s in ("online", "uploading", "degraded", "offline", "unknown")}
            return len(bad), [self._device(i) for i in bad[:shown]], counts | {"devices": h.n}

    def in_service(self) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
        """(ID, name, location, state, home centers) of every device in service, for catalogs shared
        with superior platforms: its cameras and channels, not the NVRs that carry channels (they
        count through their channels here, and so they do there), nor a device that may turn out one
        (``Health.carrier_unknown``)."""
        with self.reg.lock:
            h, held = self.health, self.reg.held
            return [(h.ids[i], inf.name, inf.location, h.state_of(i), tuple(inf.homes))
                    for i, inf in enumerate(self.reg.info[: h.n]) if self._shared(i) and h.ids[i] not in held]

    def states(self, device_ids: list[str]) -> dict[str, str]:
        """The state of each of ``device_ids`` in service and shared (retired, carriers and unknown IDs left out)."""
        with self.reg.lock:
            h, idx = self.health, self.health.index
            return {d: h.state_of(idx[d]) for d in device_ids if d in idx and self._shared(idx[d])}

    def _shared(self, i: int) -> bool:
        h = self.health
        return not (h.retired[i] or h.carrier[i] or h.carrier_unknown[i])

    # -- centers --------------------------------------------------------------------------------
    def _center(self, c: Center, deep: bool = True) -> dict[str, Any]:
        counts = self.health.counts(self.reg.member_indices(c.id))
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
            "children": [self._center(ch) for ch in c.children] if deep else [ch.id for ch in c.children],
        }

    def centers(self) -> list[dict[str, Any]]:
        """The three-level tree; each center's figures include its sub-centers' devices once."""
        with self.reg.lock:
            return [self._center(r) for r in self.reg.tree.roots]

    def center(self, center_id: str) -> dict[str, Any]:
        """One center with its sub-tree; ``UnknownCenter`` if there is none."""
        with self.reg.lock:
            return self._center(self.reg.tree.get(center_id))

    # -- metrics --------------------------------------------------------------------------------
    def columns(self) -> Columns:
        with self.reg.lock:
            h = self.health
            n = h.n
            return Columns(
                ids=list(h.ids),
                known=h.known[:n].copy(),
                flags=h.flags[:n].copy(),
                last_signal=h.last_signal[:n].copy(),
                fps=h.fps[:n].copy(),
                bitrate=h.bitrate[:n].copy(),
                reconnects=h.reconnects[:n].copy(),
                defects=h.defects[:n].copy(),
                retired=h.retired[:n].copy(),
                counts={c.id: h.counts(self.reg.member_indices(c.id)) for c in self.reg.tree},
                open_alerts=len(self.monitor.book.open),
            )
