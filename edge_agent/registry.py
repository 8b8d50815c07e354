"""Stable GB/T 28181 IDs for cameras, persisted in the agent's data directory.

A camera is known by its ONVIF serial number when we have one, otherwise by its RTSP URL with
credentials stripped; both are kept per entry, so a camera first configured by URL and later
discovered with a serial keeps its ID. The file is replaced atomically (tmp + fsync + rename),
so a crash leaves the old or the new registry, never a torn one.

A serial number is only what a device says about itself: a discovered camera that turns up at
another address keeps its ID, but an acceptance it had goes back to pending, so nothing at a new
address is relayed under an accepted ID until an admin has looked at it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vms.kernel import ids

from .config import strip_credentials

log = logging.getLogger(__name__)
FILE_NAME = "registry.json"


class RegistryError(Exception):
    """An ID that cannot be given out (collision, bad ID, full prefix, unreadable file)."""


@dataclass
class Entry:
    device_id: str
    url: str | None = None
    serial: str | None = None
    name: str = ""
    #: The hub's last word on relaying it: accepted | pending | rejected, "" before the first answer.
    acceptance: str = ""
    #: config | onvif; with the sub stream's URI (no credentials), so an accepted discovered camera that
    #: misses a later probe is still relayed from what was last found.
    source: str = ""
    sub_url: str | None = None
    #: Where the ONVIF device answered (host:port); its stream URIs must be on this host.
    address: str | None = None


def entry_host(e: Entry) -> str | None:
    """The host a camera was last known at: its ONVIF address, else its stream URL's host."""
    where = f"//{e.address}" if e.address else e.url
    if not where:
        return None
    try:
        host = urlsplit(where).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def _serial_key(serial: str | None) -> str | None:
    s = (serial or "").strip()
    return s.lower() or None


class Registry:
    """Maps camera identities to device IDs; thread-safe; every change is on disk on return."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._lock = threading.Lock()
        self._entries: list[Entry] = self._read()

    def _read(self) -> list[Entry]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [Entry(**e) for e in raw["devices"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{self.path}: cannot read device registry: {exc}") from None
        seen: set[str] = set()
        for e in entries:
            if e.device_id in seen:
                raise RegistryError(f"{self.path}: device ID {e.device_id} appears twice")
            seen.add(e.device_id)
        return entries

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        data = json.dumps({"version": 1, "devices": [asdict(e) for e in self._entries]}, indent=1)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def entries(self) -> list[Entry]:
        with self._lock:
            return [Entry(**asdict(e)) for e in self._entries]

    def lookup(self, *, url: str | None = None, serial: str | None = None) -> str | None:
        with self._lock:
            e = self._find(url, serial)
            return e.device_id if e else None

    def acceptance(self, device_id: str) -> str:
        """The hub's last decision on ``device_id``, kept so a hub outage never stops an accepted camera."""
        with self._lock:
            return next((e.acceptance for e in self._entries if e.device_id == device_id), "")

    def set_acceptance(self, states: Mapping[str, str]) -> None:
        """Remember the hub's decisions (device ID -> state); written once, only if one changed."""
        with self._lock:
            changed = False
            for e in self._entries:
                state = states.get(e.device_id)
                if state is not None and state != e.acceptance:
                    e.acceptance, changed = state, True
            if changed:
                self._write()

    def _find(self, url: str | None, serial: str | None) -> Entry | None:
        skey = _serial_key(serial)
        ukey = strip_credentials(url) if url else None
        if skey:
            for e in self._entries:
                if _serial_key(e.serial) == skey:
                    return e
        if ukey:
            for e in self._entries:
                # A URL match only counts when the serials do not contradict each other: a
                # different camera installed at the same address is a new camera.
                if e.url == ukey and (skey is None or _serial_key(e.serial) in (None, skey)):
                    return e
        return None

    def assign(
        self,
        *,
        prefix: str | None,
        url: str | None = None,
        serial: str | None = None,
        fixed_id: str | None = None,
        name: str = "",
        source: str = "",
        sub_url: str | None = None,
        address: str | None = None,
    ) -> str:
        """The camera's device ID: its fixed ID, its known ID, or a new one under ``prefix``.

        A discovered camera found (by its serial) at another host than before keeps its ID, but an
        acceptance goes back to pending: see :meth:`moved`."""
        if not url and not _serial_key(serial):
            raise RegistryError("a camera needs a URL or a serial number to be identified")
        if fixed_id is not None:
            try:
                ids.parse(fixed_id)
            except ids.InvalidDeviceId as exc:
                raise RegistryError(f"fixed device_id {fixed_id!r}: {exc}") from None
        ukey = strip_credentials(url) if url else None
        with self._lock:
            entry = self._find(url, serial)
            if fixed_id is not None:
                owner = next((e for e in self._entries if e.device_id == fixed_id), None)
                if owner is not None and entry is None:
                    # The config names this camera by its ID and gives a new address: the camera moved
                    # (or was replaced). The installer's word wins; a stale entry must not stop the agent.
                    log.warning("camera %s: address changed from %s to %s (fixed ID in the config)", fixed_id,
                                owner.url or owner.serial, ukey or serial)
                    entry = owner
                elif owner is not None and owner is not entry:
                    raise RegistryError(
                        f"device ID {fixed_id} is fixed in the config for {ukey or serial!r} but already "
                        f"belongs to camera {owner.url or owner.serial!r}; give each camera its own ID"
                    )
                if entry is not None and entry.device_id != fixed_id:
                    log.warning("camera %s: ID changed from %s to fixed %s", ukey or serial,
                                entry.device_id, fixed_id)
                    entry.device_id = fixed_id
            if entry is None:
                if fixed_id is not None:
                    new_id = fixed_id
                else:
                    if not prefix:
                        raise RegistryError(
                            f"camera {ukey or serial!r} has no device_id and no id_prefix is known to "
                            "allocate one"
                        )
                    try:
                        new_id = ids.allocate(prefix, (e.device_id for e in self._entries))
                    except ids.InvalidDeviceId as exc:
                        raise RegistryError(f"cannot allocate an ID under {prefix}: {exc}") from None
                entry = Entry(device_id=new_id)
                self._entries.append(entry)
                log.info("camera %s: new device ID %s", ukey or serial, new_id)
            before = Entry(**asdict(entry))
            # Learn the other half of the identity (serial or address) for future lookups.
            if ukey:
                for other in self._entries:
                    if other is not entry and other.url == ukey:
                        other.url = None  # the address now belongs to this camera
                entry.url = ukey
            if _serial_key(serial):
                entry.serial = (serial or "").strip()
            if name:
                entry.name = name
            if source:
                entry.source = source
                entry.sub_url = strip_credentials(sub_url) if sub_url else None
                entry.address = address or (None if source == "onvif" else entry.address)
            if moved(before, entry) and entry.acceptance == "accepted":
                log.warning("camera %s (serial %s) now answers at %s, not %s: its acceptance goes back to "
                            "pending until an admin accepts the new address", entry.device_id, entry.serial,
                            entry.address or entry.url, before.address or before.url)
                entry.acceptance = "pending"
            self._write()
            return entry.device_id


def moved(before: Entry, after: Entry) -> bool:
    """A discovered camera now at another host than it was known at (its ONVIF address or stream host)."""
    if before.source != "onvif" or after.source != "onvif":
        return False
    old, new = entry_host(before), entry_host(after)
    return old is not None and new is not None and old != new
