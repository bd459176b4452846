// Client page: /join/{token} — device check, waiting room, call.
// The call itself (stage, devices, mute, leave, signalling, PeerCall) is call.js; this file
// adds what only the client has: the pre-join check, the waiting room, the shared talk
// balance and the check-in after the session.

import { byTestId, h, pathParam } from "./api.js";
import { setConnectionStatus } from "./callui.js";
import { createCallPage, reloadButton } from "./call.js";
import { checkinStatus, showCheckin } from "./checkin.js";
import { measureRoundTrip } from "./quality.js";
import { formatShare } from "./charts.js";
import { setupChat } from "./chat.js";

const token = pathParam("/join/");

const el = {
  panel: byTestId("device-panel"),
  form: byTestId("join-form"),
  hint: byTestId("precall-hint"),
  checkTitle: document.getElementById("check-title"),
  nameField: byTestId("name-field"),
  name: byTestId("display-name"),
  join: byTestId("join-button"),
  waiting: byTestId("waiting-message"),
  devicesButton: byTestId("devices-button"),
  sideStack: byTestId("side-stack"),
  callPanel: byTestId("call-panel"),
  shared: byTestId("shared-balance"),
  sharedFill: byTestId("shared-fill"),
  sharedYou: byTestId("shared-you"),
  sharedThem: byTestId("shared-them"),
  precheck: byTestId("precheck"),
  details: byTestId("device-details"),
  checkin: byTestId("checkin"),
};

// Whom the client knows the session by (the server names the therapist on this page).
const therapistName = (byTestId("side-stack").dataset.therapistName || "").trim();
const who = therapistName || "your therapist";
const Who = therapistName || "Your therapist";

/** What only the client page tracks; the shared call state is page.state. */
const state = {
  phase: "precall", // precall → joining → waiting → call
  therapistPresent: true,
  therapistReconnecting: false,
  mediaConnected: false,
};

// Refusals in plain words: what happened, never the client's fault, and what to do next.
const REFUSALS = {
  invite_revoked: {
    title: "This link was replaced",
    detail: `${Who} made a new link for this session. Please ask ${therapistName ? "them" : "your therapist"} for it.`,
  },
  expired: {
    title: "This link has expired",
    detail: `Links to a session only work for a limited time. Please ask ${who} for a new link.`,
  },
  denied: {
    title: "You could not join this session",
    detail: `${Who} could not admit you to this session. If you expected to meet, please contact ${therapistName ? "them" : "your therapist"} directly.`,
  },
  lobby_full: {
    title: "The waiting room is full",
    detail: `Please try again in a few minutes, or contact ${who}.`,
  },
  rate_limited: {
    title: "Please wait a moment",
    detail: "There were too many attempts to enter the waiting room. Wait a minute, then reload the page.",
  },
};
// The server's own sentence for these is generic ("your therapist"); ours names them.
const OWN_WORDS = new Set(["denied", "expired", "invite_revoked"]);

const page = createCallPage({
  role: "client",
  wsPath: `/ws/join/${encodeURIComponent(token)}`,
  peerName: "Therapist",
  peerTileName: therapistName,
  peerTileFallback: "Your therapist",
  // Mute changes mean nothing to the server before the client is in the call.
  canSendMute: () => state.phase === "call",
  onMediaState: (s) => {
    state.mediaConnected = s === "connected";
    renderCallStage();
  },
  onStop: () => {
    precheck.stop();
    el.join.disabled = true;
  },
  onEndPanel: () => {
    el.panel.hidden = true;
    el.callPanel.hidden = true;
    layoutSide();
    el.stage.classList.remove("precall");
  },
  onWelcome: () => {
    setConnectionStatus(page.el.conn, "idle");
    page.el.conn.textContent = "Ready";
    el.join.disabled = false;
    precheck.network();
  },
  // After an automatic reconnect: back to where we were, with no device check; the server
  // re-admits this browser's identity without asking the therapist again.
  onRejoin: () => {
    if (state.phase === "precall") {
      page.recovered();
      return;
    }
    page.send(joinMessage());
  },
  onEnded: (msg) => finishEnded(Boolean(msg.checkin)),
  // Refusals that end this page's visit, each with words the client can act on.
  onError: (msg) => {
    if (chat.onError(msg)) return true;
    const ending = REFUSALS[msg.code];
    if (!ending || !msg.fatal) return false;
    el.waiting.hidden = true;
    page.finish("denied", { ...ending, detail: OWN_WORDS.has(msg.code) ? ending.detail : (msg.message || ending.detail) });
    return true;
  },
  endings: {
    left: () => ({
      title: "You left the session",
      detail: `You can rejoin while the session is still open, or close this window if you are done.`,
      actions: [reloadButton("rejoin-button", "Rejoin")],
    }),
    replaced: (msg) => ({
      title: "This session was opened somewhere else",
      detail: msg.message || "It continues in another tab or on another device.",
    }),
    fatal: (msg) => ({
      title: "The session could not continue",
      detail: `${msg.message ? `${msg.message} ` : ""}Reload the page to try again, or contact ${who}.`,
      actions: [reloadButton("reload-button", "Try again")],
    }),
    disconnected: (info) => (info.receivedAny
      ? {
        title: "Disconnected",
        detail: "The connection to the session was lost. Reconnect to go back in; you will not need to wait to be let in again.",
        actions: [reloadButton("reconnect-button", "Reconnect")],
      }
      : {
        kind: "fatal",
        title: "This link could not be opened",
        detail: `It may have expired or been replaced by a newer one. Please ask ${who} for a new link.`,
      }),
  },
});
Object.assign(el, { main: page.el.main, stage: page.el.stage, camera: page.el.camera });
const chat = setupChat({ role: "client", send: page.send });

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

function renderCallStage() {
  if (state.phase !== "call" || page.state.finished) return;
  if (state.therapistReconnecting) {
    page.setStage("peer_reconnecting", "Your therapist is reconnecting…", "Please stay on this page. The call continues by itself.");
  } else if (!state.therapistPresent) {
    page.setStage("waiting", "Your therapist will be with you shortly.", "Please stay on this page.");
  } else if (!state.mediaConnected) {
    page.setStage("connecting", "Connecting to your therapist…");
  } else {
    page.setStage("call");
  }
}

function hideRoom() {
  el.main.hidden = true;
  page.el.controls.hidden = true;
  page.showError("");
}

/** The session is over: the check-in when this client took part, else a closing message. */
function finishEnded(checkin = false) {
  if (page.state.ending === "ended") return;
  if (checkin) {
    page.finish("ended", null, "ended");
    showCheckin({ view: el.checkin, token, hideRest: hideRoom });
    return;
  }
  // Only someone who was in the call is thanked; a person still waiting was never let in.
  const wasIn = state.phase === "call";
  page.finish("ended", {
    title: "The session has ended",
    detail: wasIn
      ? "Thank you for joining. You can close this window now."
      : `It ended before you were let in. Please contact ${who} to arrange another time.`,
  }, "ended");
}

// ---------- devices and joining ----------
el.devicesButton.addEventListener("click", () => {
  const open = el.panel.hidden;
  el.panel.hidden = !open;
  layoutSide();
  el.devicesButton.setAttribute("aria-expanded", String(open));
  if (open) el.camera.focus();
});

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.phase !== "precall" || page.state.finished) return;
  page.devices.meter.resume();
  if (!page.send(joinMessage())) {
    page.showError("Not connected to the server. Reload the page and try again.");
    return;
  }
  state.phase = "joining";
  page.setStage("joining");
  el.join.disabled = true;
  el.join.textContent = "Joining…";
});

function joinMessage() {
  const name = el.name.value.trim();
  const msg = { type: "join" };
  if (name) msg.display_name = name.slice(0, 80);
  return msg;
}

// ---------- pre-join connection check ----------
const precheck = (() => {
  const { local, devices } = page;
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
    } else if (track.readyState === "live" && page.el.self.videoWidth > 0 && !track.muted) {
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
    const level = Number(page.el.meter.value) || 0;
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
      if (stopped || !page.state.signaling) return;
      set("network", "checking", "Checking your connection to the server…");
      const rtt = await measureRoundTrip(page.state.signaling);
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
  el.details.open = true;
  el.details.querySelector("summary").hidden = true;
  page.el.controls.hidden = false;
  renderCallStage();
  page.stats.start();
  page.startCall();
}

// ---------- whom the client is meeting, and when (therapist feature, issue 13) ----------
let about = null;
fetch(`/api/join/${encodeURIComponent(token)}/about`, { credentials: "same-origin" })
  .then((res) => (res.ok ? res.json() : null))
  .then((data) => {
    about = data;
    const text = aboutText();
    if (text && !el.waiting.hidden && !el.waiting.querySelector('[data-testid="waiting-about"]')) {
      el.waiting.append(h("span", { class: "muted-line", "data-testid": "waiting-about" }, ` ${text}`));
    }
  })
  .catch(() => { /* the waiting room still works without it */ });

function aboutText() {
  if (!about) return "";
  const name = (about.therapist_name || "").trim();
  let when = "";
  if (about.planned_start) {
    when = new Date(about.planned_start).toLocaleString([], {
      weekday: "long", day: "numeric", month: "long", hour: "2-digit", minute: "2-digit",
    });
    if (about.planned_minutes) when += ` (${about.planned_minutes} minutes)`;
  }
  if (name && when) return `Your session with ${name} is planned for ${when}.`;
  if (name) return `Your session is with ${name}.`;
  return when ? `Your session is planned for ${when}.` : "";
}

// ---------- signalling: what only the client hears ----------
function connect() {
  chat.attach(page.connect({
    shared_balance: (msg) => {
      if (!page.state.finished) renderShared(msg);
    },
    waiting: (msg) => {
      if (page.state.finished) return;
      state.phase = "waiting";
      page.setStage("waiting");
      page.recovered(); // a rejoin that lands in the waiting room has no media to wait for
      el.join.hidden = true;
      el.nameField.hidden = true;
      el.hint.hidden = true;
      el.checkTitle.textContent = "In the waiting room";
      const lines = [h("strong", {}, "Waiting for your therapist to let you in…")];
      const about = aboutText(); // therapist feature (issue 13): whom and when
      if (about) lines.push(h("span", { class: "muted-line", "data-testid": "waiting-about" }, ` ${about}`));
      if (msg.therapist_present === false) {
        lines.push(h("span", { class: "muted-line" }, ` ${Who} hasn't opened the session yet. Please keep this page open.`));
      }
      el.waiting.replaceChildren(...lines);
      el.waiting.hidden = false;
    },
    admitted: () => {
      if (!page.state.finished) enterCall();
    },
    peer_state: (msg) => {
      if (msg.role !== "therapist") return;
      state.therapistPresent = Boolean(msg.present);
      state.therapistReconnecting = msg.present
        ? Boolean(msg.reconnecting)
        : page.peerAwayAfterOurOutage();
      renderCallStage();
    },
    removed: (msg) => {
      el.waiting.hidden = true;
      page.finish("denied", {
        title: "You were removed from this session",
        detail: `${Who} removed you from this session. If you think this is a mistake, please contact ${therapistName ? "them" : "your therapist"} directly.`,
      });
    },
    denied: (msg) => {
      el.waiting.hidden = true;
      page.finish("denied", { ...REFUSALS.denied });
    },
  }));
}

async function main() {
  if (!token) {
    page.showEnd("fatal", {
      title: "This link is incomplete",
      detail: "Please open the full link your therapist sent you.",
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
    page.finish("ended", null, "ended"); // nothing is running yet: this only records the state
    showCheckin({ view: el.checkin, token, status, hideRest: hideRoom });
    return;
  }
  page.startMedia(() => precheck.devices());
  connect();
}

main();
