"""Live view of cameras through the hub: HLS from the relayed segments, WebRTC passing H.264 through."""

from vms.live.relay import LiveRelay, NoLiveMedia

__all__ = ["LiveRelay", "NoLiveMedia"]
