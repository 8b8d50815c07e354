// Live video of one camera in a <video>: WebRTC through the hub first, HLS (hls.js) if that fails.
// A "tile" player (walls of 4-16) plays the camera's sub stream (子码流) when the hub has one live;
// a "full" player (single tile, camera view) plays the main stream. A stream with B-frames goes
// straight to HLS: browsers' WebRTC shows it at keyframes only, and the hub refuses it anyway.
// HLS URLs carry a short-lived media token for the one camera and stream, never the user's token.
import { api, getToken } from "./api.js";

let hlsModule = null;
async function loadHls() {
  if (!hlsModule) hlsModule = (await import("./vendor/hls.light.min.mjs")).default;
  return hlsModule;
}

function timeout(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} timed out`)), ms));
}

/** Resolve when the video presents a picture; the listener goes away either way. */
function firstFrame(video, ms) {
  if (video.readyState >= 2 && video.videoWidth) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      video.removeEventListener("loadeddata", done);
      reject(new Error("first frame timed out"));
    }, ms);
    video.addEventListener("loadeddata", done, { once: true });
  });
}

function iceGathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return Promise.race([
    new Promise((resolve) => pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    })),
    new Promise((resolve) => setTimeout(resolve, ms)), // loopback candidates come at once; go with what we have
  ]);
}

/**
 * A media token for one camera's stream (the ?token= of its HLS URLs), fetched again when half its
 * lifetime has passed, so the playlist reloads and segments always carry a valid one.
 */
class MediaToken {
  constructor(deviceId, stream, onRenew = () => {}) {
    this.deviceId = deviceId;
    this.stream = stream;
    this.onRenew = onRenew;
    this.token = null;
    this.timer = null;
    this.stopped = false;
  }

  async fetch() {
    const r = await api(`/api/v1/live/${this.deviceId}/media-token`, { method: "POST", params: { stream: this.stream } });
    if (this.stopped) return;
    const first = this.token === null;
    this.token = r.token;
    this._schedule(Math.max(5, r.ttl_s / 2) * 1000);
    if (!first) this.onRenew(this.token);
  }

  _schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fetch().catch(() => !this.stopped && this._schedule(5000)), ms);
  }

  /** url with this token as its ?token= (hls.js asks for every playlist and segment through here). */
  sign(url) {
    const u = new URL(url, location.href);
    u.searchParams.set("token", this.token);
    return u.toString();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

export class LivePlayer {
  /**
   * onStatus(status, mode, stream): status is "connecting" | "playing" | "unavailable"; stream is
   * "main" | "sub". quality is "tile" (sub stream when there is one) or "full" (main stream).
   */
  constructor(video, deviceId, onStatus = () => {}, { quality = "full" } = {}) {
    this.video = video;
    this.deviceId = deviceId;
    this.onStatus = onStatus;
    this.quality = quality;
    this.stream = null;
    this.mode = null;
    this.pc = null;
    this.hls = null;
    this.media = null; // MediaToken while playing over HLS
    this.stopped = true;
    this.retryTimer = null;
    this.frames = 0;
    this.mediaTime = 0;
    this.errors = 0;
    this.gen = 0; // bumped by stop(): an attempt from an older generation gives up
    this.skip = new Set(); // "stream:mode" pairs that cannot show this camera's stream
    this._countFrames();
  }

  _countFrames() {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
    const tick = (_now, meta) => {
      this.frames += 1;
      this.mediaTime = meta.mediaTime;
      this.video.requestVideoFrameCallback(tick);
    };
    this.video.requestVideoFrameCallback(tick);
  }

  async start() {
    if (!this.stopped) return;
    this.stopped = false;
    const gen = this.gen;
    this.onStatus("connecting", null, this.stream);
    await this._chooseStream();
    if (gen !== this.gen) return;
    const modes = [["webrtc", () => this._webrtc()], ["hls", () => this._hls()]]
      .filter(([m]) => !this.skip.has(`${this.stream}:${m}`));
    for (const [mode, fn] of modes) {
      if (gen !== this.gen) return;
      try {
        await fn();
        if (gen !== this.gen) return;
        this.mode = mode;
        this.onStatus("playing", mode, this.stream);
        return;
      } catch {
        if (gen !== this.gen) return;
        this.errors += 1;
        this._teardown();
      }
    }
    this.onStatus("unavailable", null, this.stream);
    this.stopped = true;
    this.retryTimer = setTimeout(() => this.start(), 10000);
  }

  /** Sub stream for a tile when the hub has it live, else main; skip WebRTC for a stream with B-frames. */
  async _chooseStream() {
    let st = null;
    try {
      st = await api(`/api/v1/live/${this.deviceId}`);
    } catch { /* no status: try the main stream as before */ }
    const sub = st && st.sub && st.sub.live;
    this.stream = this.quality === "tile" && sub ? "sub" : "main";
    const bframes = st && (this.stream === "sub" ? st.sub.bframes : st.bframes);
    if (bframes) this.skip.add(`${this.stream}:webrtc`);
  }

  async _webrtc() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const track = new Promise((resolve) => {
      pc.ontrack = (e) => {
        this.video.srcObject = e.streams[0] || new MediaStream([e.track]);
        resolve();
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, 1000);
    const r = await fetch(`/api/v1/live/${this.deviceId}/webrtc${this.stream === "sub" ? "?stream=sub" : ""}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${getToken()}`, "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    if (!r.ok) throw new Error(`webrtc offer: HTTP ${r.status}`); // 409: no live media, or B-frames
    await pc.setRemoteDescription(await r.json());
    await Promise.race([track, timeout(6000, "webrtc track")]);
    await firstFrame(this.video, 8000);
    await this._decodeCheck();
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState) && this.pc === pc && !this.stopped) this.restart();
    });
  }

  /**
   * Frames that arrive but are not decoded (seen with H.264 streams that carry B-frames, which
   * WebRTC does not order) mean a picture every few seconds: use HLS for this camera instead.
   */
  async _decodeCheck() {
    const a = await this.rtcStats();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const b = await this.rtcStats();
    if (!a || !b) return;
    const received = b.framesReceived - a.framesReceived, decoded = b.framesDecoded - a.framesDecoded;
    if (received >= 10 && decoded < received / 2) {
      this.skip.add(`${this.stream}:webrtc`);
      throw new Error(`webrtc: ${decoded} of ${received} frames decoded`);
    }
  }

  async _hls() {
    const media = new MediaToken(this.deviceId, this.stream);
    this.media = media;
    await media.fetch();
    if (this.media !== media) throw new Error("stopped while fetching a media token");
    const sub = this.stream === "sub" ? "?stream=sub" : "";
    const url = media.sign(`/api/v1/live/${this.deviceId}/index.m3u8${sub}`);
    const Hls = await loadHls();
    if (Hls.isSupported()) {
      // A short live window and no back buffer: memory stays flat over a shift. Every request
      // (playlist reload, segment) goes out with the newest media token.
      const hls = new Hls({
        liveSyncDurationCount: 2, maxBufferLength: 8, backBufferLength: 0, enableWorker: true,
        xhrSetup: (xhr, u) => xhr.open("GET", media.sign(u), true),
      });
      this.hls = hls;
      hls.on(Hls.Events.ERROR, (_e, data) => {
        if (data.fatal && this.hls === hls && !this.stopped && this.mode === "hls") this.restart();
      });
      const fatal = new Promise((_, reject) => hls.on(Hls.Events.ERROR, (_e, d) => d.fatal && reject(new Error(d.details))));
      hls.loadSource(url);
      hls.attachMedia(this.video);
      await Promise.race([firstFrame(this.video, 20000), fatal]);
    } else {
      // Native HLS reloads the playlist from the URL it was given: give it the new token's URL.
      media.onRenew = () => {
        if (this.media === media && !this.stopped) {
          this.video.src = media.sign(url);
          this.video.play().catch(() => {});
        }
      };
      this.video.src = url;
      await firstFrame(this.video, 20000);
    }
    this.video.play().catch(() => {});
  }

  /** Receive-side WebRTC figures of the video (null unless playing by WebRTC). */
  async rtcStats() {
    if (!this.pc) return null;
    for (const r of (await this.pc.getStats()).values()) {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        return { framesReceived: r.framesReceived, framesDecoded: r.framesDecoded, framesDropped: r.framesDropped,
          fps: r.framesPerSecond, packetsLost: r.packetsLost, jitterBufferDelay: r.jitterBufferDelay };
      }
    }
    return null;
  }

  restart() {
    this.stop();
    this.start();
  }

  _teardown() {
    if (this.pc) this.pc.close();
    if (this.hls) this.hls.destroy();
    if (this.media) this.media.stop();
    this.pc = null;
    this.hls = null;
    this.media = null;
    this.mode = null;
    this.video.srcObject = null;
    if (this.video.hasAttribute("src")) {
      this.video.removeAttribute("src");
      this.video.load();
    }
  }

  stop() {
    this.gen += 1;
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this._teardown();
  }
}
