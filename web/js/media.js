// Camera and microphone, device pickers, a microphone level meter, and the peer connection
// to the media server (one offer from the browser, one answer back; no trickle ICE).

const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } };
const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

function describeMediaError(err, what) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return `Access to your ${what} was blocked. Allow it in your browser's site settings, then reload.`;
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return `No ${what} was found.`;
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return `Your ${what} is in use by another app or could not be started.`;
  }
  return `Your ${what} could not be started.`;
}

/** The local camera + microphone as one MediaStream whose tracks can be swapped. */
export class LocalMedia {
  constructor() {
    this.stream = new MediaStream();
    this.audioDeviceId = "";
    this.videoDeviceId = "";
    this.audioMuted = false;
    this.videoMuted = false;
    this.listeners = new Set();
  }

  /** Called with (kind, track|null) whenever a track is replaced. */
  onTrackChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  track(kind) {
    return this.stream.getTracks().find((t) => t.kind === kind) || null;
  }

  /** Open both devices. Returns a list of human-readable problems (empty when all is well). */
  async start() {
    const problems = [];
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return ["This browser cannot use a camera or microphone here. Try a current Chrome, Firefox, Edge or Safari."];
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: this._audioConstraints(),
        video: this._videoConstraints(),
      });
      for (const track of stream.getTracks()) this._setTrack(track.kind, track);
      return problems;
    } catch {
      // Try each device on its own so one missing device does not cost the other.
    }
    for (const kind of ["audio", "video"]) {
      const msg = await this.switchDevice(kind, kind === "audio" ? this.audioDeviceId : this.videoDeviceId);
      if (msg) problems.push(msg);
    }
    return problems;
  }

  _audioConstraints() {
    return this.audioDeviceId ? { ...AUDIO_CONSTRAINTS, deviceId: { exact: this.audioDeviceId } } : AUDIO_CONSTRAINTS;
  }

  _videoConstraints() {
    return this.videoDeviceId ? { ...VIDEO_CONSTRAINTS, deviceId: { exact: this.videoDeviceId } } : VIDEO_CONSTRAINTS;
  }

  _setTrack(kind, track) {
    const old = this.track(kind);
    if (old && old !== track) {
      this.stream.removeTrack(old);
      old.stop();
    }
    if (track) {
      track.enabled = kind === "audio" ? !this.audioMuted : !this.videoMuted;
      this.stream.addTrack(track);
      const settings = track.getSettings ? track.getSettings() : {};
      if (settings.deviceId) {
        if (kind === "audio") this.audioDeviceId = settings.deviceId;
        else this.videoDeviceId = settings.deviceId;
      }
    }
    for (const fn of this.listeners) fn(kind, track);
  }

  /** (Re)open one device. Returns an error message or "" on success. */
  async switchDevice(kind, deviceId) {
    if (kind === "audio") this.audioDeviceId = deviceId || "";
    else this.videoDeviceId = deviceId || "";
    // Release the old device first: some cameras cannot be opened twice.
    const old = this.track(kind);
    if (old) {
      this.stream.removeTrack(old);
      old.stop();
    }
    try {
      const constraints = kind === "audio"
        ? { audio: this._audioConstraints(), video: false }
        : { audio: false, video: this._videoConstraints() };
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      const track = stream.getTracks().find((t) => t.kind === kind);
      this._setTrack(kind, track || null);
      return "";
    } catch (err) {
      for (const fn of this.listeners) fn(kind, null);
      return describeMediaError(err, kind === "audio" ? "microphone" : "camera");
    }
  }

  setMuted(kind, muted) {
    if (kind === "audio") this.audioMuted = muted;
    else this.videoMuted = muted;
    const track = this.track(kind);
    if (track) track.enabled = !muted;
  }

  stop() {
    for (const track of this.stream.getTracks()) {
      track.stop();
      this.stream.removeTrack(track);
    }
  }
}

/** Fill a <select> with the devices of one kind ("audioinput" / "videoinput"). */
export async function fillDeviceSelect(select, deviceKind, currentId) {
  let devices = [];
  try {
    devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === deviceKind);
  } catch {
    devices = [];
  }
  const noun = deviceKind === "audioinput" ? "Microphone" : "Camera";
  select.replaceChildren();
  if (!devices.length) {
    const opt = document.createElement("option");
    opt.value = "";
    opt.textContent = `No ${noun.toLowerCase()} found`;
    select.append(opt);
    select.disabled = true;
    return;
  }
  select.disabled = false;
  devices.forEach((device, i) => {
    const opt = document.createElement("option");
    opt.value = device.deviceId;
    opt.textContent = device.label || `${noun} ${i + 1}`;
    if (device.deviceId === currentId) opt.selected = true;
    select.append(opt);
  });
}

/** Microphone level meter: WebAudio AnalyserNode → a <meter> (0..1). */
export class MicMeter {
  constructor(meterEl) {
    this.meter = meterEl;
    this.ctx = null;
    this.source = null;
    this.analyser = null;
    this.buffer = null;
    this.timer = null;
    this.level = 0;
  }

  attach(track) {
    this.detach();
    if (!track) {
      this._show(0);
      return;
    }
    try {
      if (!this.ctx) this.ctx = new AudioContext();
      if (this.ctx.state === "suspended") {
        this.ctx.resume().catch(() => {});
        // Browsers may keep audio suspended until the person interacts with the page.
        const wake = () => {
          this.resume();
          document.removeEventListener("pointerdown", wake, true);
          document.removeEventListener("keydown", wake, true);
        };
        document.addEventListener("pointerdown", wake, true);
        document.addEventListener("keydown", wake, true);
      }
      this.source = this.ctx.createMediaStreamSource(new MediaStream([track]));
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = 1024;
      this.analyser.smoothingTimeConstant = 0.3;
      this.buffer = new Float32Array(this.analyser.fftSize);
      this.source.connect(this.analyser);
      this.timer = setInterval(() => this._tick(), 80);
    } catch (err) {
      console.warn("mic meter unavailable", err);
    }
  }

  /** Resume after a user gesture (autoplay policies). */
  resume() {
    if (this.ctx && this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
  }

  _tick() {
    if (!this.analyser) return;
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (let i = 0; i < this.buffer.length; i++) sum += this.buffer[i] * this.buffer[i];
    const rms = Math.sqrt(sum / this.buffer.length);
    // Map roughly -60..0 dBFS onto 0..1 so quiet speech still moves the bar.
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const target = Math.min(1, Math.max(0, (db + 60) / 60));
    // Fast attack, slow release: easier to read.
    this.level = target > this.level ? target : this.level * 0.85 + target * 0.15;
    this._show(this.level);
  }

  _show(level) {
    if (!this.meter) return;
    const rounded = Math.round(level * 100) / 100;
    this.meter.value = rounded;
    this.meter.setAttribute("aria-valuetext", `${Math.round(rounded * 100)} percent`);
  }

  detach() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.source) {
      try {
        this.source.disconnect();
      } catch {
        /* already disconnected */
      }
    }
    this.source = null;
    this.analyser = null;
  }

  close() {
    this.detach();
    this._show(0);
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
  }
}

/**
 * Resolve once ICE gathering is complete, or after `timeoutMs`. With `quietMs`, also once a
 * candidate came and no other followed for `quietMs`: without ICE servers only host candidates
 * can come, within a few ms of each other, while Chromium reports "complete" ~100 ms later;
 * that wait delayed every (re)connection (a worker crash's re-offer among them).
 */
export function waitForIceGathering(pc, timeoutMs = 3000, { quietMs = 0 } = {}) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    let quiet = null;
    const done = () => {
      clearTimeout(timer);
      clearTimeout(quiet);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const onCandidate = (event) => {
      if (!event.candidate) {
        done();
      } else if (quietMs > 0) {
        clearTimeout(quiet);
        quiet = setTimeout(done, quietMs);
      }
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

/** Play a media element; returns false when the browser wants a user gesture first. */
export async function ensurePlaying(video) {
  try {
    await video.play();
    return true;
  } catch (err) {
    if (err && err.name === "NotAllowedError") return false;
    return true; // AbortError etc.: a newer load() superseded this play(); not a policy block.
  }
}

/**
 * One call to the media server. `start()` (re)builds the RTCPeerConnection and sends an offer;
 * `handleAnswer()` applies the server's answer. If the connection fails or stays disconnected
 * for more than `recoverAfterMs` while signalling is open, it rebuilds itself with a new offer.
 * The ICE servers (time-limited TURN credentials) come with every `joined`/`admitted`;
 * `setIce()` keeps the latest for the next `start()`.
 */
export class PeerCall {
  constructor({
    signaling, iceServers = [], iceTransportPolicy = "all", local, remoteVideo, onState, onRemoteStream,
    onRecover, recoverAfterMs = 5000, remoteScreen = null, getScreenTrack = () => null,
  }) {
    this.signaling = signaling;
    this.iceServers = iceServers;
    this.iceTransportPolicy = iceTransportPolicy;
    this.local = local;
    this.remoteVideo = remoteVideo;
    this.onState = onState || (() => {});
    this.onRemoteStream = onRemoteStream || (() => {});
    // Who rebuilds the connection when it fails (the page, so it can show it); default: start().
    this.onRecover = onRecover || (() => this.start());
    this.recoverAfterMs = recoverAfterMs;
    this.pc = null;
    this.senders = { audio: null, video: null };
    this.generation = 0;
    this.recoverTimer = null;
    this.closed = false;
    this.remoteStream = null;
    // Screen sharing (web/js/screen.js): the other person's screen, and ours while we share.
    this.remoteScreen = remoteScreen;
    this.getScreenTrack = getScreenTrack;
    this.screenTransceiver = null;
    this.unsubscribe = local.onTrackChange((kind, track) => this._replaceTrack(kind, track));
  }

  /** Share `track` (a screen) on the screen section, or stop (null): no renegotiation. */
  async setScreenTrack(track) {
    const transceiver = this.screenTransceiver;
    if (!transceiver || !this.pc || this.pc.connectionState === "closed") return;
    try {
      await transceiver.sender.replaceTrack(track || null);
    } catch (err) {
      console.warn("replaceTrack (screen) failed", err);
    }
  }

  /** Use these ICE servers and policy from the next offer on (the current connection keeps its own). */
  setIce({ iceServers = [], iceTransportPolicy = "all" } = {}) {
    this.iceServers = iceServers;
    this.iceTransportPolicy = iceTransportPolicy;
  }

  async start() {
    this.closed = false;
    const generation = ++this.generation;
    this._clearRecover();
    this._closePc();
    this.onState("connecting");

    const pc = new RTCPeerConnection({
      iceServers: this.iceServers || [],
      iceTransportPolicy: this.iceTransportPolicy === "relay" ? "relay" : "all",
    });
    this.pc = pc;
    // A renegotiation keeps showing the old stream (its last frame) until the new one carries
    // media, so a reconnect never flashes to black.
    const remote = new MediaStream();
    if (!this.remoteStream) {
      this.remoteStream = remote;
      this.remoteVideo.srcObject = remote;
    }
    const show = (track) => {
      if (generation !== this.generation || this.remoteStream === remote) return;
      const old = this.remoteStream;
      this.remoteStream = remote;
      this.remoteVideo.srcObject = remote;
      for (const t of old.getTracks()) t.stop();
      this.onRemoteStream(remote, track);
    };

    const stream = this.local.stream;
    for (const kind of ["audio", "video"]) {
      const track = this.local.track(kind);
      if (track) {
        this.senders[kind] = pc.addTrack(track, stream);
      } else {
        // No device: still negotiate the m-line so the server can send us the other's media.
        this.senders[kind] = pc.addTransceiver(kind, { direction: "sendrecv" }).sender;
      }
    }
    // Always a second video section, for a shared screen: it carries nothing until someone
    // shares, and sharing is then a replaceTrack, never a new offer.
    const screenTrack = this.getScreenTrack();
    const screenTransceiver = pc.addTransceiver(screenTrack || "video", { direction: "sendrecv" });
    this.screenTransceiver = screenTransceiver;

    pc.addEventListener("track", (event) => {
      if (generation !== this.generation) return;
      const track = event.track;
      if (event.transceiver === screenTransceiver) {
        // The other person's screen: its own element, shown only while they share. After a
        // renegotiation the old picture stays until the new track carries frames.
        const screen = this.remoteScreen;
        if (!screen) return;
        const showScreen = () => {
          if (generation === this.generation) screen.srcObject = new MediaStream([track]);
        };
        if (!screen.srcObject || !track.muted) showScreen();
        else track.addEventListener("unmute", showScreen, { once: true });
        return;
      }
      const stale = remote.getTracks().filter((t) => t.kind === track.kind);
      for (const t of stale) remote.removeTrack(t);
      remote.addTrack(track);
      if (this.remoteStream === remote) {
        if (this.remoteVideo.srcObject !== remote) this.remoteVideo.srcObject = remote;
        this.onRemoteStream(remote, track);
      } else if (!track.muted) {
        show(track);
      } else {
        track.addEventListener("unmute", () => show(track), { once: true });
      }
    });
    pc.addEventListener("connectionstatechange", () => {
      if (generation !== this.generation) return;
      this._onConnectionState(pc.connectionState);
    });

    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      // Host candidates only (no STUN/TURN): nothing else will come after the first burst.
      const hostOnly = !this.iceServers || this.iceServers.length === 0;
      await waitForIceGathering(pc, 3000, { quietMs: hostOnly ? 40 : 0 });
    } catch (err) {
      console.error("could not create an offer", err);
      this.onState("failed");
      return;
    }
    if (generation !== this.generation || this.closed) return;
    this.signaling.send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  async handleAnswer(sdp) {
    const pc = this.pc;
    if (!pc || pc.signalingState !== "have-local-offer") return;
    try {
      await pc.setRemoteDescription({ type: "answer", sdp });
    } catch (err) {
      console.error("could not apply the answer", err);
      this.onState("failed");
      this._scheduleRecover();
    }
  }

  _onConnectionState(state) {
    if (state === "connected") {
      this._clearRecover();
      this.onState("connected");
    } else if (state === "disconnected" || state === "failed") {
      this.onState(state === "failed" ? "failed" : "reconnecting");
      // Failed is final for this connection: rebuild at once. Disconnected may heal by itself.
      this._scheduleRecover(state === "failed" ? 0 : this.recoverAfterMs);
    } else if (state === "connecting" || state === "new") {
      this.onState("connecting");
    }
  }

  _scheduleRecover(delayMs = this.recoverAfterMs) {
    if (this.closed) return;
    if (this.recoverTimer) {
      if (delayMs > 0) return;
      this._clearRecover();
    }
    this.recoverTimer = setTimeout(() => {
      this.recoverTimer = null;
      if (this.closed || !this.signaling.isOpen) return;
      const state = this.pc ? this.pc.connectionState : "closed";
      if (state === "connected") return;
      this.onState("reconnecting");
      this.onRecover(state === "failed" ? "failed" : "disconnected");
    }, delayMs);
  }

  _clearRecover() {
    if (this.recoverTimer) clearTimeout(this.recoverTimer);
    this.recoverTimer = null;
  }

  async _replaceTrack(kind, track) {
    const sender = this.senders[kind];
    if (!sender || !this.pc || this.pc.connectionState === "closed") return;
    try {
      await sender.replaceTrack(track || null);
      if (track) {
        try {
          sender.setStreams(this.local.stream);
        } catch {
          /* setStreams is optional */
        }
      }
    } catch (err) {
      console.warn("replaceTrack failed", err);
    }
  }

  _closePc() {
    if (!this.pc) return;
    try {
      this.pc.close();
    } catch {
      /* already closed */
    }
    this.pc = null;
    this.senders = { audio: null, video: null };
    this.screenTransceiver = null;
  }

  close() {
    this.closed = true;
    this.generation++;
    this._clearRecover();
    this._closePc();
    if (this.remoteStream) {
      for (const t of this.remoteStream.getTracks()) t.stop();
    }
    this.remoteVideo.srcObject = null;
    this.remoteStream = null;
    if (this.remoteScreen) this.remoteScreen.srcObject = null;
    this.onState("closed");
  }

  dispose() {
    this.close();
    if (this.unsubscribe) this.unsubscribe();
  }
}
