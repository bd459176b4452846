// Client page: /join/{token} — device check, waiting room, call.

import { byTestId, h, pathParam, showMessage } from "./api.js";
import { Signaling } from "./signaling.js";
import { LocalMedia, PeerCall } from "./media.js";
import { setConnectionStatus, setupDevices, setupMuteButtons, setupRemotePlayback } from "./callui.js";
import { setupAgenda } from "./agenda.js";
import { checkinStatus, showCheckin } from "./checkin.js";
import { measureRoundTrip, QualityIndicator, StatsReporter } from "./quality.js";
import { formatShare } from "./charts.js";

const token = pathParam("/join/");

const el = {
  conn: byTestId("connection-status"),
  error: byTestId("error-message"),
  main: byTestId("room-main"),
  stage: byTestId("stage"),
  stageMessage: byTestId("stage-message"),
  remote: byTestId("remote-video"),
  self: byTestId("self-video"),
  play: byTestId("play-button"),
  endPanel: byTestId("end-panel"),
  endTitle: byTestId("end-title"),
  endDetail: byTestId("end-detail"),
  endActions: byTestId("end-actions"),
  panel: byTestId("device-panel"),
  form: byTestId("join-form"),
  hint: byTestId("precall-hint"),
  checkTitle: document.getElementById("check-title"),
  camera: byTestId("camera-select"),
  mic: byTestId("mic-select"),
  meter: byTestId("mic-level"),
  nameField: byTestId("name-field"),
  name: byTestId("display-name"),
  join: byTestId("join-button"),
  waiting: byTestId("waiting-message"),
  controls: byTestId("controls"),
  muteAudio: byTestId("mute-audio"),
  muteVideo: byTestId("mute-video"),
  devicesButton: byTestId("devices-button"),
  leave: byTestId("leave-button"),
  sideStack: byTestId("side-stack"),
  callPanel: byTestId("call-panel"),
  agenda: byTestId("agenda"),
  shared: byTestId("shared-balance"),
  sharedFill: byTestId("shared-fill"),
  sharedYou: byTestId("shared-you"),
  sharedThem: byTestId("shared-them"),
  precheck: byTestId("precheck"),
  checkin: byTestId("checkin"),
  qualityYou: byTestId("quality-you"),
  qualityPeer: byTestId("quality-peer"),
};

const local = new LocalMedia();
const state = {
  signaling: null,
  welcome: null,
  call: null,
  phase: "precall", // precall → joining → waiting → call; or finished
  finished: false,
  therapistPresent: true,
  mediaConnected: false,
};

function showError(message) {
  showMessage(el.error, message, "error");
}

const sendMessage = (msg) => Boolean(state.signaling && state.signaling.send(msg));
const agenda = setupAgenda({ root: el.agenda, role: "client", send: sendMessage, onProblem: showError });
const quality = new QualityIndicator({ youEl: el.qualityYou, peerEl: el.qualityPeer, peerName: "Therapist" });
const stats = new StatsReporter({
  getPc: () => (state.call ? state.call.pc : null),
  send: sendMessage,
});

/** The side column shows the device panel, the call panel, both, or nothing. */
function layoutSide() {
  const any = !el.panel.hidden || !el.callPanel.hidden;
  el.sideStack.hidden = !any;
  el.main.classList.toggle("no-side", !any);
}

// ---------- shared talk balance (only while the therapist shares it) ----------
function renderShared(msg) {
  const on = Boolean(msg && msg.on);
  el.shared.hidden = !on;
  if (!on) return;
  const share = msg.client_share;
  const known = share !== null && share !== undefined;
  el.sharedFill.style.width = known ? `${Math.max(0, Math.min(100, share * 100))}%` : "0";
  el.sharedYou.textContent = formatShare(share);
  el.sharedThem.textContent = known ? formatShare(1 - share) : "–";
}

function setStageMessage(lead, detail = "") {
  const overlay = el.stageMessage.parentElement;
  if (!lead) {
    overlay.hidden = true;
    el.stageMessage.replaceChildren();
    return;
  }
  overlay.hidden = false;
  el.stageMessage.replaceChildren(h("p", { class: "lead" }, lead), detail ? h("p", {}, detail) : null);
}

function renderCallStage() {
  if (state.phase !== "call" || state.finished) return;
  if (!state.therapistPresent) {
    setStageMessage("Your therapist will be with you shortly.", "Please stay on this page.");
  } else if (!state.mediaConnected) {
    setStageMessage("Connecting to your therapist…");
  } else {
    setStageMessage("");
  }
}

function showEndPanel({ title, detail = "", testid, detailTestid = "end-detail", actions = [] }) {
  el.endTitle.textContent = title;
  el.endTitle.setAttribute("data-testid", testid);
  el.endDetail.setAttribute("data-testid", detailTestid);
  el.endDetail.textContent = detail;
  el.endDetail.hidden = !detail;
  el.endActions.replaceChildren(...actions);
  el.endPanel.hidden = false;
  el.controls.hidden = true;
  el.panel.hidden = true;
  el.callPanel.hidden = true;
  layoutSide();
  el.stage.classList.remove("precall");
  setStageMessage("");
  const focusable = el.endActions.querySelector("a, button");
  if (focusable) focusable.focus();
}

function stopEverything() {
  state.finished = true;
  stats.stop();
  quality.clear();
  precheck.stop();
  if (state.call) state.call.dispose();
  state.call = null;
  local.stop();
  devices.meter.close();
  el.self.srcObject = null;
  el.join.disabled = true;
}

function hideRoom() {
  el.main.hidden = true;
  el.controls.hidden = true;
  showMessage(el.error, "");
}

function finishEnded(checkin = false) {
  if (state.finished && (el.endTitle.dataset.testid === "ended-message" || !el.checkin.hidden)) return;
  stopEverything();
  if (state.signaling) state.signaling.close();
  setConnectionStatus(el.conn, "ended");
  if (checkin) {
    showCheckin({ view: el.checkin, token, hideRest: hideRoom });
    return;
  }
  showEndPanel({
    title: "The session has ended",
    detail: "Thank you. You can close this window now.",
    testid: "ended-message",
  });
}

// ---------- devices and controls ----------
const devices = setupDevices({
  local,
  cameraSelect: el.camera,
  micSelect: el.mic,
  meterEl: el.meter,
  selfVideo: el.self,
  onProblem: (msg) => showError(msg),
});

function sendMute() {
  if (state.signaling && state.phase === "call") {
    state.signaling.send({ type: "mute", audio: local.audioMuted, video: local.videoMuted });
  }
}

setupMuteButtons({
  local,
  audioButton: el.muteAudio,
  videoButton: el.muteVideo,
  onChange: sendMute,
  showSelf: devices.showSelf,
});

const playback = setupRemotePlayback(el.remote, el.play);

el.devicesButton.addEventListener("click", () => {
  const open = el.panel.hidden;
  el.panel.hidden = !open;
  layoutSide();
  el.devicesButton.setAttribute("aria-expanded", String(open));
  if (open) el.camera.focus();
});

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.phase !== "precall" || state.finished) return;
  devices.meter.resume();
  const name = el.name.value.trim();
  const msg = { type: "join" };
  if (name) msg.display_name = name.slice(0, 80);
  if (!state.signaling || !state.signaling.send(msg)) {
    showError("Not connected to the server. Reload the page and try again.");
    return;
  }
  state.phase = "joining";
  el.join.disabled = true;
  el.join.textContent = "Joining…";
});

el.leave.addEventListener("click", () => {
  if (state.finished) return;
  const sig = state.signaling;
  const sent = sig ? sig.send({ type: "leave" }) : false;
  stopEverything();
  setConnectionStatus(el.conn, "closed");
  const rejoin = h("button", { type: "button", class: "btn btn-primary", "data-testid": "rejoin-button" }, "Rejoin");
  rejoin.addEventListener("click", () => location.reload());
  showEndPanel({
    title: "You left the session",
    detail: "You can rejoin while the session is still open.",
    testid: "left-message",
    actions: [rejoin],
  });
  if (sig && sent) setTimeout(() => sig.close(), 2000);
  else if (sig) sig.close();
});

// ---------- pre-join connection check ----------
const precheck = (() => {
  const items = {
    camera: byTestId("precheck-camera"),
    mic: byTestId("precheck-mic"),
    network: byTestId("precheck-network"),
  };
  const timers = new Set();
  let stopped = false;
  const set = (key, stateName, text) => {
    const item = items[key];
    if (item.dataset.state === stateName && item.querySelector(".pc-text").textContent === text) return;
    item.dataset.state = stateName;
    item.querySelector(".pc-text").textContent = text;
  };
  const later = (fn, ms) => {
    const id = setTimeout(() => { timers.delete(id); if (!stopped) fn(); }, ms);
    timers.add(id);
  };

  function watchCamera(started) {
    const track = local.track("video");
    if (!track) {
      set("camera", "problem", "We can't find a camera. Check it is plugged in and that this site may use it.");
      return;
    }
    if (local.videoMuted) {
      set("camera", "warn", "Your camera is turned off. Turn it on so your therapist can see you.");
    } else if (track.readyState === "live" && el.self.videoWidth > 0 && !track.muted) {
      set("camera", "ok", "Your camera is working.");
    } else if (performance.now() - started > 8000) {
      set("camera", "problem", "We can't see a picture from your camera. Check it isn't covered or used by another app.");
    }
    later(() => watchCamera(started), 700);
  }

  function watchMic(started) {
    const track = local.track("audio");
    if (!track) {
      set("mic", "problem", "We can't find a microphone. Check it is plugged in and that this site may use it.");
      return;
    }
    const meter = devices.meter;
    const level = Number(el.meter.value) || 0;
    if (local.audioMuted) {
      set("mic", "warn", "Your microphone is muted. Unmute it so your therapist can hear you.");
    } else if (level > 0.15) {
      set("mic", "ok", "We can hear your microphone.");
      started = performance.now(); // keep listening: say so if it goes quiet for long
    } else if (meter.ctx && meter.ctx.state === "suspended") {
      set("mic", "checking", "Click anywhere on the page, then say something to test your microphone.");
    } else if (performance.now() - started > 10000) {
      set("mic", "warn", "We can't hear your microphone — check it isn't muted, and say something.");
    }
    later(() => watchMic(started), 400);
  }

  return {
    devices() {
      if (stopped) return;
      watchCamera(performance.now());
      watchMic(performance.now());
    },
    async network() {
      if (stopped || !state.signaling) return;
      set("network", "checking", "Checking your connection to the server…");
      const rtt = await measureRoundTrip(state.signaling);
      if (stopped) return;
      const item = items.network;
      if (rtt === null) {
        delete item.dataset.rttMs;
        set("network", "problem", "We couldn't reach the server. Check your internet connection.");
        return;
      }
      const ms = Math.max(1, Math.round(rtt));
      item.dataset.rttMs = String(ms);
      if (ms < 250) set("network", "ok", `Your connection to the server is good (${ms} ms).`);
      else if (ms < 600) set("network", "warn", `Your connection to the server is a little slow (${ms} ms). The call should still work.`);
      else set("network", "problem", `Your connection to the server is slow (${ms} ms). Moving closer to your Wi-Fi or closing other downloads can help.`);
    },
    stop() {
      stopped = true;
      for (const id of timers) clearTimeout(id);
      timers.clear();
    },
  };
})();

// ---------- call ----------
let mediaReady = Promise.resolve();

function enterCall() {
  state.phase = "call";
  precheck.stop();
  el.waiting.hidden = true;
  el.stage.classList.remove("precall");
  el.panel.hidden = true;
  el.callPanel.hidden = false;
  layoutSide();
  el.devicesButton.setAttribute("aria-expanded", "false");
  // The device panel now only switches devices.
  el.join.hidden = true;
  el.nameField.hidden = true;
  el.hint.hidden = true;
  el.precheck.hidden = true;
  el.checkTitle.textContent = "Camera and microphone";
  el.controls.hidden = false;
  renderCallStage();
  stats.start();
  startCall();
}

async function startCall() {
  await mediaReady;
  if (state.finished) return;
  if (!state.call) {
    state.call = new PeerCall({
      signaling: state.signaling,
      iceServers: (state.welcome && state.welcome.ice_servers) || [],
      local,
      remoteVideo: el.remote,
      onState: (s) => {
        if (state.finished) return;
        setConnectionStatus(el.conn, s);
        state.mediaConnected = s === "connected";
        renderCallStage();
      },
      onRemoteStream: () => playback.tryPlay(),
    });
  }
  await state.call.start();
  if (local.audioMuted || local.videoMuted) sendMute();
}

// ---------- signalling ----------
function connect() {
  const sig = new Signaling(`/ws/join/${encodeURIComponent(token)}`);
  state.signaling = sig;

  sig.on("welcome", (msg) => {
    state.welcome = msg;
    if (msg.status === "ended") {
      finishEnded();
      return;
    }
    setConnectionStatus(el.conn, "idle");
    el.conn.textContent = "Ready";
    el.join.disabled = false;
    precheck.network();
  });

  sig.on("agenda", (msg) => {
    if (!state.finished) agenda.update(msg);
  });

  sig.on("shared_balance", (msg) => {
    if (!state.finished) renderShared(msg);
  });

  sig.on("quality", (msg) => {
    if (!state.finished) quality.update(msg);
  });

  sig.on("waiting", (msg) => {
    if (state.finished) return;
    state.phase = "waiting";
    el.join.hidden = true;
    el.nameField.hidden = true;
    const lines = [h("strong", {}, "Waiting for your therapist to let you in…")];
    if (msg.therapist_present === false) {
      lines.push(h("span", { class: "muted-line" }, " Your therapist hasn't opened the session yet. Please keep this page open."));
    }
    el.waiting.replaceChildren(...lines);
    el.waiting.hidden = false;
  });

  sig.on("admitted", () => {
    if (state.finished) return;
    enterCall();
  });

  sig.on("answer", (msg) => {
    if (state.call) state.call.handleAnswer(msg.sdp);
  });

  sig.on("peer_state", (msg) => {
    if (msg.role !== "therapist") return;
    state.therapistPresent = Boolean(msg.present);
    renderCallStage();
  });

  sig.on("denied", (msg) => {
    stopEverything();
    sig.close();
    setConnectionStatus(el.conn, "closed");
    el.waiting.hidden = true;
    showEndPanel({
      title: "You could not join this session",
      detail: msg.message || "Your therapist could not admit you to this session.",
      testid: "denied-title",
      detailTestid: "denied-message",
    });
  });

  sig.on("ended", (msg) => finishEnded(Boolean(msg.checkin)));

  sig.on("left", () => sig.close());

  sig.on("replaced", (msg) => {
    stopEverything();
    sig.close();
    setConnectionStatus(el.conn, "closed");
    showEndPanel({
      title: "This session was opened somewhere else",
      detail: msg.message || "It continues in another tab or on another device.",
      testid: "replaced-message",
    });
  });

  sig.on("error", (msg) => {
    if (msg.ref === "stats") {
      console.warn("stats report refused:", msg.message);
      return;
    }
    if (msg.code === "session_ended") {
      finishEnded();
      return;
    }
    showError(msg.message || "Something went wrong.");
    if (msg.fatal) {
      stopEverything();
      sig.close();
      setConnectionStatus(el.conn, "closed");
      showEndPanel({
        title: "The session could not continue",
        detail: msg.message || "",
        testid: "fatal-message",
      });
    }
  });

  sig.on("close", (info) => {
    if (state.finished) return;
    stopEverything();
    setConnectionStatus(el.conn, "offline");
    if (!info.receivedAny) {
      showEndPanel({
        title: "This link could not be opened",
        detail: "It may have expired or been replaced. Please ask your therapist for a new link.",
        testid: "fatal-message",
      });
      return;
    }
    const reconnect = h("button", { type: "button", class: "btn btn-primary", "data-testid": "reconnect-button" }, "Reconnect");
    reconnect.addEventListener("click", () => location.reload());
    showEndPanel({
      title: "Disconnected",
      detail: "The connection to the session was lost.",
      testid: "disconnected-message",
      actions: [reconnect],
    });
  });

  setConnectionStatus(el.conn, "signalling");
  sig.connect().catch(() => {
    /* the close handler explains what happened */
  });
}

async function main() {
  if (!token) {
    showEndPanel({
      title: "This link is incomplete",
      detail: "Please open the full link your therapist sent you.",
      testid: "fatal-message",
    });
    return;
  }
  // The server serves this page for an ended session only while this browser's check-in is
  // still open: then there is nothing to join, and the camera stays off.
  let status = null;
  try {
    status = await checkinStatus(token);
  } catch {
    status = null;
  }
  if (status && status.open) {
    state.finished = true;
    setConnectionStatus(el.conn, "ended");
    showCheckin({ view: el.checkin, token, status, hideRest: hideRoom });
    return;
  }
  mediaReady = local.start().then(async (problems) => {
    if (problems.length) showError(problems.join(" "));
    await devices.refresh();
    precheck.devices();
  });
  connect();
}

main();
