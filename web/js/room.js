// Therapist room: /sessions/{id}

import {
  api, ApiError, byTestId, copyText, formatDateTime, h, loginUrl, pathParam, recallInvite,
  rememberInvite, showMessage,
} from "./api.js";
import { Signaling } from "./signaling.js";
import { LocalMedia, PeerCall } from "./media.js";
import {
  announcer, setConnectionStatus, setupDevices, setupMuteButtons, setupRemotePlayback,
} from "./callui.js";
import { setupAgenda } from "./agenda.js";
import { setupPanel } from "./panel.js";
import { QualityIndicator, StatsReporter } from "./quality.js";

const sessionId = pathParam("/sessions/");

const el = {
  label: byTestId("session-label"),
  conn: byTestId("connection-status"),
  error: byTestId("error-message"),
  stage: byTestId("stage"),
  stageMessage: byTestId("stage-message"),
  remote: byTestId("remote-video"),
  self: byTestId("self-video"),
  play: byTestId("play-button"),
  takeoverPanel: byTestId("takeover-panel"),
  takeover: byTestId("takeover-button"),
  endPanel: byTestId("end-panel"),
  endTitle: byTestId("end-title"),
  endDetail: byTestId("end-detail"),
  endActions: byTestId("end-actions"),
  main: byTestId("room-main"),
  side: byTestId("side-panel"),
  peer: byTestId("peer-status"),
  lobby: byTestId("lobby"),
  lobbySection: byTestId("lobby-section"),
  linkSection: byTestId("link-section"),
  lobbyEmpty: byTestId("lobby-empty"),
  inviteBox: byTestId("invite-box"),
  inviteUrl: byTestId("invite-url"),
  newLinkBox: byTestId("new-link-box"),
  newLink: byTestId("new-link-button"),
  inviteStatus: byTestId("invite-status"),
  camera: byTestId("camera-select"),
  mic: byTestId("mic-select"),
  meter: byTestId("mic-level"),
  controls: byTestId("controls"),
  muteAudio: byTestId("mute-audio"),
  muteVideo: byTestId("mute-video"),
  copyLink: byTestId("copy-link"),
  leave: byTestId("leave-button"),
  end: byTestId("end-button"),
  announcer: byTestId("announcer"),
  agenda: byTestId("agenda"),
  qualityYou: byTestId("quality-you"),
  qualityPeer: byTestId("quality-peer"),
};

const announce = announcer(el.announcer);
const local = new LocalMedia();
const state = {
  signaling: null,
  welcome: null,
  call: null,
  joined: false,
  finished: false, // ended, left, replaced or fatal: nothing more happens on this page
  endRequested: false,
  leaving: false,
  peer: { present: false, everPresent: false },
  lobbyIds: new Set(),
  linkWanted: false,
};

function showError(message) {
  showMessage(el.error, message, "error");
}

const sendMessage = (msg) => Boolean(state.signaling && state.signaling.send(msg));

const panel = setupPanel({ sessionId, send: sendMessage, announce, onProblem: showError });
const agenda = setupAgenda({
  root: el.agenda, role: "therapist", send: sendMessage, onProblem: showError, announce,
});
const quality = new QualityIndicator({
  youEl: el.qualityYou,
  peerEl: el.qualityPeer,
  peerName: "Client",
  onChange: (now, before) => {
    const bad = (label) => label === "poor" || label === "lost";
    if (bad(now.you) && !bad(before.you)) announce(`Your connection is ${now.you}.`);
    if (bad(now.peer) && !bad(before.peer)) announce(`Your client's connection is ${now.peer}.`);
  },
});
const stats = new StatsReporter({
  getPc: () => (state.call ? state.call.pc : null),
  send: sendMessage,
});

// ---------- stage text ----------
function setStageMessage(lead, detail = "") {
  const wrap = el.stageMessage;
  if (!lead) {
    wrap.replaceChildren();
    wrap.parentElement.hidden = true;
    return;
  }
  wrap.parentElement.hidden = false;
  wrap.replaceChildren(h("p", { class: "lead" }, lead), detail ? h("p", {}, detail) : null);
}

function renderStage() {
  if (state.finished) return;
  if (!state.joined) {
    setStageMessage("Opening the session…");
  } else if (!state.peer.present && state.lobbyIds.size > 0) {
    setStageMessage(
      state.lobbyIds.size === 1 ? "Someone is in the waiting room." : `${state.lobbyIds.size} people are in the waiting room.`,
      "Admit or deny them from the waiting room panel.",
    );
  } else if (!state.peer.present) {
    if (state.peer.everPresent) {
      setStageMessage("Your client has left the room.", "They can come back with the same link; you will not need to admit them again.");
    } else {
      setStageMessage("Waiting for your client.", "Share the client link. When they arrive, admit them from the waiting room.");
    }
  } else {
    setStageMessage("");
  }
}

/** Cover the stage with a final message (ended / left / replaced / fatal error). */
function showEndPanel({ title, detail = "", testid, actions = [] }) {
  el.takeoverPanel.hidden = true;
  el.endTitle.textContent = title;
  el.endTitle.setAttribute("data-testid", testid);
  el.endDetail.textContent = detail;
  el.endDetail.hidden = !detail;
  el.endActions.replaceChildren(...actions);
  el.endPanel.hidden = false;
  el.controls.hidden = true;
  // Nothing in the side panel is current any more.
  el.side.hidden = true;
  el.main.classList.add("no-side");
  setStageMessage("");
  const focusable = el.endActions.querySelector("a, button");
  if (focusable) focusable.focus();
}

function stopEverything() {
  state.finished = true;
  stats.stop();
  panel.stop();
  agenda.flush();
  quality.clear();
  if (state.call) state.call.dispose();
  state.call = null;
  local.stop();
  devices.meter.close();
  el.self.srcObject = null;
  renderLobby([]);
}

function sessionsLink(kind = "btn-primary") {
  return h("a", { class: `btn ${kind}`, href: "/sessions" }, "Back to sessions");
}

function summaryLink() {
  return h("a", {
    class: "btn btn-primary", href: `/sessions/${encodeURIComponent(sessionId)}/summary`, "data-testid": "summary-link",
  }, "View summary");
}

function finishEnded() {
  if (state.finished && !el.endPanel.hidden && el.endTitle.dataset.testid === "ended-message") return;
  stopEverything();
  if (state.signaling) state.signaling.close();
  setConnectionStatus(el.conn, "ended");
  showEndPanel({
    title: "Session ended",
    detail: "The call is over and the client's link no longer works.",
    testid: "ended-message",
    actions: [summaryLink(), " ", sessionsLink("btn-secondary")],
  });
}

// ---------- peer status ----------
function renderLobbySection() {
  // Once the client is in, an empty waiting room is only noise.
  el.lobbySection.hidden = state.lobbyIds.size === 0 && state.peer.present;
  // Likewise the client link, unless the therapist asked for it ("Copy client link").
  el.linkSection.hidden = state.peer.present && !state.linkWanted;
}

function renderPeer(p) {
  state.peer.present = Boolean(p.present);
  if (p.present) state.peer.everPresent = true;
  let text;
  if (!p.present) {
    text = state.peer.everPresent ? "Your client left the room." : "Your client has not joined yet.";
  } else {
    const parts = ["In the room"];
    const media = {
      none: "joining the call…",
      connecting: "connecting…",
      connected: "connected",
      lost: "connection lost, waiting for them to reconnect",
    }[p.media];
    if (media) parts.push(media);
    if (p.audio_muted) parts.push("microphone off");
    if (p.video_muted) parts.push("camera off");
    text = parts.join(" · ");
  }
  el.peer.textContent = text;
  el.peer.dataset.present = String(Boolean(p.present));
  el.peer.dataset.media = p.media || "none";
  renderLobbySection();
  renderStage();
}

// ---------- waiting room ----------
function waitingSinceText(value) {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 1e9) return "";
  const date = new Date(value * 1000);
  return `Waiting since ${date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

function renderLobby(waiting) {
  const entries = Array.isArray(waiting) ? waiting : [];
  const seen = new Set();
  el.lobby.replaceChildren(
    ...entries.map((entry) => {
      const id = entry.participant_id;
      seen.add(id);
      const name = (entry.display_name || "").trim() || "Client";
      if (!state.lobbyIds.has(id)) announce(`${name} is in the waiting room.`);
      const since = waitingSinceText(entry.waiting_since);
      const admit = h("button", {
        type: "button", class: "btn btn-primary btn-small", "data-testid": "admit-button",
        "data-participant-id": id, "aria-label": `Admit ${name}`,
      }, "Admit");
      const deny = h("button", {
        type: "button", class: "btn btn-secondary btn-small", "data-testid": "deny-button",
        "data-participant-id": id, "aria-label": `Deny ${name}`,
      }, "Deny");
      const decide = (type) => () => {
        if (!state.signaling || !state.signaling.send({ type, participant_id: id })) {
          showError("Not connected to the server. Reload the page and try again.");
          return;
        }
        admit.disabled = true;
        deny.disabled = true;
      };
      admit.addEventListener("click", decide("admit"));
      deny.addEventListener("click", decide("deny"));
      return h("li", { class: "lobby-entry", "data-testid": "lobby-entry", "data-participant-id": id },
        h("div", { class: "who" }, name),
        entry.returning ? h("div", { class: "since" }, "Returning: has been in this session before") : null,
        since ? h("div", { class: "since" }, since) : null,
        h("div", { class: "actions" }, admit, deny));
    }),
  );
  state.lobbyIds = seen;
  el.lobbyEmpty.hidden = entries.length > 0;
  renderLobbySection();
  renderStage();
}

// ---------- client link ----------
function showInvite(url) {
  el.inviteUrl.textContent = url;
  el.inviteBox.hidden = false;
}

async function copyInvite(url) {
  const ok = await copyText(url);
  el.inviteStatus.textContent = ok
    ? "Link copied. Send it to your client."
    : "Select the link above and copy it to send it to your client.";
}

el.copyLink.addEventListener("click", async () => {
  state.linkWanted = true;
  renderLobbySection();
  const url = recallInvite(sessionId);
  if (url) {
    showInvite(url);
    el.newLinkBox.hidden = true;
    await copyInvite(url);
  } else {
    el.newLinkBox.hidden = false;
    el.inviteStatus.textContent = "";
    el.newLink.focus();
  }
});

el.newLink.addEventListener("click", async () => {
  el.newLink.disabled = true;
  try {
    const res = await api(`/api/sessions/${encodeURIComponent(sessionId)}/invite`, { method: "POST" });
    rememberInvite(sessionId, res.invite_url);
    showInvite(res.invite_url);
    el.newLinkBox.hidden = true;
    await copyInvite(res.invite_url);
    if (res.invite_expires_at) {
      el.inviteStatus.textContent += ` It works until ${formatDateTime(res.invite_expires_at)}.`;
    }
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err.message);
  } finally {
    el.newLink.disabled = false;
  }
});

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
  if (state.signaling) {
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

el.leave.addEventListener("click", () => {
  if (state.finished) return;
  state.leaving = true;
  const sig = state.signaling;
  const sent = sig ? sig.send({ type: "leave" }) : false;
  stopEverything();
  setConnectionStatus(el.conn, "closed");
  const rejoin = h("button", { type: "button", class: "btn btn-primary", "data-testid": "rejoin-button" }, "Rejoin");
  rejoin.addEventListener("click", () => location.reload());
  showEndPanel({
    title: "You left the session",
    detail: "The session is still open. You can rejoin at any time, or end it from the room.",
    testid: "left-message",
    actions: [rejoin, " ", h("a", { class: "btn btn-secondary", href: "/sessions" }, "Back to sessions")],
  });
  // Give the server a moment to acknowledge with "left" before closing.
  if (sig && sent) setTimeout(() => sig.close(), 2000);
  else if (sig) sig.close();
});

el.end.addEventListener("click", () => {
  if (state.finished) return;
  if (!state.signaling || !state.signaling.send({ type: "end" })) {
    showError("Not connected to the server, so the session could not be ended. Reload and try again.");
    return;
  }
  state.endRequested = true;
  el.end.disabled = true;
  el.end.setAttribute("aria-busy", "true");
});

el.takeover.addEventListener("click", () => {
  if (state.signaling && state.signaling.send({ type: "join", takeover: true })) {
    el.takeover.disabled = true;
  }
});

// ---------- signalling ----------
let mediaReady = Promise.resolve();

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
        if (!state.finished) setConnectionStatus(el.conn, s);
      },
      onRemoteStream: () => playback.tryPlay(),
    });
  }
  await state.call.start();
  if (local.audioMuted || local.videoMuted) sendMute();
}

function connect() {
  const sig = new Signaling(`/ws/sessions/${encodeURIComponent(sessionId)}`);
  state.signaling = sig;

  sig.on("welcome", (msg) => {
    state.welcome = msg;
    if (msg.status === "ended") {
      finishEnded();
      return;
    }
    sig.send({ type: "join" });
  });

  sig.on("joined", () => {
    state.joined = true;
    el.takeoverPanel.hidden = true;
    el.takeover.disabled = false;
    showError("");
    renderStage();
    panel.start();
    stats.start();
    startCall();
  });

  sig.on("answer", (msg) => {
    if (state.call) state.call.handleAnswer(msg.sdp);
  });

  sig.on("signals", (msg) => {
    if (!state.finished) panel.onSignals(msg);
  });

  sig.on("speaking", (msg) => {
    if (!state.finished) panel.onSpeaking(msg);
  });

  sig.on("agenda", (msg) => {
    if (!state.finished) agenda.update(msg);
  });

  sig.on("quality", (msg) => {
    if (!state.finished) quality.update(msg);
  });

  sig.on("lobby", (msg) => {
    if (!state.finished) renderLobby(msg.waiting);
  });

  sig.on("peer_state", (msg) => {
    if (msg.role === "client" && !state.finished) renderPeer(msg);
  });

  sig.on("ended", () => finishEnded());

  sig.on("left", () => sig.close());

  sig.on("replaced", (msg) => {
    stopEverything();
    sig.close();
    setConnectionStatus(el.conn, "closed");
    const again = h("button", { type: "button", class: "btn btn-primary", "data-testid": "reload-button" }, "Use this tab instead");
    again.addEventListener("click", () => location.reload());
    showEndPanel({
      title: "This session moved to another tab",
      detail: msg.message || "",
      testid: "replaced-message",
      actions: [again],
    });
  });

  sig.on("error", (msg) => {
    if (msg.code === "already_connected") {
      setStageMessage("");
      el.takeoverPanel.hidden = false;
      el.takeover.disabled = false;
      el.takeover.focus();
      return;
    }
    if (msg.code === "session_ended") {
      finishEnded();
      return;
    }
    if (msg.ref === "stats") {
      // Our own background quality report was refused; nothing the therapist can act on.
      console.warn("stats report refused:", msg.message);
      return;
    }
    if (msg.code === "unauthorized") {
      state.finished = true;
      location.assign(loginUrl());
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
        actions: [sessionsLink()],
      });
    }
  });

  sig.on("close", async (info) => {
    if (state.finished) return;
    if (state.endRequested) {
      finishEnded();
      return;
    }
    stopEverything();
    if (!info.receivedAny) {
      // Refused before the welcome: maybe the login expired.
      try {
        await api("/api/me");
      } catch {
        return; // api() redirected to the login page on 401
      }
    }
    setConnectionStatus(el.conn, "offline");
    const reconnect = h("button", { type: "button", class: "btn btn-primary", "data-testid": "reconnect-button" }, "Reconnect");
    reconnect.addEventListener("click", () => location.reload());
    showEndPanel({
      title: "Disconnected from the server",
      detail: "Your connection to Rapport was lost. Reconnect to continue the session.",
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
  if (!sessionId) {
    showEndPanel({ title: "No session here", detail: "This address does not point to a session.", testid: "fatal-message", actions: [sessionsLink()] });
    return;
  }
  let session;
  try {
    session = await api(`/api/sessions/${encodeURIComponent(sessionId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // redirecting to login
    const notFound = err instanceof ApiError && (err.status === 404 || err.status === 403);
    showEndPanel({
      title: notFound ? "Session not found" : "The session could not be opened",
      detail: notFound ? "It may belong to another therapist or have been removed." : err.message,
      testid: "fatal-message",
      actions: [sessionsLink()],
    });
    setConnectionStatus(el.conn, "closed");
    return;
  }
  const label = (session.client_label || "").trim();
  el.label.textContent = label ? `Session with ${label}` : "Session";
  document.title = `${label ? `${label} · ` : ""}Session room · Rapport`;

  const known = recallInvite(sessionId);
  if (known) showInvite(known);

  if (session.status === "ended") {
    finishEnded();
    return;
  }

  mediaReady = local.start().then(async (problems) => {
    if (problems.length) showError(problems.join(" "));
    await devices.refresh();
  });
  renderStage();
  panel.loadPrefs();
  connect();
}

main();
