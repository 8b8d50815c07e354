"""SQLAlchemy models: every fact a figure is computed from is kept as history.

Times are Unix seconds (float, UTC) so that reports can be computed with numpy directly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Center(Base):
    """A monitoring center, mirrored from the config at every start."""

    __tablename__ = "centers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    civil_code: Mapped[str] = mapped_column(String(8))
    industries: Mapped[list[str]] = mapped_column(JSON, default=list)
    gb_id: Mapped[str | None] = mapped_column(String(20), nullable=True)


class Token(Base):
    """An API token; only a SHA-256 of its secret is stored. ``last_used_at`` is written by the tick, so it
    may lag the newest use by a minute (``vms/auth.py``)."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    prefixes: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, doc="Refused from then on; None: never.")
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    agent_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    center_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    #: It carries channels that count in its place (``Health.carrier``). NULL: not known yet, a device
    #: registered by GB/T 28181 whose catalog has not been read: it is not shared with superiors until known.
    carrier: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=False)  # NULL is written as null()


class StateInterval(Base):
    """A maximal stretch of time in which a device's (online, uploading, intact) flags held.

    ``end_at`` is NULL for the open interval. Time with no interval is unknown (hub down).
    """

    __tablename__ = "state_intervals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(20), ForeignKey("devices.id"))
    start_at: Mapped[float] = mapped_column(Float)
    end_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    online: Mapped[bool] = mapped_column(Boolean)
    uploading: Mapped[bool] = mapped_column(Boolean)
    intact: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_intervals_device_start", "device_id", "start_at"),
        Index("ix_intervals_end", "end_at"),
    )


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str | None] = mapped_column(String(20), nullable=True)
    agent_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    center_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    title: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    members: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16))
    since_at: Mapped[float] = mapped_column(Float)
    opened_at: Mapped[float] = mapped_column(Float)
    acknowledged_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)

    __table_args__ = (Index("ix_alerts_state", "state"), Index("ix_alerts_device", "device_id"))


class AlertEvent(Base):
    """The life cycle of an alert, one row per step, with who and why."""

    __tablename__ = "alert_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(Integer, ForeignKey("alerts.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    comment: Mapped[str] = mapped_column(Text, default="")


class Delivery(Base):
    """The notification outbox: a row per (alert event, receiver), retried until sent."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(Integer, ForeignKey("alerts.id"), index=True)
    receiver: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt_at"),)


class AuditEntry(Base):
    """Append-only, hash-chained: each row's hash covers its content and the previous hash."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Meta(Base):
    """Small key/value facts about the hub itself, e.g. when it was last known alive."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Segment(Base):
    """One recorded media segment at the hub: the archive index.

    A row exists only after its file is fsynced and renamed into place, so the index never
    points at a half-written file.
    """

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(20), ForeignKey("devices.id"))
    start_at: Mapped[float] = mapped_column(Float)
    end_at: Mapped[float] = mapped_column(Float)
    bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(300), doc="Relative to the recordings directory.")
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)
    agent_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    agent_start: Mapped[float | None] = mapped_column(
        Float, nullable=True,
        doc="The start as the agent sent it (its clock), before the hub's skew correction: with the sha256 it "
        "names an upload, so a retry whose start the correction moved is known as a duplicate.",
    )
    deleting: Mapped[bool] = mapped_column(
        Boolean, default=False, doc="Marked before its file is removed; a start-up check finishes the job."
    )
    motion_ratio: Mapped[float | None] = mapped_column(
        Float, nullable=True, doc="Peak share of the picture in motion, from the analysis."
    )

    __table_args__ = (
        Index("ux_segments_device_start", "device_id", "start_at", unique=True),
        Index("ix_segments_start", "start_at"),
        Index("ix_segments_device_sha", "device_id", "sha256"),  # a retried upload (with agent_start)
    )


class LegalHold(Base):
    """Footage of a device and time range kept for a case until released; retention never deletes it."""

    __tablename__ = "legal_holds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(20), index=True)
    start_at: Mapped[float] = mapped_column(Float)
    end_at: Mapped[float] = mapped_column(Float)
    case_number: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ExportJob(Base):
    """A clip export that runs in the background and can be downloaded later."""

    __tablename__ = "export_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(20), index=True)
    start_at: Mapped[float] = mapped_column(Float)
    end_at: Mapped[float] = mapped_column(Float)
    requested_by: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    case_number: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    path: Mapped[str | None] = mapped_column(String(300), nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gaps: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class QualityEvent(Base):
    """A quality defect raised or cleared by the analysis, with its metric and a snapshot."""

    __tablename__ = "quality_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(20))
    check: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # raised | cleared
    at: Mapped[float] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    snapshot: Mapped[str | None] = mapped_column(String(300), nullable=True, doc="Relative to the data directory.")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_quality_device_at", "device_id", "at"),)


class DiscoveredCamera(Base):
    """A camera an agent reported, and whether it may be relayed: an admin's decision (or the config's).

    ``stream_uri`` never holds credentials. A rejected camera stays rejected, whatever its agent
    reports later, until an admin accepts it. An accepted discovered camera reported at another
    address goes back to pending, with the address it was accepted at in ``moved_from``.
    """

    __tablename__ = "discovered_cameras"
    device_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(16))  # config | onvif
    name: Mapped[str] = mapped_column(String(200), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    manufacturer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    serial: Mapped[str | None] = mapped_column(String(200), nullable=True)
    address: Mapped[str | None] = mapped_column(String(300), nullable=True)
    stream_uri: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    first_seen_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # pending | accepted | rejected
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    #: The address it was accepted at, while it waits for an admin at a new one (None otherwise).
    moved_from: Mapped[str | None] = mapped_column(String(300), nullable=True)

    __table_args__ = (Index("ix_discovered_state", "state"),)


class Site(Base):
    """A place that must be covered (vms/sites.py): from the config (mirrored at every start), an import
    or an admin. Its coverage is never stored: it is computed from ``state_intervals``."""

    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    center_id: Mapped[str] = mapped_column(String(64), index=True)
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON, doc="GeoJSON geometry, [lon, lat] order.")
    min_cameras: Mapped[int] = mapped_column(Integer, default=1)
    radius_m: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))  # config | api (an admin, or an import)
    created_at: Mapped[float] = mapped_column(Float, doc="Coverage counts from here.")
    updated_at: Mapped[float] = mapped_column(Float)


class DevicePlace(Base):
    """Where a camera stands and which sites it covers, one row per source of the fact: ``admin``
    (placed through the API), ``config``, ``gb28181`` (its catalog's Longitude/Latitude), ``onvif``.
    The first of those that says something wins. No foreign key: a channel's catalog position may
    arrive while it waits for an admin to accept it."""

    __tablename__ = "device_places"
    device_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    sites: Mapped[list[str] | None] = mapped_column(JSON, nullable=True, doc="Explicit sites; None: by geometry.")
    at: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(100), default="")
