// Therapist room: /sessions/{id}
// The call itself (stage, devices, mute, leave, signalling, PeerCall) is call.js; this file
// adds what only the therapist has: the waiting room, the client link, live signals, ending
// the session and taking the session over from another tab.

import {
  api, ApiError, byTestId, copyText, formatDateTime, h, loginUrl, pathParam, recallInvite,
  rememberInvite,
} from "./api.js";
import { announcer, setConnectionStatus } from "./callui.js";
import { createCallPage, reloadButton } from "./call.js";
import { setupPanel } from "./panel.js";
import { setupChat } from "./chat.js";
import { formatClock } from "./charts.js";

const sessionId = pathParam("/sessions/");

const el = {
  label: byTestId("session-label"),
  takeoverPanel: byTestId("takeover-panel"),
  takeover: byTestId("takeover-button"),
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
  copyLink: byTestId("copy-link"),
  end: byTestId("end-button"),
  remove: byTestId("remove-button"),
  removeConfirm: byTestId("remove-confirm"),
  removeYes: byTestId("remove-confirm-button"),
  removeNo: byTestId("remove-cancel-button"),
  removeAll: byTestId("new-link-remove-all"),
  newLinkWhy: byTestId("new-link-why"),
  linkExpiry: byTestId("link-expiry"),
  endDialog: byTestId("end-dialog"),
  endBoth: byTestId("end-confirm-both"),
  endLeave: byTestId("end-confirm-leave"),
  endCancel: byTestId("end-cancel"),
  leave: byTestId("leave-button"),
  clock: byTestId("session-clock"),
  clockElapsed: byTestId("clock-elapsed"),
  clockPlanned: byTestId("clock-planned"),
  clockNote: byTestId("clock-note"),
  chime: byTestId("arrival-chime"),
  notifyEnable: byTestId("notify-enable"),
};

const announce = announcer(byTestId("announcer"));

/** What only the therapist room tracks; the shared call state is page.state. */
const state = {
  joined: false,
  endRequested: false,
  peer: { present: false, everPresent: false, reconnecting: false, participantId: null },
  lobbyIds: new Set(),
  linkWanted: false,
  baseTitle: document.title,
  // Session clock: when both were first in the call (server's started_at), and the plan.
  startedAt: null,
  plannedMinutes: null,
  chimes: 0,
};

function sessionsLink(kind = "btn-primary") {
  return h("a", { class: `btn ${kind}`, href: "/sessions" }, "Back to sessions");
}

function summaryLink() {
  return h("a", {
    class: "btn btn-primary", href: `/sessions/${encodeURIComponent(sessionId)}/summary`, "data-testid": "summary-link",
  }, "View summary");
}

const page = createCallPage({
  role: "therapist",
  wsPath: `/ws/sessions/${encodeURIComponent(sessionId)}`,
  peerName: "Client",
  peerTileFallback: "Your client",
  announce,
  onQualityChange: (now, before) => {
    const bad = (label) => label === "poor" || label === "lost";
    if (bad(now.you) && !bad(before.you)) announce(`Your connection is ${now.you}.`);
    if (bad(now.peer) && !bad(before.peer)) announce(`Your client's connection is ${now.peer}.`);
  },
  onStop: () => {
    panel.stop();
    page.agenda.flush();
    renderLobby([]);
  },
  onEndPanel: () => {
    if (el.endDialog.open) el.endDialog.close();
    el.takeoverPanel.hidden = true;
    // Nothing in the side panel is current any more.
    el.side.hidden = true;
    page.el.main.classList.add("no-side");
  },
  onWelcome: () => page.send({ type: "join" }),
  // Our own seat may still look open to the server (it has not noticed the old socket die):
  // only this signed-in therapist can open this socket, so taking it over is safe.
  onRejoin: () => page.send({ type: "join", takeover: true }),
  onEnded: () => finishEnded(),
  onError: (msg) => {
    if (chat.onError(msg)) return true;
    if (msg.code === "already_connected") {
      page.setStage("takeover");
      el.takeoverPanel.hidden = false;
      el.takeover.disabled = false;
      el.takeover.focus();
      return true;
    }
    if (msg.code === "unauthorized") {
      page.state.finished = true;
      location.assign(loginUrl());
      return true;
    }
    return false;
  },
  // The socket closing after "End session" is the end, not a lost connection.
  beforeDisconnect: () => {
    if (!state.endRequested) return false;
    finishEnded();
    return true;
  },
  endings: {
    left: () => ({
      title: "You left the session",
      detail: "The session is still open. You can rejoin at any time, or end it from the room.",
      actions: [reloadButton("rejoin-button", "Rejoin"), " ", sessionsLink("btn-secondary")],
    }),
    replaced: (msg) => ({
      title: "This session moved to another tab",
      detail: msg.message || "",
      actions: [reloadButton("reload-button", "Use this tab instead")],
    }),
    fatal: (msg) => ({ title: "The session could not continue", detail: msg.message || "", actions: [sessionsLink()] }),
    disconnected: async (info) => {
      if (!info.receivedAny) {
        // Refused before the welcome: maybe the login expired.
        try {
          await api("/api/me");
        } catch {
          return null; // api() redirected to the login page on 401
        }
      }
      return {
        title: "Disconnected from the server",
        detail: "Your connection to Rapport was lost. Reconnect to continue the session.",
        actions: [reloadButton("reconnect-button", "Reconnect")],
      };
    },
  },
});

const chat = setupChat({ role: "therapist", send: page.send, peerLabel: () => state.clientLabel || "" });
const panel = setupPanel({
  sessionId,
  send: page.send,
  announce,
  onProblem: page.showError,
  onPrefs: (prefs) => { el.chime.checked = prefs.arrival_chime !== false; },
});

// ---------- session clock ----------
// Elapsed since both were first in the call, against the planned length: "23:41 / 50 min".
// Near the end (5 minutes left) and after it the clock says so in words, calmly: no flashing.
const NEAR_END_S = 5 * 60;

function renderClock() {
  const planned = state.plannedMinutes;
  if (state.startedAt === null) {
    el.clock.hidden = planned === null || page.state.finished;
    el.clock.dataset.state = "idle";
    el.clockElapsed.textContent = "Not started";
    el.clockPlanned.textContent = planned ? ` · ${planned} min planned` : "";
    el.clockNote.textContent = "";
    return;
  }
  el.clock.hidden = page.state.finished;
  const elapsed = Math.max(0, (Date.now() - state.startedAt) / 1000);
  el.clockElapsed.textContent = formatClock(elapsed);
  el.clockPlanned.textContent = planned ? ` / ${planned} min` : "";
  let clockState = "running";
  let note = "";
  if (planned) {
    const left = planned * 60 - elapsed;
    if (left <= 0) {
      clockState = "over";
      note = `${Math.max(1, Math.round(-left / 60))} min over`;
    } else if (left <= NEAR_END_S) {
      clockState = "near";
      note = `${Math.max(1, Math.round(left / 60))} min left`;
    }
  }
  if (el.clock.dataset.state !== clockState && clockState !== "running") announce(`Session time: ${note}.`);
  el.clock.dataset.state = clockState;
  el.clockNote.textContent = note;
}
setInterval(renderClock, 1000);

async function refreshStartedAt() {
  // The server sets started_at when both are first in the call; ask once it happened.
  try {
    const s = await api(`/api/sessions/${encodeURIComponent(sessionId)}`);
    if (s && s.started_at) state.startedAt = Date.parse(s.started_at);
  } catch {
    /* the clock falls back to this page's own count */
  }
  if (state.startedAt === null) state.startedAt = Date.now();
  renderClock();
}

// ---------- arrival notice ----------
// A soft two-note chime, made on the spot (no audio file), the waiting count in the tab title,
// and a desktop notification when the therapist allowed them (asked only on their click).
let audioCtx = null;

function chime() {
  try {
    audioCtx = audioCtx || new AudioContext();
    if (audioCtx.state === "suspended") audioCtx.resume().catch(() => {});
    const t0 = audioCtx.currentTime + 0.02;
    for (const [i, freq] of [659.25, 880].entries()) {
      const osc = audioCtx.createOscillator();
      const gain = audioCtx.createGain();
      osc.type = "sine";
      osc.frequency.value = freq;
      const start = t0 + i * 0.22;
      gain.gain.setValueAtTime(0, start);
      gain.gain.linearRampToValueAtTime(0.06, start + 0.04);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.9);
      osc.connect(gain).connect(audioCtx.destination);
      osc.start(start);
      osc.stop(start + 0.95);
    }
    state.chimes += 1;
    el.lobbySection.dataset.chimes = String(state.chimes);
  } catch {
    /* no audio output: the title and the notice still tell */
  }
}

function renderTitle() {
  const n = state.lobbyIds.size;
  document.title = n > 0 && !page.state.finished ? `(${n}) ${state.baseTitle}` : state.baseTitle;
}

function notifyArrival(name) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (document.visibilityState === "visible" && document.hasFocus()) return;
  try {
    const note = new Notification("Rapport: someone is in the waiting room", {
      body: `${name} is waiting to be admitted.`,
      tag: `rapport-lobby-${sessionId}`,
    });
    note.onclick = () => { window.focus(); note.close(); };
  } catch {
    /* some browsers only allow notifications from a service worker */
  }
}

function renderNotifyButton() {
  el.notifyEnable.hidden = !("Notification" in window) || Notification.permission !== "default";
}

el.notifyEnable.addEventListener("click", async () => {
  try {
    await Notification.requestPermission();
  } catch {
    /* denied or unsupported: nothing more to ask */
  }
  renderNotifyButton();
});
renderNotifyButton();

el.chime.addEventListener("change", () => {
  const on = el.chime.checked;
  panel.savePrefs({ ...panel.prefs(), arrival_chime: on }).catch((err) => {
    if (!(err instanceof ApiError && err.status === 401)) page.showError(`Your chime setting was not saved: ${err.message}`);
  });
  if (on) chime(); // a sample, and it unlocks audio output on this click
});

// ---------- stage text ----------
function renderStage() {
  if (page.state.finished) return;
  if (!state.joined) {
    page.setStage("opening", "Opening the session…");
  } else if (!state.peer.present && state.lobbyIds.size > 0) {
    page.setStage(
      "lobby",
      state.lobbyIds.size === 1 ? "Someone is in the waiting room." : `${state.lobbyIds.size} people are in the waiting room.`,
      "Admit or deny them from the waiting room panel.",
    );
  } else if (state.peer.reconnecting) {
    page.setStage(
      "peer_reconnecting",
      "Your client is reconnecting…",
      "Their connection dropped. The call continues by itself when they are back; you do not need to do anything.",
    );
  } else if (!state.peer.present) {
    if (state.peer.everPresent) {
      page.setStage("waiting", "Your client has left the room.", "They can come back with the same link; you will not need to admit them again.");
    } else {
      page.setStage("waiting", "Waiting for your client.", "Share the client link. When they arrive, admit them from the waiting room.");
    }
  } else {
    page.setStage("call");
  }
}

function finishEnded() {
  if (page.state.ending === "ended") return;
  page.finish("ended", {
    title: "Session ended",
    detail: "The call is over and the client's link no longer works.",
    actions: [summaryLink(), " ", sessionsLink("btn-secondary")],
  }, "ended");
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
  state.peer.reconnecting = p.present ? Boolean(p.reconnecting) : page.peerAwayAfterOurOutage();
  if (p.present) state.peer.everPresent = true;
  let text;
  if (state.peer.reconnecting) {
    text = "Your client is reconnecting…";
  } else if (!p.present) {
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
  el.peer.dataset.reconnecting = String(state.peer.reconnecting);
  state.peer.participantId = p.present ? (p.participant_id ?? null) : null;
  el.remove.hidden = state.peer.participantId === null || page.state.finished;
  if (el.remove.hidden) closeRemoveConfirm(false);
  renderLobbySection();
  renderStage();
}

// ---------- removing the client (with a confirmation) ----------
function closeRemoveConfirm(focusButton = true) {
  el.removeConfirm.hidden = true;
  el.remove.setAttribute("aria-expanded", "false");
  if (focusButton && !el.remove.hidden) el.remove.focus();
}

el.remove.addEventListener("click", () => {
  el.removeConfirm.hidden = false;
  el.remove.setAttribute("aria-expanded", "true");
  el.removeNo.focus(); // the safe choice first
});
el.removeNo.addEventListener("click", () => closeRemoveConfirm());
el.removeConfirm.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeRemoveConfirm();
});
el.removeYes.addEventListener("click", () => {
  const id = state.peer.participantId;
  closeRemoveConfirm(false);
  if (id === null) return;
  page.send({ type: "remove", participant_id: id });
  announce("Your client was removed from the session.");
});

// ---------- waiting room ----------
function waitingSinceText(value) {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 1e9) return "";
  const date = new Date(value * 1000);
  return `Waiting since ${date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

function renderLobby(waiting) {
  const entries = Array.isArray(waiting) ? waiting : [];
  const seen = new Set();
  const arrived = [];
  el.lobby.replaceChildren(
    ...entries.map((entry) => {
      const id = entry.participant_id;
      seen.add(id);
      const name = (entry.display_name || "").trim() || "Client";
      if (!state.lobbyIds.has(id)) {
        announce(`${name} is in the waiting room.`);
        arrived.push(name);
      }
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
        if (!page.send({ type, participant_id: id })) {
          page.showError("Not connected to the server. Reload the page and try again.");
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
  if (arrived.length && !page.state.finished) {
    if (panel.prefs().arrival_chime !== false) chime();
    notifyArrival(arrived.join(", "));
  }
  renderTitle();
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

function showExpiry(res) {
  const when = formatDateTime(res.invite_expires_at);
  el.linkExpiry.hidden = false;
  el.linkExpiry.dataset.expired = String(Boolean(res.invite_expired));
  el.linkExpiry.textContent = res.invite_expired ? `Link expired (${when}).` : `The link works until ${when}.`;
}

function offerNewLink(why) {
  el.newLinkWhy.textContent = why;
  el.newLinkBox.hidden = false;
}

el.copyLink.addEventListener("click", async () => {
  state.linkWanted = true;
  renderLobbySection();
  el.copyLink.disabled = true;
  try {
    // The same link the client holds, derived again by the server: works after a reload and
    // in a new tab, and leaves the client's copy working.
    const res = await api(`/api/sessions/${encodeURIComponent(sessionId)}/invite`);
    rememberInvite(sessionId, res.invite_url);
    showInvite(res.invite_url);
    showExpiry(res);
    if (res.invite_expired) {
      el.inviteStatus.textContent = "";
      offerNewLink("This link has expired. Make a new one to send to your client.");
      el.newLink.focus();
    } else {
      el.newLinkBox.hidden = true;
      await copyInvite(res.invite_url);
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    if (err instanceof ApiError && err.status === 409) {
      el.inviteStatus.textContent = err.message;
      offerNewLink("You can make a new link; the previous link will stop working.");
      el.newLink.focus();
    } else {
      page.showError(err.message);
    }
  } finally {
    el.copyLink.disabled = false;
  }
});

el.newLink.addEventListener("click", async () => {
  el.newLink.disabled = true;
  try {
    const res = await api(`/api/sessions/${encodeURIComponent(sessionId)}/invite`, {
      method: "POST",
      body: { keep_participants: !el.removeAll.checked },
    });
    rememberInvite(sessionId, res.invite_url);
    showInvite(res.invite_url);
    showExpiry(res);
    el.newLinkBox.hidden = true;
    await copyInvite(res.invite_url);
    if (res.closed_connections) {
      el.inviteStatus.textContent += ` ${res.closed_connections} connection(s) from the previous link were closed.`;
    }
    el.removeAll.checked = false;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) page.showError(err.message);
  } finally {
    el.newLink.disabled = false;
  }
});

// ---------- controls only the therapist has ----------
// "End session" asks first: end for both, or only leave for now (the session stays open).
// A modal <dialog> keeps focus inside; Escape or "Keep the call" closes it and the call goes on.
el.end.addEventListener("click", () => {
  if (page.state.finished || el.endDialog.open) return;
  el.endDialog.showModal();
  el.endCancel.focus();
});
el.endDialog.addEventListener("close", () => {
  if (!page.state.finished) el.end.focus();
});
el.endCancel.addEventListener("click", () => el.endDialog.close());
el.endLeave.addEventListener("click", () => {
  el.endDialog.close();
  el.leave.click();
});
el.endBoth.addEventListener("click", () => {
  el.endDialog.close();
  if (page.state.finished) return;
  if (!page.send({ type: "end" })) {
    page.showError("Not connected to the server, so the session could not be ended. Reload and try again.");
    return;
  }
  state.endRequested = true;
  el.end.disabled = true;
  el.end.setAttribute("aria-busy", "true");
});

el.takeover.addEventListener("click", () => {
  if (page.send({ type: "join", takeover: true })) el.takeover.disabled = true;
});

// ---------- signalling: what only the therapist hears ----------
function connect() {
  chat.attach(page.connect({
    joined: () => {
      state.joined = true;
      el.takeoverPanel.hidden = true;
      el.takeover.disabled = false;
      page.showError("");
      renderStage();
      panel.start();
      page.stats.start();
      page.startCall();
    },
    signals: (msg) => {
      if (!page.state.finished) panel.onSignals(msg);
    },
    speaking: (msg) => {
      if (!page.state.finished) panel.onSpeaking(msg);
    },
    lobby: (msg) => {
      if (!page.state.finished) renderLobby(msg.waiting);
    },
    peer_state: (msg) => {
      if (msg.role === "client" && !page.state.finished) {
        if (msg.present && msg.media === "connected" && state.startedAt === null && !state.fetchingStart) {
          state.fetchingStart = true;
          refreshStartedAt();
        }
        renderPeer(msg);
        // A held seat is not "together", whatever its last media state was.
        panel.onPeer(msg.reconnecting ? { ...msg, media: "connecting" } : msg);
      }
    },
  }));
}

async function main() {
  if (!sessionId) {
    page.showEnd("fatal", { title: "No session here", detail: "This address does not point to a session.", actions: [sessionsLink()] });
    return;
  }
  let session;
  try {
    session = await api(`/api/sessions/${encodeURIComponent(sessionId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // redirecting to login
    const notFound = err instanceof ApiError && (err.status === 404 || err.status === 403);
    page.showEnd("fatal", {
      title: notFound ? "Session not found" : "The session could not be opened",
      detail: notFound ? "It may belong to another therapist or have been removed." : err.message,
      actions: [sessionsLink()],
    });
    setConnectionStatus(page.el.conn, "closed");
    return;
  }
  const label = (session.client_label || "").trim();
  state.clientLabel = label;
  el.label.textContent = label ? `Session with ${label}` : "Session";
  page.tiles.setPeerName(label);
  document.title = `${label ? `${label} · ` : ""}Session room · Rapport`;
  state.baseTitle = document.title;
  state.plannedMinutes = session.planned_minutes ?? null;
  if (session.started_at) state.startedAt = Date.parse(session.started_at);
  renderClock();

  const known = recallInvite(sessionId);
  if (known) showInvite(known);
  if (session.invite_expired) {
    state.linkWanted = true;
    showExpiry(session);
    offerNewLink("This link has expired. Make a new one to send to your client.");
    renderLobbySection();
  } else if (session.status !== "ended") {
    // A new tab or a reload shows the link the client holds, and until when it works.
    api(`/api/sessions/${encodeURIComponent(sessionId)}/invite`).then((res) => {
      rememberInvite(sessionId, res.invite_url);
      showInvite(res.invite_url);
      showExpiry(res);
    }).catch((err) => {
      if (err instanceof ApiError && err.status === 409 && !known) {
        offerNewLink("This link was made before links could be shown again. You can make a new one; the previous link will stop working.");
      }
    });
  }

  if (session.status === "ended") {
    finishEnded();
    return;
  }

  page.startMedia();
  renderStage();
  panel.loadPrefs();
  connect();
}

main();
