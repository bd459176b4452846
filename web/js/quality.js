// Connection quality: the small "you / the other person" indicator fed by `quality` messages,
// the browser's own getStats() report sent every 2 s (ClientStats in signaling/messages.py),
// and a round-trip probe over the signalling socket (ping/pong).

import { h } from "./api.js";

export const QUALITY_WORDS = {
  excellent: "excellent",
  good: "good",
  poor: "poor",
  lost: "lost",
  no_media: "no media",
  unknown: "checking",
};
const BARS = { excellent: 3, good: 2, poor: 1, lost: 0, no_media: 0, unknown: 0 };
// What to try when media never connected (server label "no_media"), said in words.
export const NO_MEDIA_ADVICE =
  "No media connection — check your network or try another browser/network " +
  "(a different Wi-Fi or your phone's data; a VPN or firewall may block calls).";

/** Signal bars; the label is always given in words beside it (never colour alone). */
function barsIcon(label) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 16 14");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.setAttribute("class", "q-icon");
  const filled = BARS[label] ?? 0;
  [0, 1, 2].forEach((i) => {
    const bar = document.createElementNS(ns, "rect");
    const hgt = 4 + i * 4;
    bar.setAttribute("x", String(1 + i * 5));
    bar.setAttribute("y", String(13 - hgt));
    bar.setAttribute("width", "3.5");
    bar.setAttribute("height", String(hgt));
    bar.setAttribute("rx", "1");
    bar.setAttribute("class", i < filled ? "q-on" : "q-off");
    svg.append(bar);
  });
  if (label === "lost" || label === "no_media") {
    const cross = document.createElementNS(ns, "path");
    cross.setAttribute("d", "M10 1l5 5M15 1l-5 5");
    cross.setAttribute("class", "q-cross");
    svg.append(cross);
  }
  return svg;
}

/**
 * Renders `quality` messages into two elements (data-testid quality-you / quality-peer).
 * `peerName` is how the other person is called on this page ("Client", "Therapist").
 */
export class QualityIndicator {
  constructor({ youEl, peerEl, peerName, onChange }) {
    this.youEl = youEl;
    this.peerEl = peerEl;
    this.peerName = peerName;
    this.onChange = onChange || (() => {});
    this.last = { you: null, peer: null };
  }

  _render(el, who, level) {
    const label = level && level.label in QUALITY_WORDS ? level.label : null;
    el.hidden = false;
    el.dataset.label = label || "none";
    const word = label ? QUALITY_WORDS[label] : "not connected";
    el.title = label === "no_media"
      ? (who === "You" ? NO_MEDIA_ADVICE : `${who}: no media connection yet.`)
      : label && level.score !== undefined && level.score !== null
        ? `${who} connection: ${word} (score ${Math.round(level.score)} of 100)`
        : `${who} connection: ${word}`;
    const parts = [barsIcon(label || "unknown"), h("span", { class: "q-who" },
      h("span", { class: "q-long" }, `${who === "You" ? "Your" : `${who}'s`} connection`),
      h("span", { class: "q-short" }, who), ": "), h("span", { class: "q-label" }, word)];
    if (label === "no_media" && who === "You") {
      parts.push(h("span", { class: "q-advice", role: "status", "data-testid": "quality-advice" }, ` ${NO_MEDIA_ADVICE}`));
    }
    el.replaceChildren(...parts);
  }

  update(msg) {
    if (!msg || !msg.you) return;
    this._render(this.youEl, "You", msg.you);
    this._render(this.peerEl, this.peerName, msg.peer || null);
    const you = msg.you.label;
    const peer = msg.peer ? msg.peer.label : null;
    if (you !== this.last.you || peer !== this.last.peer) {
      const before = this.last;
      this.last = { you, peer };
      this.onChange({ you, peer }, before);
    }
  }

  clear() {
    this.youEl.hidden = true;
    this.peerEl.hidden = true;
  }
}

const CANDIDATE_TYPES = new Set(["host", "srflx", "prflx", "relay"]);
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const finite = (v) => typeof v === "number" && Number.isFinite(v);

/** Pull the numbers we report out of one RTCStatsReport. */
export function collectStats(report) {
  const out = {
    pair: null,
    localCandidates: new Map(),
    inbound: { audio: null, video: null },
    bytesIn: 0,
    bytesOut: 0,
    fpsOut: null,
  };
  let selectedId = null;
  const pairs = [];
  report.forEach((st) => {
    switch (st.type) {
      case "transport":
        if (st.selectedCandidatePairId) selectedId = st.selectedCandidatePairId;
        break;
      case "candidate-pair":
        pairs.push(st);
        break;
      case "local-candidate":
        out.localCandidates.set(st.id, st);
        break;
      case "inbound-rtp": {
        const kind = st.kind || st.mediaType;
        out.bytesIn += st.bytesReceived || 0;
        if (kind === "audio" || kind === "video") {
          const prev = out.inbound[kind];
          // Several streams of one kind: sum the counters, keep the first for per-frame values.
          out.inbound[kind] = prev
            ? { ...prev, packetsReceived: (prev.packetsReceived || 0) + (st.packetsReceived || 0), packetsLost: (prev.packetsLost || 0) + (st.packetsLost || 0) }
            : { ...st };
        }
        break;
      }
      case "outbound-rtp": {
        out.bytesOut += st.bytesSent || 0;
        const kind = st.kind || st.mediaType;
        if (kind === "video" && finite(st.framesPerSecond)) out.fpsOut = st.framesPerSecond;
        break;
      }
      default:
        break;
    }
  });
  out.pair = pairs.find((p) => p.id === selectedId)
    || pairs.find((p) => p.selected)
    || pairs.find((p) => p.nominated && p.state === "succeeded")
    || null;
  return out;
}

/** Build a `stats` message from the current sample and the previous one (for deltas). */
export function statsMessage(cur, prev, dtSeconds) {
  const msg = { type: "stats" };
  const pair = cur.pair;
  if (pair && finite(pair.currentRoundTripTime)) msg.rtt_ms = clamp(Math.round(pair.currentRoundTripTime * 1000 * 10) / 10, 0, 60000);
  if (pair) {
    const local = cur.localCandidates.get(pair.localCandidateId);
    const type = local && (local.candidateType || local.type);
    if (CANDIDATE_TYPES.has(type)) msg.candidate_type = type;
  }
  const video = cur.inbound.video;
  const audio = cur.inbound.audio;
  if (video) {
    if (finite(video.framesPerSecond)) msg.fps_in = clamp(video.framesPerSecond, 0, 240);
    if (finite(video.frameWidth)) msg.width_in = clamp(Math.round(video.frameWidth), 0, 10000);
    if (finite(video.frameHeight)) msg.height_in = clamp(Math.round(video.frameHeight), 0, 10000);
    if (finite(video.freezeCount)) msg.freezes = clamp(Math.round(video.freezeCount), 0, 1000000);
  }
  if (finite(cur.fpsOut)) msg.fps_out = clamp(cur.fpsOut, 0, 240);
  if (prev && dtSeconds > 0.2) {
    const outRate = ((cur.bytesOut - prev.bytesOut) * 8) / dtSeconds;
    const inRate = ((cur.bytesIn - prev.bytesIn) * 8) / dtSeconds;
    if (outRate >= 0) msg.outbound_bitrate = clamp(Math.round(outRate), 0, 1e9);
    if (inRate >= 0) msg.inbound_bitrate = clamp(Math.round(inRate), 0, 1e9);
    const loss = (kind) => {
      const a = cur.inbound[kind];
      const b = prev.inbound[kind];
      if (!a || !b) return undefined;
      const lost = (a.packetsLost || 0) - (b.packetsLost || 0);
      const got = (a.packetsReceived || 0) - (b.packetsReceived || 0);
      if (got < 0 || lost + got <= 0) return undefined;
      return clamp(Math.max(0, lost) / (Math.max(0, lost) + got), 0, 1);
    };
    const al = loss("audio");
    const vl = loss("video");
    if (al !== undefined) msg.audio_loss_in = Math.round(al * 10000) / 10000;
    if (vl !== undefined) msg.video_loss_in = Math.round(vl * 10000) / 10000;
    const a = audio;
    const b = prev.inbound.audio;
    if (a && b && finite(a.jitterBufferDelay) && finite(b.jitterBufferDelay)) {
      const emitted = (a.jitterBufferEmittedCount || 0) - (b.jitterBufferEmittedCount || 0);
      const delay = a.jitterBufferDelay - b.jitterBufferDelay;
      if (emitted > 0 && delay >= 0) msg.jitter_buffer_ms = clamp(Math.round((delay / emitted) * 1000 * 10) / 10, 0, 60000);
    }
  }
  return msg;
}

/** Every `intervalMs`, read the peer connection's getStats() and send a `stats` message. */
export class StatsReporter {
  constructor({ getPc, send, intervalMs = 2000 }) {
    this.getPc = getPc;
    this.send = send;
    this.intervalMs = intervalMs;
    this.timer = null;
    this.prev = null;
    this.busy = false;
    this.lastSentAt = -Infinity;
  }

  start() {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), this.intervalMs);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.prev = null;
  }

  async tick() {
    if (this.busy) return;
    const pc = this.getPc();
    if (!pc || pc.connectionState !== "connected") {
      this.prev = null;
      return;
    }
    this.busy = true;
    try {
      const report = await pc.getStats();
      const now = performance.now();
      const cur = collectStats(report);
      const prev = this.prev && this.prev.pc === pc ? this.prev : null;
      const msg = statsMessage(cur, prev && prev.sample, prev ? (now - prev.at) / 1000 : 0);
      this.prev = { pc, at: now, sample: cur };
      // The server takes at most one report a second; a slow getStats() must not bunch two.
      if (now - this.lastSentAt < 1500) return;
      this.lastSentAt = now;
      this.send(msg);
    } catch (err) {
      console.warn("could not read connection statistics", err);
    } finally {
      this.busy = false;
    }
  }
}

/**
 * Measure round trips to the server over the signalling socket: sends `count` pings and
 * resolves with the median in ms, or null when no pong came back within `timeoutMs`.
 */
export function measureRoundTrip(signaling, { count = 3, spacingMs = 250, timeoutMs = 5000 } = {}) {
  return new Promise((resolve) => {
    const sent = new Map();
    const times = [];
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      signaling.off("pong", onPong);
      if (!times.length) resolve(null);
      else {
        times.sort((a, b) => a - b);
        resolve(times[Math.floor(times.length / 2)]);
      }
    };
    const onPong = (msg) => {
      const start = sent.get(msg.t);
      if (start === undefined) return;
      sent.delete(msg.t);
      times.push(performance.now() - start);
      if (times.length >= count) finish();
    };
    signaling.on("pong", onPong);
    const timer = setTimeout(finish, timeoutMs);
    for (let i = 0; i < count; i++) {
      setTimeout(() => {
        if (finished) return;
        // A value no other ping uses, so the matching pong is ours.
        const t = Math.round((Date.now() / 1000 + i / 1000 + Math.random() / 1e4) * 1e6) / 1e6;
        sent.set(t, performance.now());
        if (!signaling.send({ type: "ping", t })) finish();
      }, i * spacingMs);
    }
  });
}
