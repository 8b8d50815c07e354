"""One thread per camera: RTSP -> PyAV packets -> segmenter, reconnecting forever.

Threads, not processes: PyAV's demuxer releases the GIL while it waits, and one process relays
over a hundred streams this way. FFmpeg's own socket timeout (the ``timeout`` option, in
microseconds) unblocks a dead connection; PyAV's ``timeout=`` argument is not used because its
interrupt callback takes the GIL on every I/O check. Stats are plain attributes written by the
camera's thread and read by anyone; a stall is judged by packet age at read time, so a thread
stuck in a read still shows its camera as down. The per-packet loop does only what must happen
per packet (the segmenter measures fps, bit rate and keyframe interval as it cuts): Python run per
packet, on many cameras' threads, cost more CPU than hashing every segment.

Reading at the live edge one packet at a time costs a wake-up (poll, context switch, GIL) for
every few RTP packets; that was a fifth of the relay's CPU. So once a read had to wait for the
camera (the reader is at the live edge, see ``LiveEdge``), the thread sleeps ``read_batch_s`` and
then drains what the socket buffered in one go. A camera that is behind (a burst after connecting,
a slow disk) is never made to wait. The price is up to ``read_batch_s`` of added latency; 0 turns
batching off. Over TCP only: the kernel holds what arrives meanwhile (and grows the receive buffer
for a reader that drains in batches, to 0.3-1.8 MB per camera in the relay bench) and flow control
holds back the camera; over UDP the socket buffer would overflow and packets would be lost.

A camera that goes away is retried with exponential backoff, so a dead one costs little. But a
camera that was recording is expected back, and every second of backoff after its return is a
hole in the recording: its retries are capped at ``healthy_backoff_cap_s``, and meanwhile its RTSP
service is asked every ``probe_interval_s`` with one DESCRIBE on a plain TCP connection (no
demuxer, no FFmpeg), and the full open follows at once when that answer turns from "gone" to
"serving" (see ``rtsp_probe``). A server just back may refuse its first requests (GStreamer's
answers 503 to an open right after the probe's DESCRIBE), so such an open is retried twice more at
0.2 and 0.4 s. Only that change triggers an open: a server that answers while its stream still
fails is retried on the backoff alone.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av

from vms.kernel.protocol import CameraStats
from vms.media.segmenter import Segmenter

from .config import redact, scrub

log = logging.getLogger(__name__)

#: Delay before the first retry; it doubles per failure up to ``backoff_cap_s``.
FIRST_RETRY_S = 0.2
#: The live edge is estimated anew over windows this long (camera clocks drift against ours).
EDGE_WINDOW_S = 5.0
#: A read that waited this long for its packet waited for the camera: the socket was empty.
EDGE_WAIT_S = 0.01
#: A packet this much earlier than the edge predicts means the timestamps jumped (camera restart).
MAX_EDGE_JUMP_S = 1.0
#: A connection that delivered packets this long counts as healthy: the backoff restarts.
HEALTHY_AFTER_S = 5.0
#: Default ports of RTSP and RTSP over TLS when a URL names none.
RTSP_PORTS = {"rtsp": 554, "rtsps": 322}
#: Opens retried at once (0.2 s, 0.4 s) after the probe said a camera serves again and an open failed.
QUICK_RETRIES = 2
#: RTSP answers that mean the stream's server is back: served, redirected, or asking for credentials
#: (the full open authenticates). 404 (stream not there yet), 5xx and silence mean it is not.
_SERVING = (*range(200, 400), 401)


@dataclass
class IngestStats:
    """Live figures for one camera; ``snapshot()`` gives a consistent-enough copy.

    ``fps``, ``bitrate_bps`` and ``keyframe_interval_s`` are filled in by ``snapshot()`` from the
    segmenter, which measures them.
    """

    device_id: str
    connected: bool = False
    last_packet_mono: float | None = None
    fps: float = 0.0
    bitrate_bps: float = 0.0
    keyframe_interval_s: float | None = None
    reconnects: int = 0
    gaps: int = 0
    packets: int = 0
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    last_error: str | None = None
    connected_since_mono: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class LiveEdge:
    """Tells whether the reader is at the live edge of its stream, with no backlog behind it.

    At the edge a read waits for the camera (the next frame has not been sent yet); behind it, the
    socket already holds the next packets and a read returns at once. A read can also look slow
    when the thread waited for the GIL, so a second test bounds the harm: arrival time minus stream
    time (DTS), whose least value over the previous window marks the edge, must show the packet no
    more than ``2 x batch`` late. A camera that is behind is never made to sleep.
    """

    def __init__(self, tbf: float, batch: float, now: float) -> None:
        self._tbf = tbf
        self._late = 2 * batch
        self._base: float | None = None  # unknown until one window has passed: no batching
        self._low = math.inf
        self._renew = now + EDGE_WINDOW_S

    def fresh(self, now: float, waited: float, dts: int) -> bool:
        stamp = now - dts * self._tbf
        if stamp < self._low:
            self._low = stamp
        if now >= self._renew:
            self._base, self._low, self._renew = self._low, math.inf, now + EDGE_WINDOW_S
        if waited < EDGE_WAIT_S or self._base is None:
            return False
        lag = stamp - self._base
        if lag < -MAX_EDGE_JUMP_S:  # the timestamps jumped: the edge is unknown again
            self._base = None
            return False
        return lag < self._late


def backoff_delay(failures: int, cap_s: float) -> float:
    """Exponential backoff with +-25% jitter: 0.2 s, 0.4 s, 0.8 s ... capped at ``cap_s``."""
    base = min(cap_s, FIRST_RETRY_S * (2 ** max(failures - 1, 0)))
    return max(0.05, base * random.uniform(0.75, 1.25))


def rtsp_probe(url: str, timeout_s: float = 1.0) -> str | None:
    """None if the RTSP server of ``url`` serves again, else why not; never raises.

    One DESCRIBE of the stream on a fresh TCP connection, without credentials (a 401 counts as
    serving: the service is up, the full open authenticates), reading only the status line. That
    costs the camera one request and the agent no demuxer, so it can be asked every second. Over
    TLS (``rtsps``) the TCP connect alone is taken as the answer.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or RTSP_PORTS.get(parts.scheme.lower(), 554)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if not host:
        return "no host in the URL"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if parts.scheme.lower() == "rtsps":
                return None
            sock.sendall(f"DESCRIBE {target} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
                         "User-Agent: vms-edge-agent probe\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    status = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    fields = status.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("RTSP/") or not fields[1].isdigit():
        return f"not an RTSP answer: {status[:60]!r}"
    return None if int(fields[1]) in _SERVING else f"answered {status[:60]!r}"


class CameraIngest:
    """Pulls one camera's stream on its own daemon thread and feeds its segmenter."""

    def __init__(
        self,
        device_id: str,
        url: str,
        segmenter: Segmenter,
        *,
        transport: str = "tcp",
        stall_timeout_s: float = 5.0,
        backoff_cap_s: float = 10.0,
        healthy_backoff_cap_s: float = 3.0,
        probe_interval_s: float = 1.0,
        read_batch_s: float = 0.2,
        name: str = "",
        location: str = "",
    ) -> None:
        """``backoff_cap_s`` caps the retries of a camera that has not recorded yet (wrong URL, not
        installed); ``healthy_backoff_cap_s`` those of one that did (it is expected back).
        ``probe_interval_s``: how often a camera that is away is probed between retries (0: never)."""
        self.device_id = device_id
        self._url = url
        self.safe_url = redact(url)
        self.segmenter = segmenter
        self.transport = transport
        self.stall_timeout_s = stall_timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.healthy_backoff_cap_s = healthy_backoff_cap_s
        self.probe_interval_s = probe_interval_s
        self._probe_up: bool | None = None  # the last probe's answer; unknown before the first
        self.name = name
        self.location = location
        self.read_batch_s = read_batch_s
        self._stats = IngestStats(device_id=device_id)
        self._stop = threading.Event()
        self._stopping = False  # the same as _stop, read per packet (cheaper than is_set())
        self._thread = threading.Thread(target=self._run, name=f"ingest-{device_id}", daemon=True)

    # --- control --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # --- stats ----------------------------------------------------------------------------------

    def snapshot(self) -> IngestStats:
        seg = self.segmenter
        s = replace(self._stats, fps=seg.fps, bitrate_bps=seg.bitrate_bps,
                    keyframe_interval_s=seg.keyframe_interval_s)
        now = time.monotonic()
        if s.connected:
            # Watchdog view: the thread may be blocked in a read that has not timed out yet.
            ref = s.last_packet_mono if s.last_packet_mono is not None else s.connected_since_mono
            s.connected = ref is not None and now - ref <= self.stall_timeout_s
        if not s.connected:
            s.fps = 0.0
            s.bitrate_bps = 0.0
        return s

    def camera_stats(self) -> CameraStats:
        s = self.snapshot()
        age = None if s.last_packet_mono is None else max(0.0, time.monotonic() - s.last_packet_mono)
        return CameraStats(
            device_id=self.device_id, connected=s.connected, last_packet_age_s=age,
            fps=round(s.fps, 3), bitrate_bps=round(s.bitrate_bps, 1),
            keyframe_interval_s=s.keyframe_interval_s, reconnects=s.reconnects, gaps=s.gaps,
            width=s.width, height=s.height, codec=s.codec,
            name=self.name or None, location=self.location or None,
        )

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        attempts = 0
        recorded = False  # a healthy connection was seen: the camera is expected back
        quick = 0  # retries left at once: the probe said the camera serves again
        while not self._stop.is_set():
            if attempts:
                self._stats.reconnects += 1
            attempts += 1
            t0 = time.monotonic()
            packets_before = self._stats.packets
            try:
                self._session()
            except Exception as exc:  # any failure: log safely, back off, retry
                msg = scrub(f"{type(exc).__name__}: {exc}", self._url)
                self._stats.last_error = msg
                log.warning("camera %s (%s): %s", self.device_id, self.safe_url, msg)
            finally:
                got_packets = self._stats.packets > packets_before
                if got_packets:
                    self._stats.gaps += 1
                self._stats.connected = False
                self._stats.connected_since_mono = None
            if self._stop.is_set():
                break
            healthy = got_packets and time.monotonic() - t0 >= HEALTHY_AFTER_S
            recorded = recorded or healthy
            failures = 1 if healthy else failures + 1
            cap = min(self.backoff_cap_s, self.healthy_backoff_cap_s) if recorded else self.backoff_cap_s
            if got_packets:
                quick = 0
            if quick:
                delay = backoff_delay(QUICK_RETRIES - quick + 1, cap)
                quick -= 1
            else:
                delay = backoff_delay(failures, cap)
            log.info("camera %s: reconnecting in %.1f s", self.device_id, delay)
            if self._wait_to_reconnect(delay):
                quick = QUICK_RETRIES

    def _wait_to_reconnect(self, delay: float) -> bool:
        """Wait ``delay`` (or until stopped), probing the camera meanwhile; return True early when
        the probe's answer turns to "serving", so recording resumes within a probe interval of the
        camera's return rather than a backoff later."""
        deadline = time.monotonic() + delay
        interval = self.probe_interval_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(left, interval) if interval > 0 else left):
                return False
            if deadline - time.monotonic() <= 0:
                return False  # the retry is due anyway
            problem = rtsp_probe(self._url, min(1.0, interval))
            up, was = problem is None, self._probe_up
            self._probe_up = up
            if up and was is not True:
                log.info("camera %s answers again; reconnecting now", self.device_id)
                return True
            if problem and was is not False:
                log.info("camera %s: probe: %s", self.device_id, scrub(problem, self._url))

    def _session(self) -> None:
        """One connection, until the stream ends or fails (raises) or we are stopped."""
        st = self._stats
        options = {
            "rtsp_transport": self.transport,
            "timeout": str(int(self.stall_timeout_s * 1_000_000)),
            "allowed_media_types": "video",
        }
        container = av.open(self._url, options=options)
        try:
            if not container.streams.video:
                raise RuntimeError("the stream has no video track")
            vs = container.streams.video[0]
            cc = vs.codec_context
            st.codec, st.width, st.height = cc.name, cc.width or None, cc.height or None
            st.connected = True
            st.connected_since_mono = time.monotonic()
            st.last_error = None
            log.info("camera %s: connected to %s (%s %sx%s)", self.device_id, self.safe_url,
                     cc.name, cc.width, cc.height)
            feed = self.segmenter.feed
            monotonic = time.monotonic
            sleep = time.sleep
            batch = self.read_batch_s if self.transport == "tcp" else 0.0
            fresh = LiveEdge(float(vs.time_base) if vs.time_base else 1 / 90000, batch, monotonic()).fresh
            ready = monotonic()
            for packet in container.demux(vs):
                if self._stopping:
                    break
                if not packet.size:
                    if packet.pts is None and packet.dts is None:
                        break  # demuxer flush packet: end of stream
                    continue
                now = monotonic()
                st.last_packet_mono = now
                st.packets += 1
                ts = packet.dts
                feed(packet, vs)
                if batch and ts is not None and fresh(now, now - ready, ts):
                    sleep(batch)
                ready = monotonic()
            if not self._stop.is_set():
                log.warning("camera %s (%s): stream ended", self.device_id, self.safe_url)
        finally:
            # The segmenter first: its held-back packet may start a new segment, whose output is
            # made from the input stream's parameters (PyAV crashes on a closed container's stream).
            try:
                self.segmenter.close()
            except Exception as exc:
                log.error("camera %s: closing segment failed: %s", self.device_id, scrub(str(exc), self._url))
            container.close()
