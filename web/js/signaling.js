// WebSocket wrapper for the signalling protocol (signaling/messages.py).
// JSON messages with a `type`; handlers are dispatched by type.
//
// Once a socket has been open, losing it is not the end: a network blip, a server restart or a
// deploy must heal by itself, so the wrapper reconnects with exponential backoff and jitter
// (so a restarted server is not hit by every page at the same instant) and keeps its handlers.
// A socket can also die silently (a cut network never delivers a close), so a ping goes out
// every few seconds and a socket that stays silent past a short deadline is abandoned.
// Closes the server means as final (session over, replaced, refused, a fatal error) and the
// page's own close() are never retried.
//
// Events for the page, besides the message types:
// - "reconnecting" {attempt, delayMs, code}: the socket was lost; the next try is scheduled.
// - "reconnected" {attempts, downMs}: a new socket is open (the server sends a new welcome).
// - "gave_up" {downMs}: the outage outlasted giveUpAfterMs; nothing more is tried.
// - "close" {code, reason, wasClean, byUs, receivedAny}: the socket closed for good.

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

// Server closes that mean "stop": replaced (4001), denied (4003), refusals (44xx).
const FINAL_CODES = new Set([4001, 4003, 4400, 4401, 4403, 4404, 4410]);
// Messages after which the server's close is the end of this page's session.
const FINAL_MESSAGES = new Set(["ended", "left", "replaced", "denied"]);

export class Signaling {
  constructor(path, {
    pingIntervalMs = 5000,
    pongTimeoutMs = 4000,
    reconnect = true,
    backoffStartMs = 500,
    backoffMaxMs = 5000,
    openTimeoutMs = 5000,
    giveUpAfterMs = 5 * 60 * 1000,
  } = {}) {
    this.url = wsUrl(path);
    this.ws = null;
    this.handlers = new Map();
    this.pingIntervalMs = pingIntervalMs;
    this.pongTimeoutMs = pongTimeoutMs;
    this.reconnect = reconnect;
    this.backoffStartMs = backoffStartMs;
    this.backoffMaxMs = backoffMaxMs;
    this.openTimeoutMs = openTimeoutMs;
    this.giveUpAfterMs = giveUpAfterMs;
    this.pingTimer = null;
    this.deadlineTimer = null;
    this.retryTimer = null;
    this.closedByUs = false;
    this.receivedAny = false;
    this.everOpened = false;
    this.final = false; // the server said this is the end (see FINAL_MESSAGES, fatal errors)
    this.lostAt = null; // when the current outage began (performance.now())
    this.attempt = 0;
    this.lastHeard = 0;
    this._onOnline = () => {
      // The network is back: try now rather than at the end of a long backoff.
      if (this.retryTimer && this.lostAt !== null) {
        clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this._open();
      }
    };
    window.addEventListener("online", this._onOnline);
  }

  /** Register a handler for a message type or event (see the list above); "*" gets every message. */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  /** Remove a handler added with on(). */
  off(type, handler) {
    const list = this.handlers.get(type);
    if (list) this.handlers.set(type, list.filter((fn) => fn !== handler));
    return this;
  }

  _emit(type, payload) {
    for (const handler of this.handlers.get(type) || []) {
      try {
        const result = handler(payload);
        if (result && typeof result.catch === "function") {
          result.catch((err) => console.error(`handler for ${type} failed`, err));
        }
      } catch (err) {
        console.error(`handler for ${type} failed`, err);
      }
    }
  }

  get isOpen() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  /** True between losing a socket and opening the next one. */
  get reconnecting() {
    return this.lostAt !== null;
  }

  /** Open the socket; resolves once open, rejects if it closes first. */
  connect() {
    return new Promise((resolve, reject) => {
      this._open({ resolve, reject });
    });
  }

  _open(first = null) {
    this.retryTimer = null;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    let abandoned = false;
    // A connection attempt into a dead network can hang for minutes; give up on it early.
    const openTimer = setTimeout(() => {
      if (!opened) abandon(1006, "open timed out");
    }, this.openTimeoutMs);

    const lost = (info) => {
      clearTimeout(openTimer);
      this._stopPing();
      if (first && !opened) first.reject(new Error("Could not connect to the server."));
      this._lost(info, opened);
    };
    // Stop listening to a socket we consider dead and carry on as if it had closed: its real
    // close event may come minutes later, or never.
    const abandon = (code, reason) => {
      if (abandoned) return;
      abandoned = true;
      try {
        ws.close(4000, reason);
      } catch {
        /* already closing */
      }
      lost({ code, reason, wasClean: false });
    };
    this._abandon = abandon;

    ws.addEventListener("open", () => {
      if (abandoned) return;
      opened = true;
      clearTimeout(openTimer);
      this.everOpened = true;
      this.lastHeard = performance.now();
      this._startPing();
      if (first) first.resolve();
      if (this.lostAt !== null) {
        const downMs = Math.round(performance.now() - this.lostAt);
        const attempts = this.attempt;
        this.lostAt = null;
        this.attempt = 0;
        this._emit("reconnected", { attempts, downMs });
      }
    });
    ws.addEventListener("message", (event) => {
      if (abandoned) return;
      this.lastHeard = performance.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn("ignoring a non-JSON signalling message");
        return;
      }
      if (!msg || typeof msg.type !== "string") return;
      this.receivedAny = true;
      if (FINAL_MESSAGES.has(msg.type) || (msg.type === "error" && msg.fatal)) this.final = true;
      this._emit("*", msg);
      this._emit(msg.type, msg);
    });
    ws.addEventListener("close", (event) => {
      if (abandoned) return;
      abandoned = true;
      lost({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    });
  }

  _lost(info, opened) {
    const details = { ...info, byUs: this.closedByUs, receivedAny: this.receivedAny };
    const retry = this.reconnect && this.everOpened && !this.closedByUs && !this.final
      && !FINAL_CODES.has(info.code);
    if (!retry) {
      this.lostAt = null;
      this._finish();
      this._emit("close", details);
      return;
    }
    if (this.lostAt === null) this.lostAt = performance.now() - (opened ? 0 : this.openTimeoutMs);
    const downMs = performance.now() - this.lostAt;
    if (downMs >= this.giveUpAfterMs) {
      this._finish();
      this._emit("gave_up", { downMs: Math.round(downMs) });
      return;
    }
    const ceiling = Math.min(this.backoffMaxMs, this.backoffStartMs * 2 ** this.attempt);
    // "Equal jitter": at least half the step, so retries stay spread but never hammer.
    const delayMs = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt += 1;
    this._emit("reconnecting", { attempt: this.attempt, delayMs, code: info.code });
    this.retryTimer = setTimeout(() => this._open(), delayMs);
  }

  _finish() {
    this._stopPing();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    window.removeEventListener("online", this._onOnline);
  }

  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  close(code = 1000, reason = "") {
    this.closedByUs = true;
    const wasRetrying = this.retryTimer !== null;
    this._finish();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      this.ws.close(code, reason);
    } else if (wasRetrying) {
      this.lostAt = null;
      this._emit("close", { code, reason, wasClean: true, byUs: true, receivedAny: this.receivedAny });
    }
  }

  _startPing() {
    this._stopPing();
    if (!this.pingIntervalMs) return;
    this.pingTimer = setInterval(() => {
      const sentAt = performance.now();
      if (!this.send({ type: "ping", t: Date.now() / 1000 })) return;
      if (!this.pongTimeoutMs) return;
      clearTimeout(this.deadlineTimer);
      // Any message counts as a sign of life, not only the pong.
      this.deadlineTimer = setTimeout(() => {
        if (this.lastHeard < sentAt && this._abandon) this._abandon(1006, "no reply to ping");
      }, this.pongTimeoutMs);
    }, this.pingIntervalMs);
  }

  _stopPing() {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
  }
}
