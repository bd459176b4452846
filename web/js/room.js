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
};

const announce = announcer(byTestId("announcer"));

/** What only the therapist room tracks; the shared call state is page.state. */
const state = {
  joined: false,
  endRequested: false,
  peer: { present: false, everPresent: false, reconnecting: false, participantId: null },
  lobbyIds: new Set(),
  linkWanted: false,
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

const panel = setupPanel({ sessionId, send: page.send, announce, onProblem: page.showError });

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
    const res = await api(`/api/sessions/${encodeURIComponent(sessionId)}/invite`, {
      method: "POST",
      body: { keep_participants: !el.removeAll.checked },
    });
    rememberInvite(sessionId, res.invite_url);
    showInvite(res.invite_url);
    el.newLinkBox.hidden = true;
    await copyInvite(res.invite_url);
    if (res.invite_expires_at) {
      el.inviteStatus.textContent += ` It works until ${formatDateTime(res.invite_expires_at)}.`;
    }
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
el.end.addEventListener("click", () => {
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
  page.connect({
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
        renderPeer(msg);
        // A held seat is not "together", whatever its last media state was.
        panel.onPeer(msg.reconnecting ? { ...msg, media: "connecting" } : msg);
      }
    },
  });
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
  el.label.textContent = label ? `Session with ${label}` : "Session";
  page.tiles.setPeerName(label);
  document.title = `${label ? `${label} · ` : ""}Session room · Rapport`;

  const known = recallInvite(sessionId);
  if (known) showInvite(known);

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
