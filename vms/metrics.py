"""Prometheus metrics, read from the hub's current state at scrape time (nothing on hot paths)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vms.health import ONLINE, UPLOADING

if TYPE_CHECKING:
    from vms.hub import Hub


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        col = hub.snapshots.columns()
        ids, known, flags, last, fps = col.ids, col.known, col.flags, col.last_signal, col.fps
        bitrate, reconnects, defects, retired = col.bitrate, col.reconnects, col.defects, col.retired
        open_alerts, counts = col.open_alerts, col.counts
        spools = [(a.name, a.spool) for a in hub.registry.agent_statuses() if a.spool]
        up = GaugeMetricFamily("vms_device_up", "1 if the device's signal is seen", labels=["device_id"])
        upl = GaugeMetricFamily("vms_device_uploading", "1 if live media reaches the hub", labels=["device_id"])
        seen = GaugeMetricFamily(
            "vms_device_last_seen_timestamp_seconds", "Last media packet seen (Unix s)", labels=["device_id"]
        )
        g_fps = GaugeMetricFamily("vms_device_fps", "Frame rate reported by the agent", labels=["device_id"])
        g_br = GaugeMetricFamily("vms_device_bitrate_bps", "Bit rate reported by the agent", labels=["device_id"])
        c_rc = CounterMetricFamily("vms_device_reconnects", "Reconnects since the agent started", labels=["device_id"])
        g_def = GaugeMetricFamily("vms_device_degraded", "1 if the device has a defect", labels=["device_id"])
        on = known & ((flags & ONLINE) != 0)
        uploading = known & ((flags & UPLOADING) != 0)
        for i, did in enumerate(ids):
            if retired[i]:  # out of service: no series, so no rule on vms_device_up fires for it
                continue
            up.add_metric([did], float(on[i]))
            upl.add_metric([did], float(uploading[i]))
            if np.isfinite(last[i]):
                seen.add_metric([did], float(last[i]))
            g_fps.add_metric([did], float(fps[i]))
            g_br.add_metric([did], float(bitrate[i]))
            c_rc.add_metric([did], float(reconnects[i]))
            g_def.add_metric([did], float(defects[i] != 0))
        yield from (up, upl, seen, g_fps, g_br, c_rc, g_def)
        devs = GaugeMetricFamily(
            "vms_center_devices", "Devices counted in the center (with sub-centers)", labels=["center"]
        )
        r_on = GaugeMetricFamily("vms_center_online_ratio", "Online devices / devices", labels=["center"])
        r_up = GaugeMetricFamily(
            "vms_center_upload_ratio", "Uploading devices / devices (视频信号上传率)", labels=["center"]
        )
        r_in = GaugeMetricFamily("vms_center_intact_ratio", "Intact devices / devices (完好率)", labels=["center"])
        for cid, c in counts.items():
            total = c["devices"]
            devs.add_metric([cid], total)
            if total:
                r_on.add_metric([cid], c["online"] / total)
                r_up.add_metric([cid], c["uploading"] / total)
                r_in.add_metric([cid], c["intact"] / total)
        target = GaugeMetricFamily("vms_center_target_ratio", "The ratio the center is assessed against",
                                   labels=["center", "kind"])
        for center in hub.tree:
            t = center.targets
            for kind, value in (("online", t.online), ("upload", t.upload), ("intact", t.intact)):
                target.add_metric([center.id, kind], value)
        yield from (devs, r_on, r_up, r_in, target)
        yield from _coverage(hub)
        yield GaugeMetricFamily("vms_alerts_open", "Alerts not yet resolved", value=open_alerts)
        hb = hub.heartbeats
        yield CounterMetricFamily("vms_heartbeats", "Agent heartbeats accepted", value=hb.heartbeats_total)
        yield CounterMetricFamily("vms_heartbeat_rejected_devices", "Device reports rejected", value=hb.rejected_total)
        spool_families = (
            (GaugeMetricFamily, "vms_agent_spool_queued_segments", "Segments waiting in the agent's spool",
             "queued_segments"),
            (GaugeMetricFamily, "vms_agent_spool_queued_bytes", "Bytes waiting in the agent's spool", "queued_bytes"),
            (CounterMetricFamily, "vms_agent_spool_dropped_segments",
             "Recorded segments the agent's spool quota forced out before upload: footage lost", "dropped_segments"),
            (CounterMetricFamily, "vms_agent_live_dropped_segments",
             "Sub-stream segments the agent dropped unsent since it started (live view gaps)", "live_dropped_segments"),
        )
        for family, metric, doc, key in spool_families:
            fam = family(metric, doc, labels=["agent"])
            for agent, st in spools:
                fam.add_metric([agent], float(getattr(st, key)))
            yield fam
        yield CounterMetricFamily(
            "vms_alert_deliveries_sent", "Alert notifications delivered", value=hub.outbox.sent_total
        )
        yield CounterMetricFamily(
            "vms_alert_deliveries_failed", "Alert notifications given up", value=hub.outbox.failed_total
        )
        yield GaugeMetricFamily(
            "vms_tick_seconds", "Duration of the last state evaluation", value=hub.monitor.last_tick_s
        )
        yield from hub.archive.metrics()
        yield from hub.quality.collect()
        if hub.gb28181 is not None:
            yield from hub.gb28181.collect()
        yield GaugeMetricFamily("vms_live_webrtc_viewers", "WebRTC live viewers now", value=hub.live.viewer_count())
        yield CounterMetricFamily(
            "vms_live_stalls", "Live WebRTC segments that arrived later than their turn", value=hub.live.stalls_total()
        )


def _coverage(hub: Hub) -> Iterator[GaugeMetricFamily]:
    """Sites covered now per center and kind against the target, and each site (vms/services/coverage.py)."""
    snap = hub.coverage.snapshot()
    labels = ["center", "kind"]
    total = GaugeMetricFamily("vms_coverage_sites", "Sites of a kind counted in the center (with sub-centers)",
                              labels=labels)
    covered = GaugeMetricFamily("vms_coverage_covered_sites", "Of them, covered now by at least their minimum of "
                                "online and intact cameras", labels=labels)
    target = GaugeMetricFamily("vms_coverage_target_ratio", "Share of the sites of a kind that must be covered",
                               labels=labels)
    for g in snap.groups:
        key = [g.center, g.kind.value]
        total.add_metric(key, g.sites)
        covered.add_metric(key, g.covered)
        target.add_metric(key, g.target)
    site = GaugeMetricFamily("vms_site_covered", "1 if the site has its minimum of working cameras now",
                             labels=["site", "kind", "center"])
    working = GaugeMetricFamily("vms_site_working_cameras", "Cameras covering the site that are online and intact",
                                labels=["site"])
    for sid, kind, center, ok, n in snap.sites:
        site.add_metric([sid, kind, center], float(ok))
        working.add_metric([sid], n)
    yield from (total, covered, target, site, working)


def registry_for(hub: Hub) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HubCollector(hub))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
