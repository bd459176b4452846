// In-call chat (issue 13), for the therapist room and the client page (_chat.html).
//
// The server keeps a session's chat in memory only and sends the whole of what this person may
// see as `chat_history` on every (re)join and admission, then each new message as
// `chat_message` (our own come back as the receipt). Nothing here stores message text: the
// only thing kept in the tab is when the chat was last read, for the unread count.
//
// Everything typed is shown as text (text nodes, textContent); http(s) links become anchors
// built with createElement, never HTML. A message the server refuses (too long, flood
// control, nobody to send it to) comes back into the box: nothing typed is lost.
//
// The therapist may also write to someone in the waiting room: each waiting-room entry shows
// their latest message and a Reply button; without a chosen person, messages go to the
// admitted client (or the one person waiting).

import { byTestId, h } from "./api.js";

const MAX_CHARS = 2000; // signaling/messages.py CHAT_MAX_CHARS, in code points after trimming
const COUNT_FROM = 1800; // show the count once a message is this long
const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;
const TRAILING = /[.,;:!?'")\]]+$/;

/** Text with its http(s) links as anchors: an array of nodes, never HTML. */
export function linkified(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    const trail = url.match(TRAILING);
    // A closing bracket that belongs to the link (Wikipedia style) stays part of it.
    if (trail && !(trail[0].startsWith(")") && url.includes("("))) url = url.slice(0, -trail[0].length);
    let parsed = null;
    try {
      parsed = new URL(url);
    } catch {
      parsed = null;
    }
    if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) continue;
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const a = document.createElement("a");
    a.href = parsed.href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = url;
    nodes.push(a);
    last = match.index + url.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function timeText(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const codePoints = (text) => [...text].length;

/**
 * Set up the chat of a call page.
 *
 * - role: "therapist" | "client".
 * - send(msg): the page's signalling send; false when not connected.
 * - peerLabel(): (therapist) what to call a client who chose no name.
 */
export function setupChat({ role, send, peerLabel = () => "" }) {
  const el = {
    dock: byTestId("chat-dock"),
    panel: byTestId("chat-panel"),
    close: byTestId("chat-close"),
    log: byTestId("chat-log"),
    empty: byTestId("chat-empty"),
    form: byTestId("chat-form"),
    to: byTestId("chat-to"),
    toText: byTestId("chat-to-text"),
    toClear: byTestId("chat-to-clear"),
    input: byTestId("chat-input"),
    sendButton: byTestId("chat-send"),
    count: byTestId("chat-count"),
    error: byTestId("chat-error"),
    toggle: byTestId("chat-toggle"),
    unread: byTestId("chat-unread"),
    unreadText: byTestId("chat-unread-text"),
    announcer: byTestId("chat-announcer"),
    title: byTestId("chat-title"),
    controls: byTestId("controls"),
  };
  const therapist = role === "therapist";
  // Per tab (sessionStorage). The client's path holds the invite token: not used as a key.
  const readKey = therapist ? `rapport.chat.read:${location.pathname}` : "rapport.chat.read:client";
  const state = {
    ready: false,
    open: false,
    messages: new Map(), // id -> message, as the server sent it
    pending: [], // texts sent and not yet confirmed, oldest first
    lastReadAt: Number(sessionStorage.getItem(readKey)) || 0, // ms since the epoch
    waiting: new Map(), // (therapist) participant id -> name, in the waiting room now
    clientId: null, // (therapist) the admitted client's participant id
    target: null, // (therapist) the waiting person a reply goes to
  };
  if (!therapist) el.title.textContent = "Chat with your therapist";

  // ---------- where the toggle sits: in the call controls while they show, else floating
  function placeToggle() {
    const inControls = el.controls && !el.controls.hidden;
    if (inControls && el.toggle.parentElement !== el.controls) {
      const spacer = el.controls.querySelector(".spacer");
      el.controls.insertBefore(el.toggle, spacer);
    } else if (!inControls && el.toggle.parentElement !== el.dock) {
      el.dock.append(el.toggle);
    }
    el.dock.classList.toggle("chat-dock-floating", !inControls);
    position();
  }

  /** Keep the panel above the controls bar (its height changes with the layout). */
  function position() {
    const controls = el.controls && !el.controls.hidden ? el.controls : null;
    const top = controls ? controls.getBoundingClientRect().top : window.innerHeight;
    const bottom = Math.max(0, Math.round(window.innerHeight - top));
    el.dock.style.setProperty("--chat-bottom", `${bottom}px`);
  }

  if (el.controls) {
    new MutationObserver(placeToggle).observe(el.controls, { attributes: true, attributeFilter: ["hidden"] });
  }
  window.addEventListener("resize", position);
  placeToggle();

  // ---------- names
  function threadName(pid) {
    if (pid === null || pid === undefined) return "";
    if (state.waiting.has(pid)) return state.waiting.get(pid);
    for (const msg of [...state.messages.values()].reverse()) {
      if (msg.participant_id === pid && msg.from_role === "client") return clientName(msg);
    }
    return peerLabel() || "Client";
  }

  function clientName(msg) {
    const chosen = (msg.from_name || "").trim();
    if (chosen && chosen !== "Client") return chosen;
    return (therapist && peerLabel()) || "Client";
  }

  function senderName(msg) {
    if (msg.from_role === role) {
      // The therapist writing with more than one person: say to whom.
      if (therapist && threadCount() > 1) return `You to ${threadName(msg.participant_id)}`;
      return "You";
    }
    if (msg.from_role === "client") return clientName(msg);
    return (msg.from_name || "").trim() || "Your therapist";
  }

  function threadCount() {
    return new Set([...state.messages.values()].map((m) => m.participant_id)).size;
  }

  // ---------- the log
  function messageNode(msg) {
    const own = msg.from_role === role;
    const time = timeText(msg.at);
    return h("div", {
      class: `chat-message${own ? " chat-own" : ""}`,
      "data-testid": "chat-message",
      "data-id": msg.id,
      "data-from-role": msg.from_role,
    },
    h("div", { class: "chat-meta" },
      h("span", { class: "chat-name", "data-testid": "chat-name" }, senderName(msg)),
      time ? h("time", { datetime: msg.at, "data-testid": "chat-time" }, time) : null),
    h("p", { class: "chat-text", "data-testid": "chat-text" }, ...linkified(msg.text)));
  }

  function render() {
    const sorted = [...state.messages.values()].sort((a, b) => a.id - b.id);
    const nearBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    el.log.replaceChildren(...(sorted.length ? sorted.map(messageNode) : [el.empty]));
    if (nearBottom || state.open) el.log.scrollTop = el.log.scrollHeight;
    renderUnread();
    renderTarget();
    decorateLobby();
  }

  function append(msg) {
    const nearBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    el.log.append(messageNode(msg));
    if (nearBottom || msg.from_role === role) el.log.scrollTop = el.log.scrollHeight;
  }

  // ---------- unread
  // By the server's clock: a reload during the session does not make old messages new.
  const sentAt = (m) => Date.parse(m.at) || 0;
  const unreadCount = () => [...state.messages.values()]
    .filter((m) => m.from_role !== role && sentAt(m) > state.lastReadAt).length;

  function markRead() {
    let latest = state.lastReadAt;
    for (const m of state.messages.values()) latest = Math.max(latest, sentAt(m));
    state.lastReadAt = latest;
    if (latest) sessionStorage.setItem(readKey, String(latest));
  }

  function renderUnread() {
    if (state.open && !document.hidden) markRead();
    const count = state.open ? 0 : unreadCount();
    el.unread.hidden = count === 0;
    el.unread.textContent = count ? String(Math.min(count, 99)) : "";
    el.unreadText.textContent = count ? `, ${count} unread` : "";
    el.toggle.dataset.unread = String(count);
  }
  document.addEventListener("visibilitychange", renderUnread);

  // ---------- whom the therapist writes to
  function renderTarget() {
    if (!therapist) return;
    if (state.target !== null && !state.waiting.has(state.target)) state.target = null;
    let text = "";
    if (state.target !== null) {
      text = `To ${state.waiting.get(state.target)}, in the waiting room`;
    } else if (state.clientId === null && state.waiting.size === 1) {
      text = `To ${[...state.waiting.values()][0]}, in the waiting room`;
    } else if (state.clientId === null && state.waiting.size > 1) {
      text = "Several people are waiting: use Reply beside one of them in the waiting room.";
    }
    el.to.hidden = !text;
    el.toText.textContent = text;
    el.toClear.hidden = state.target === null || state.clientId === null;
  }

  /** Each waiting-room entry: their latest message, and a Reply button. */
  function decorateLobby() {
    if (!therapist) return;
    for (const li of document.querySelectorAll('[data-testid="lobby-entry"]')) {
      const pid = Number(li.dataset.participantId);
      let box = li.querySelector(".lobby-chat");
      if (!box) {
        const reply = h("button", {
          type: "button", class: "btn btn-secondary btn-small", "data-testid": "chat-reply",
          "aria-label": `Reply to ${state.waiting.get(pid) || "them"}`,
        }, "Reply");
        reply.addEventListener("click", () => {
          state.target = pid;
          renderTarget();
          openPanel();
        });
        box = h("div", { class: "lobby-chat" },
          h("p", { class: "lobby-chat-text", "data-testid": "lobby-chat", hidden: true }));
        // Their words under their name, before the buttons; Reply beside Admit and Deny.
        const actions = li.querySelector(".actions");
        li.insertBefore(box, actions);
        (actions || box).append(reply);
      }
      const line = box.querySelector(".lobby-chat-text");
      const latest = [...state.messages.values()]
        .filter((m) => m.participant_id === pid && m.from_role === "client")
        .sort((a, b) => b.id - a.id)[0];
      line.hidden = !latest;
      line.textContent = latest ? `“${latest.text}”` : "";
    }
  }

  // ---------- the panel
  function openPanel() {
    if (!state.ready) return;
    state.open = true;
    el.panel.hidden = false;
    el.toggle.setAttribute("aria-expanded", "true");
    el.dock.classList.add("chat-open");
    position();
    el.log.scrollTop = el.log.scrollHeight;
    renderUnread();
    el.input.focus();
  }

  function closePanel(focusToggle = true) {
    state.open = false;
    el.panel.hidden = true;
    el.toggle.setAttribute("aria-expanded", "false");
    el.dock.classList.remove("chat-open");
    renderUnread();
    if (focusToggle && !el.toggle.hidden) el.toggle.focus();
  }

  el.toggle.addEventListener("click", () => (state.open ? closePanel() : openPanel()));
  el.close.addEventListener("click", () => closePanel());
  el.panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closePanel();
  });
  el.toClear.addEventListener("click", () => {
    state.target = null;
    renderTarget();
    el.input.focus();
  });

  // ---------- writing
  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = !text;
  }

  function renderCount() {
    const n = codePoints(el.input.value.trim());
    el.count.textContent = n >= COUNT_FROM ? `${n} / ${MAX_CHARS} characters. ` : "";
    el.input.setAttribute("aria-invalid", String(n > MAX_CHARS));
  }

  function submit() {
    const text = el.input.value.trim();
    if (!text) return;
    const n = codePoints(text);
    if (n > MAX_CHARS) {
      showError(`Messages are limited to ${MAX_CHARS} characters; this one has ${n}. Shorten it or send it in parts.`);
      return;
    }
    const msg = { type: "chat", text };
    if (therapist && state.target !== null) msg.participant_id = state.target;
    if (!send(msg)) {
      showError("Not connected right now, so the message was not sent. It is still in the box: send it again once the connection is back.");
      return;
    }
    state.pending.push(text);
    el.input.value = "";
    renderCount();
    showError("");
  }

  /** A refused message goes back into the box, before anything typed since. */
  function restorePending() {
    const texts = state.pending.splice(0);
    if (!texts.length) return;
    const typed = el.input.value;
    el.input.value = [...texts, typed].filter(Boolean).join("\n");
    renderCount();
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  el.input.addEventListener("input", renderCount);

  // ---------- from the server
  function setReady(ready) {
    state.ready = ready;
    el.dock.hidden = !ready;
    el.toggle.hidden = !ready;
    if (!ready) closePanel(false);
  }

  function onHistory(msg) {
    const before = state.messages;
    state.messages = new Map((msg.messages || []).map((m) => [m.id, m]));
    // A rejoin usually brings what is shown plus what came while away: append only that, so
    // the live log does not read every message out again.
    const grows = state.ready && before.size > 0 && [...before.keys()].every((id) => state.messages.has(id));
    // What the server has is the truth after a (re)join: a message sent as the connection
    // dropped, and not in it, goes back into the box to be sent again.
    const delivered = [...state.messages.values()].filter((m) => m.from_role === role).map((m) => m.text);
    state.pending = state.pending.filter((text) => {
      const i = delivered.indexOf(text);
      if (i < 0) return true;
      delivered.splice(i, 1);
      return false;
    });
    if (state.pending.length) {
      restorePending();
      showError("The connection dropped before your last message arrived. It is back in the box: send it again.");
    }
    setReady(true);
    if (grows) {
      for (const m of state.messages.values()) if (!before.has(m.id)) append(m);
      renderUnread();
      renderTarget();
      decorateLobby();
    } else render();
  }

  function onMessage(msg) {
    if (state.messages.has(msg.id)) return;
    const wasEmpty = state.messages.size === 0;
    state.messages.set(msg.id, msg);
    if (msg.from_role === role) {
      const i = state.pending.indexOf(msg.text);
      state.pending.splice(i >= 0 ? i : 0, 1);
    } else if (!state.open || document.hidden) {
      el.announcer.textContent = `New message from ${senderName(msg)}.`;
    }
    // Appended, never re-rendered: the log is live (role="log") and reads out what is added.
    if (wasEmpty) render();
    else {
      append(msg);
      renderUnread();
      renderTarget();
      decorateLobby();
    }
  }

  function finished() {
    // The session is over (or this page is out of it): nothing of the chat stays.
    state.messages.clear();
    state.pending = [];
    sessionStorage.removeItem(readKey);
    setReady(false);
    el.log.replaceChildren(el.empty);
  }

  return {
    /** Listen on the page's Signaling (returned by page.connect). */
    attach(sig) {
      sig.on("chat_history", onHistory);
      sig.on("chat_message", onMessage);
      for (const type of ["ended", "removed", "denied", "replaced", "left"]) sig.on(type, finished);
      sig.on("close", finished);
      sig.on("error", (msg) => {
        if (msg.fatal) finished();
      });
      if (therapist) {
        sig.on("lobby", (msg) => {
          state.waiting = new Map((msg.waiting || []).map((w) => [
            w.participant_id, (w.display_name || "").trim() || "Client",
          ]));
          renderTarget();
          decorateLobby();
        });
        sig.on("peer_state", (msg) => {
          if (msg.role !== "client") return;
          state.clientId = msg.present ? (msg.participant_id ?? null) : null;
          renderTarget();
        });
      }
      return sig;
    },
    /** For the page's onError: true when the error was about a chat message (shown here). */
    onError(msg) {
      if (msg.ref === "chat") {
        restorePending();
        showError(msg.message || "The message could not be sent.");
        if (!state.open) openPanel();
        return true;
      }
      if (msg.code === "rate_limited" || msg.code === "too_large") restorePending();
      return false;
    },
  };
}
