"""The hub's YAML configuration as pydantic models.

``extra="forbid"`` everywhere so a typo is an error at start-up, not a silently ignored setting;
every number is bounded, and the same models give ``vms config schema``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vms import sites as geo
from vms.analysis.config import AnalysisConfig
from vms.kernel import ids
from vms.kernel.configio import ConfigError as ConfigError  # re-exported: callers catch config.ConfigError
from vms.kernel.configio import load_model

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = Field("127.0.0.1", description="Address the hub listens on.")
    port: int = Field(8700, ge=1, le=65535)
    public_url: str | None = Field(None, description="URL agents and notifications use to reach the hub.")
    max_body_bytes: int = Field(4_000_000, ge=10_000, le=64_000_000, description="Largest JSON request body.")
    timezone: str = Field("Asia/Shanghai", description="Zone of calendar months in reports.")
    max_event_streams_per_token: int = Field(
        8, ge=1, le=1000, description="Event streams (GET /api/v1/events, one per open page) one token may have "
        "open at once; more are answered 429.",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v


class StorageConfig(_Model):
    data_dir: Path = Field(Path("./data"), description="Where the SQLite file and recordings live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is a SQLite file in data_dir (WAL mode)."
    )

    def url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'vms.db').resolve()}"


class HealthConfig(_Model):
    """Timings of the device state machine; defaults flag a silent camera within 10 s."""

    tick_s: float = Field(1.0, ge=0.1, le=10, description="How often every device is evaluated.")
    heartbeat_interval_s: float = Field(2.0, ge=0.5, le=60, description="Interval the hub asks agents to use.")
    offline_after_s: float = Field(5.0, ge=1, le=600, description="No signal for this long marks a device offline.")
    recover_after_s: float = Field(
        3.0, ge=0, le=600, description="Signal must be steady this long before an offline device is online."
    )
    upload_timeout_s: float = Field(
        12.0, ge=1, le=600, description="No media arrival at the hub for this long clears 'uploading'."
    )
    min_fps: float = Field(5.0, ge=0, le=120, description="Below this frame rate a device is degraded.")
    startup_grace_s: float = Field(
        15.0, ge=0, le=600, description="After the hub starts, agents get this long to report before silence counts."
    )
    max_clock_skew_s: float = Field(
        30.0, ge=1, le=86400, description="Agent clocks further off than this are reported as skewed."
    )
    report_cache_days: int = Field(
        35, ge=1, le=400, description="History kept in memory for fast reports; older windows read the store."
    )


class WebhookReceiver(_Model):
    name: str
    kind: Literal["webhook"] = "webhook"
    url: str = Field(description="Receives Alertmanager-compatible JSON (POST).")
    timeout_s: float = Field(5.0, gt=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)


class AppriseReceiver(_Model):
    name: str
    kind: Literal["apprise"] = "apprise"
    urls: list[str] = Field(min_length=1, description="apprise URLs: mailto://, dingtalk://, wecombot://, ...")


Receiver = Annotated[WebhookReceiver | AppriseReceiver, Field(discriminator="kind")]


class AlertsConfig(_Model):
    receivers: list[Receiver] = Field(default_factory=list)
    resolve_hold_s: float = Field(
        5.0, ge=0, le=3600, description="A recovered device must stay up this long before its alert resolves."
    )
    group_min_devices: int = Field(
        5,
        ge=2,
        le=100000,
        description="This many devices of one center going dark in one tick raise one grouped alert.",
    )
    retry_initial_s: float = Field(1.0, gt=0, le=600)
    retry_max_s: float = Field(300.0, gt=0, le=86400)
    retry_max_attempts: int = Field(
        0, ge=0, le=100000, description="0 retries forever; otherwise give up after this many."
    )
    receiver_down_after_s: float = Field(
        60.0, gt=0, le=86400,
        description="A receiver failing this long raises one receiver_down alert (sent to the others); "
        "its next delivery resolves it.",
    )


class Targets(_Model):
    online: float = Field(0.98, ge=0, le=1)
    upload: float = Field(1.0, ge=0, le=1, description="Signal upload rate (视频信号上传率).")
    intact: float = Field(0.98, ge=0, le=1, description="Intact rate (完好率).")


class CenterConfig(_Model):
    """One monitoring center; children nest to make the three-level tree."""

    id: str = Field(description="Short stable key, e.g. 'taicang' or 'chengxiang-edu'.")
    name: str = Field(min_length=1, max_length=200)
    level: Literal[1, 2, 3]
    civil_code: str = Field(description="GB/T 2260 prefix (2-8 digits) of the devices it covers.")
    industries: list[str] = Field(
        default_factory=list, description="Industry codes (2 digits) it covers; empty covers all."
    )
    gb_id: str | None = Field(None, description="The center's own 20-digit ID, if it has one.")
    targets: Targets = Field(default_factory=Targets)
    children: list[CenterConfig] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise ValueError("must be 1-63 lowercase letters, digits, '-' or '_'")
        return v

    @field_validator("civil_code")
    @classmethod
    def _civil(cls, v: str) -> str:
        if len(v) not in (2, 4, 6, 8):
            raise ValueError(f"civil_code {v!r} must be 2, 4, 6 or 8 digits")
        ids.check_prefix(v)
        return v

    @field_validator("industries")
    @classmethod
    def _industries(cls, v: list[str]) -> list[str]:
        for code in v:
            if len(code) != 2 or not code.isdigit():
                raise ValueError(f"industry code {code!r} must be 2 digits")
        return v

    @field_validator("gb_id")
    @classmethod
    def _gb_id(cls, v: str | None) -> str | None:
        if v is not None:
            ids.parse(v)
        return v

    @model_validator(mode="after")
    def _children_below(self) -> CenterConfig:
        for child in self.children:
            if child.level <= self.level:
                raise ValueError(
                    f"center {child.id!r} (level {child.level}) must be below its parent "
                    f"{self.id!r} (level {self.level})"
                )
            if not child.civil_code.startswith(self.civil_code):
                raise ValueError(
                    f"center {child.id!r} civil_code {child.civil_code} is outside its parent "
                    f"{self.id!r} civil_code {self.civil_code}"
                )
        return self


class DeviceConfig(_Model):
    """A device known before any agent reports it, or one placed in a center by hand."""

    id: str
    name: str = Field("", max_length=200)
    location: str = Field("", max_length=200)
    center: str | None = Field(None, description="Center id that overrides placement by ID.")
    lon: float | None = Field(None, description="Where the camera stands (WGS 84 degrees), for the map and coverage.")
    lat: float | None = Field(None)
    sites: list[str] | None = Field(None, max_length=100, description="Sites it covers (site ids); default: the "
                                    "point sites within their radius and the polygon sites it stands in.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        ids.parse(v)
        return v

    @model_validator(mode="after")
    def _where(self) -> DeviceConfig:
        if (self.lon is None) != (self.lat is None):
            raise ValueError(f"device {self.id}: give both lon and lat, or neither")
        if self.lon is not None:
            geo.check_point(self.lon, self.lat, f"device {self.id}")
        return self


class SiteConfig(_Model):
    """A place that must be covered (vms/sites.py): a point (lon, lat) with a radius, or a polygon."""

    id: str = Field(pattern=geo.SITE_ID.pattern)
    name: str = Field(min_length=1, max_length=200)
    kind: geo.SiteKind
    center: str = Field(description="Center id whose coverage figures count it (and its parents').")
    lon: float | None = None
    lat: float | None = None
    polygon: list[tuple[float, float]] | None = Field(
        None, max_length=geo.MAX_POLYGON_POINTS, description="[[lon, lat], ...], closed: the last position repeats "
        "the first.")
    min_cameras: int = Field(1, ge=1, le=100, description="Working cameras (online and intact) it needs.")
    radius_m: float = Field(geo.DEFAULT_RADIUS_M, ge=0, le=geo.MAX_RADIUS_M,
                            description="Cameras this close to the point (or the polygon's outline) cover it.")

    def record(self, bounds: geo.Bounds | None = None) -> geo.SiteRecord:
        """The checked site (coordinates in range, not swapped, inside ``bounds``; polygon closed)."""
        raw = self.model_dump(exclude_none=True)
        if self.polygon is not None:
            raw["polygon"] = [list(p) for p in self.polygon]
        return geo.make_site(raw, f"site {self.id}", [self.center], bounds)

    @model_validator(mode="after")
    def _shape(self) -> SiteConfig:
        self.record()
        return self


class MapConfig(_Model):
    """The district map of the pages: vectors from GeoJSON, tiles only from the center's own server."""

    tile_url: str | None = Field(
        None, max_length=500, pattern=r"^(https?:)?//.*\{z\}.*$",
        description="Tile URL template of the center's own tile server, e.g. http://tiles.local/{z}/{x}/{y}.png; "
        "none: no base map, the boundary and sites are drawn as vectors (a public tile service is never used).")
    attribution: str = Field("", max_length=300, description="Credit shown for the tiles.")
    min_zoom: int = Field(8, ge=0, le=22)
    max_zoom: int = Field(18, ge=0, le=22)
    boundary: dict[str, Any] | None = Field(
        None, description="The district's boundary, GeoJSON (Polygon, MultiPolygon, Feature or FeatureCollection).")
    boundary_file: Path | None = Field(None, description="The boundary from a GeoJSON file instead.")
    margin_deg: float = Field(0.05, ge=0, le=10, description="Sites and cameras must lie within the boundary's "
                              "box grown by this many degrees (catches swapped or mistyped coordinates).")

    @model_validator(mode="before")
    @classmethod
    def _read_boundary(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("boundary_file") is not None:
            if data.get("boundary") is not None:
                raise ValueError("give boundary or boundary_file, not both")
            path = Path(data["boundary_file"])
            try:
                data = {**data, "boundary": json.loads(path.read_text(encoding="utf-8"))}
            except OSError as exc:
                raise ValueError(f"boundary_file {path}: cannot read: {exc.strerror or exc}") from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"boundary_file {path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
        return data

    @model_validator(mode="after")
    def _check(self) -> MapConfig:
        if self.boundary is not None:
            geo.parse_boundary(self.boundary)
        if self.min_zoom > self.max_zoom:
            raise ValueError("map.min_zoom must not exceed map.max_zoom")
        return self

    def boundary_geometry(self) -> geo.Geometry | None:
        return None if self.boundary is None else geo.parse_boundary(self.boundary)

    def bounds(self) -> geo.Bounds | None:
        """The box every site and camera must fall in, or None without a boundary."""
        g = self.boundary_geometry()
        return None if g is None else geo.geometry_bounds(g).grown(self.margin_deg)


class CoverageConfig(_Model):
    """Coverage of sites: targets per kind (the documents' by default) and the alert for key sites."""

    targets: dict[geo.SiteKind, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Share of sites of a kind that must be covered; unset kinds keep the "
        "documents' targets (key places, roads, crowded places, schools, kindergartens, hospitals, elderly and "
        "welfare homes 100%, shop streets and households 80%, communities 70%).")
    alert_after_s: float = Field(60.0, ge=0, le=86400, description="A key site (a kind with a 100% target) "
                                 "uncovered this long raises a site_uncovered alert; it resolves once covered for "
                                 "alerts.resolve_hold_s.")

    def target(self, kind: geo.SiteKind) -> float:
        return self.targets.get(kind, geo.TARGETS[kind])


class ArchiveConfig(_Model):
    """Where relayed segments land; the storage issue adds retention."""

    max_segment_bytes: int = Field(64_000_000, ge=100_000, le=1_000_000_000)
    max_segment_seconds: float = Field(60.0, gt=0, le=600)
    min_free_bytes: int = Field(
        500_000_000, ge=0, le=10**13, description="Below this much free disk, new segments are refused (507)."
    )
    max_uploads_per_agent: int = Field(
        8, ge=1, le=256,
        description="Segment uploads (main and sub) one agent may have in progress at once; more are answered "
        "429 with Retry-After, which the agent retries after a pause.",
    )
    max_hold_days: float = Field(
        31.0, gt=0, le=3650,
        description="Longest range of footage one legal hold may keep: held footage is never deleted, not even "
        "by emergency cleanup, so an unbounded hold could fill the disk. Longer cases take several holds.",
    )
    max_clips: int = Field(
        4, ge=1, le=256,
        description="Clip downloads (clip.mp4 and finished exports) served at once, all users together; more are "
        "answered 429. Each builds or reads in the clips' own threads, never in those of ingest or live view.",
    )
    max_clips_per_user: int = Field(
        2, ge=1, le=256, description="Clip downloads one token holder may have at once (429 beyond).",
    )
    clip_send_mbit_s: float = Field(
        400.0, ge=0, le=100_000,
        description="Clip downloads sent at most this fast, all together (0: no limit). Sending is the hub's own "
        "work on the event loop that also takes heartbeats, uploads and live view: at full speed 20 downloads "
        "doubled their latency on two cores (bench/bench_faults.py --parts clips). It also keeps the uplink "
        "for live view and the cascade. One user alone gets all of it: a 10-minute 1 Mbit/s clip in 2 s.",
    )
    max_queued_exports: int = Field(
        16, ge=1, le=10_000,
        description="Export jobs waiting or building at once (POST /api/v1/exports); more are answered 429.",
    )
    ingest_threads: int = Field(
        8, ge=1, le=256,
        description="Threads of the agent link (segment uploads): their own, so clip downloads cannot delay them.",
    )


class LiveConfig(_Model):
    """Live view through the hub: HLS from the relayed segments and WebRTC (H.264 passed through)."""

    hls_window_segments: int = Field(6, ge=2, le=50, description="Segments listed in a live HLS playlist.")
    stale_after_s: float = Field(
        20.0, ge=2, le=600, description="Newest segment older than this: the camera has no live media (409)."
    )
    max_viewers: int = Field(64, ge=1, le=10000, description="WebRTC viewers at once, all cameras together.")
    max_viewers_per_device: int = Field(16, ge=1, le=1000, description="WebRTC viewers of one camera at once.")
    media_token_ttl_s: float = Field(
        300.0, ge=30, le=3600,
        description="Lifetime of a media token (the ?token= of live HLS URLs); pages fetch a new one at half of it.",
    )
    sub_max_segment_bytes: int = Field(
        4_000_000, ge=10_000, le=100_000_000,
        description="Largest sub-stream segment taken (sub segments are live only: a small ring, never recorded).",
    )
    ice_addresses: list[str] = Field(
        default_factory=list, description="Host addresses offered to WebRTC viewers; empty offers every interface."
    )
    ice_servers: list[str] = Field(
        default_factory=list, description="STUN/TURN URLs for WebRTC; empty uses host candidates only."
    )

    @field_validator("ice_addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        import ipaddress

        for a in v:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ValueError(f"ice address {a!r} is not an IP address") from None
        return v


class RetentionPolicy(_Model):
    """How long a center's or device's footage is kept (regulations: at least 30 days)."""

    keep_days: int = Field(30, ge=1, le=3650, description="Recordings older than this are deleted.")
    below_30_days_allowed: bool = Field(
        False, description="Explicit override to keep under 30 days; the device then shows as non-compliant."
    )
    quota_bytes: int | None = Field(
        None, ge=0, le=10**16, description="Cap on stored bytes (device, or all devices of a center); oldest go first."
    )

    @model_validator(mode="after")
    def _thirty(self) -> RetentionPolicy:
        if self.keep_days < 30 and not self.below_30_days_allowed:
            raise ValueError(
                f"keep_days {self.keep_days} is under the 30 days recordings must be kept; "
                "set below_30_days_allowed: true to accept being non-compliant"
            )
        return self


class RetentionConfig(_Model):
    """Retention by days and bytes, legal holds, emergency cleanup when the archive disk runs low."""

    default: RetentionPolicy = Field(default_factory=RetentionPolicy)
    centers: dict[str, RetentionPolicy] = Field(default_factory=dict, description="By center id (with sub-centers).")
    devices: dict[ids.DeviceIdKey, RetentionPolicy] = Field(
        default_factory=dict, description="By device ID; wins over centers."
    )
    interval_s: float = Field(600.0, ge=1, le=86400, description="How often the retention pass runs.")
    batch_size: int = Field(500, ge=1, le=100_000, description="Segments deleted per transaction.")
    emergency_free_bytes: int = Field(
        2_000_000_000, ge=0, le=10**13, description="Free space under this starts emergency cleanup and an alert."
    )
    emergency_target_free_bytes: int = Field(
        4_000_000_000, ge=0, le=10**13, description="Emergency cleanup deletes oldest footage until this is free."
    )
    exports_keep_days: float = Field(7.0, gt=0, le=3650, description="Finished clip and export files kept this long.")
    accounting_window_s: float = Field(
        86400.0, ge=60, le=400 * 86400, description="Window of the recording-completeness metric."
    )

    @model_validator(mode="after")
    def _targets(self) -> RetentionConfig:
        if self.emergency_target_free_bytes < self.emergency_free_bytes:
            raise ValueError("emergency_target_free_bytes must be at least emergency_free_bytes")
        return self


class DiscoveryConfig(_Model):
    """What happens to cameras an agent found by ONVIF/WS-Discovery (not typed into its config)."""

    auto_accept: bool = Field(
        False,
        description="Accept discovered cameras without an admin. Default false: a discovered camera waits in "
        "the discovered list (pending) until an admin accepts it; cameras listed in an agent's own config are "
        "accepted either way, and a camera an admin rejected stays rejected.",
    )


class Gb28181Config(_Model):
    """GB/T 28181 access: cameras, NVRs and platforms register with this center by SIP (vms/gb28181)."""

    enabled: bool = Field(False, description="Run the SIP server (UDP and TCP on one port).")
    server_id: ids.DeviceIdKey | None = Field(
        None, description="This center's own 20-digit ID (type 200, center signaling server); devices are "
        "configured with it as their SIP server ID.")
    domain: str | None = Field(None, pattern=r"^[0-9]{10}$",
                               description="SIP domain (realm); default: the first 10 digits of server_id.")
    host: str = Field("127.0.0.1", max_length=100, description="Address the SIP server listens on.")
    port: int = Field(5060, ge=1, le=65535)
    password: str = Field("", max_length=128, description="Password of devices that have none of their own.")
    passwords: dict[ids.DeviceIdKey, str] = Field(default_factory=dict,
                                                  description="Passwords by device ID (each at most 128 characters).")
    prefixes: list[str] = Field(
        default_factory=list, max_length=1000,
        description="ID prefixes this center serves; a device outside them is refused (403). Empty: the IDs "
        "that some center of the tree covers.")
    auto_accept: bool = Field(False, description="Accept registering devices and their channels without an admin.")
    digest_algorithm: Literal["MD5", "SHA-256"] = Field(
        "MD5", description="Challenge algorithm: MD5 (RFC 2617) is what the field uses; SHA-256 (RFC 7616) for "
        "GB/T 28181-2022 devices that ask for it.")
    keepalive_interval_s: float = Field(60.0, ge=5, le=3600,
                                        description="The keepalive interval configured on the devices.")
    keepalive_misses: float = Field(2.0, ge=1, le=10, description="Missed keepalives after which a device is "
                                    "offline (a de-registration or closed TCP connection is seen at once).")
    min_expires_s: int = Field(60, ge=10, le=3600, description="Shortest registration accepted (423 below).")
    max_expires_s: int = Field(86400, ge=60, le=604800, description="Longest registration granted.")
    catalog_timeout_s: float = Field(30.0, ge=1, le=600, description="How long a catalog answer may take in all.")
    register_rate: float = Field(20.0, gt=0, le=10000, description="REGISTERs per second taken from one address "
                                 "(burst twice that); the rest are dropped and counted.")
    record: bool = Field(True, description="Stream every accepted channel (INVITE) and record it like an agent's "
                         "camera; its video, not keepalives, then says whether it is online.")
    watch_idle_s: float = Field(30.0, ge=5, le=3600, description="A lower platform's camera watched here is "
                                "streamed from it (INVITE through the cascade) until nobody has watched it this long.")
    media_host: str | None = Field(None, max_length=100, description="Address media is received on and offered "
                                   "to devices in SDP; default: host.")
    media_transport: Literal["UDP", "TCP-passive", "TCP-active"] = Field(
        "UDP", description="RTP over UDP, or over TCP (RFC 4571) with the center listening (TCP-passive) or "
        "connecting to the device (TCP-active).")
    media_ports: tuple[int, int] | None = Field(None, description="Port range [first, last] for media (firewalls); "
                                                "default: any free port.")
    media_timeout_s: float = Field(4.0, ge=1, le=60, description="No RTP (or no video in it) this long: the "
                                   "stream is lost, the channel offline, and the center invites again.")
    invite_timeout_s: float = Field(8.0, ge=1, le=64, description="How long a device may take to answer an INVITE.")
    invite_backoff_max_s: float = Field(30.0, ge=1, le=600, description="Longest wait between INVITEs of a "
                                        "channel that keeps failing (1 s, doubling).")
    probe_timeout_s: float = Field(3.0, ge=0.5, le=32, description="When all of a device's streams stop, a query "
                                   "it does not answer within this makes it offline (no wait for keepalives).")
    segment_seconds: float = Field(2.0, ge=0.5, le=30, description="Length of the segments recorded from GB "
                                   "media (keyframe-aligned).")
    ssrc_check: bool = Field(True, description="Drop RTP whose SSRC is not the one of the session.")
    backfill_min_s: float = Field(10.0, ge=1, le=86400, description="A gap in a channel's live video at least "
                                  "this long is fetched from the device's own recording (RecordInfo, then a Download "
                                  "INVITE) once its video is back; footage lost on the network comes back.")
    download_speed: int = Field(4, ge=1, le=32,
                                description="Speed asked of a device sending a recording (a=downloadspeed).")

    @model_validator(mode="after")
    def _ids(self) -> Gb28181Config:
        if self.enabled and self.server_id is None:
            raise ValueError("gb28181.server_id is required when gb28181 is enabled")
        if self.server_id is not None and ids.parse(self.server_id).type != "200":
            raise ValueError(f"gb28181.server_id {self.server_id} must have type code 200 (center signaling server)")
        if self.media_ports is not None and not 1 <= self.media_ports[0] <= self.media_ports[1] <= 65535:
            raise ValueError(f"gb28181.media_ports {list(self.media_ports)}: need 1 <= first <= last <= 65535")
        if any(len(p) > 128 for p in self.passwords.values()):
            raise ValueError("gb28181.passwords: at most 128 characters each")
        for p in self.prefixes:
            ids.check_prefix(p)
        return self

    @property
    def realm(self) -> str:
        return self.domain or (self.server_id or "")[:10]

    @property
    def keepalive_timeout_s(self) -> float:
        return self.keepalive_interval_s * self.keepalive_misses


class SuperiorConfig(_Model):
    """A superior platform this center registers with by GB/T 28181 (级联): the district center or
    the police platform. It sees the devices of ``share`` and asks for their live and recorded video."""

    name: str = Field(description="Short stable key, e.g. 'district' or 'police'.")
    server_id: ids.DeviceIdKey = Field(description="The superior's own 20-digit SIP ID (type 200).")
    domain: str | None = Field(None, pattern=r"^[0-9]{10}$",
                               description="The superior's SIP domain; default: the first 10 digits of server_id.")
    host: str = Field(max_length=100, description="Address of the superior's SIP server.")
    port: int = Field(5060, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"
    password: str = Field("", max_length=128, description="The password the superior gave this center.")
    share: list[str] = Field(
        min_length=1, max_length=1000,
        description="What the superior may see: center IDs (their devices and sub-centers) or device-ID prefixes.")
    expires_s: int = Field(3600, ge=60, le=86400, description="Registration lifetime asked; renewed at 80 %.")
    keepalive_interval_s: float = Field(60.0, ge=1, le=3600, description="Keepalive period toward the superior.")
    keepalive_misses: int = Field(3, ge=1, le=10, description="Keepalives unanswered before registering again.")
    retry_max_s: float = Field(10.0, ge=1, le=3600, description="Longest wait between failed registrations "
                               "(1 s, doubling): a superior back after an outage has the center again within it.")
    catalog_page: int = Field(10, ge=1, le=100, description="Catalog items per MESSAGE (SumNum paging).")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise ValueError("must be 1-63 lowercase letters, digits, '-' or '_'")
        return v

    @model_validator(mode="after")
    def _platform(self) -> SuperiorConfig:
        if ids.parse(self.server_id).type != "200":
            raise ValueError(f"superior {self.name!r}: server_id {self.server_id} must have type code 200")
        return self

    @property
    def realm(self) -> str:
        return self.domain or self.server_id[:10]


class AuditConfig(_Model):
    """Signed checkpoints of the audit log's hash chain, kept outside the database (vms/audit.py)."""

    key_file: Path | None = Field(
        None, description="HMAC-SHA256 key of the checkpoints; default data_dir/audit.key, created (mode 0600) at "
        "the first start. Keep it where those who can write the database cannot read it.",
    )
    checkpoints_file: Path | None = Field(
        None,
        description="Where signed checkpoints are appended (JSON lines); default data_dir/audit-checkpoints.jsonl.",
    )
    checkpoint_interval_s: float = Field(
        60.0, ge=1, le=86400, description="How often a checkpoint is signed when the log has grown since the last.",
    )


class MetricsConfig(_Model):
    public: bool = Field(False, description="Serve /metrics without a token (e.g. on a private scrape network).")


class HubConfig(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    gb28181: Gb28181Config = Field(default_factory=Gb28181Config)
    centers: list[CenterConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    sites: list[SiteConfig] = Field(default_factory=list, max_length=100_000)
    map: MapConfig = Field(default_factory=MapConfig)
    coverage: CoverageConfig = Field(default_factory=CoverageConfig)
    superiors: list[SuperiorConfig] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _unique(self) -> HubConfig:
        seen: set[str] = set()
        stack = list(self.centers)
        while stack:
            c = stack.pop()
            if c.id in seen:
                raise ValueError(f"duplicate center id {c.id!r}")
            seen.add(c.id)
            stack.extend(c.children)
        devs: set[str] = set()
        for d in self.devices:
            if d.id in devs:
                raise ValueError(f"duplicate device id {d.id}")
            devs.add(d.id)
            if d.center is not None and d.center not in seen:
                raise ValueError(f"device {d.id} names unknown center {d.center!r}")
        self._check_sites(seen)
        names = [r.name for r in self.alerts.receivers]
        if len(names) != len(set(names)):
            raise ValueError("alert receiver names must be unique")
        self._check_superiors(seen)
        return self

    def _check_superiors(self, centers: set[str]) -> None:
        """Superiors need this center's SIP side and name what they see as known centers or prefixes."""
        if self.superiors and not self.gb28181.enabled:
            raise ValueError("superiors need gb28181.enabled (the center registers upward as gb28181.server_id)")
        names: set[str] = set()
        for sup in self.superiors:
            if sup.name in names:
                raise ValueError(f"duplicate superior name {sup.name!r}")
            names.add(sup.name)
            if sup.server_id == self.gb28181.server_id:
                raise ValueError(f"superior {sup.name!r}: server_id is this center's own gb28181.server_id")
            for entry in sup.share:
                if entry.isdigit():
                    ids.check_prefix(entry)
                elif entry not in centers:
                    raise ValueError(f"superior {sup.name!r}: share entry {entry!r} is neither a center ID "
                                     f"(centers: {', '.join(sorted(centers)) or 'none'}) nor a device-ID prefix")


    def _check_sites(self, centers: set[str]) -> None:
        """Sites under known centers, inside the district; devices placed inside it, at known sites."""
        bounds = self.map.bounds()
        site_ids: set[str] = set()
        for s in self.sites:
            if s.id in site_ids:
                raise ValueError(f"duplicate site id {s.id!r}")
            site_ids.add(s.id)
            if s.center not in centers:
                raise ValueError(f"site {s.id!r} names unknown center {s.center!r}")
            s.record(bounds)
        for d in self.devices:
            if d.lon is not None and bounds is not None:
                geo.check_point(d.lon, d.lat, f"device {d.id}", bounds)
            for sid in d.sites or []:
                if sid not in site_ids:
                    raise ValueError(f"device {d.id} is assigned to unknown site {sid!r} (sites: section)")


def load(path: Path | str) -> HubConfig:
    return load_model(path, HubConfig)


def schema() -> dict[str, Any]:
    return HubConfig.model_json_schema()
