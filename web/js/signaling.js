// WebSocket wrapper for the signalling protocol (signaling/messages.py).
// JSON messages with a `type`; handlers are dispatched by type. It never reconnects by itself:
// the pages decide what a lost socket means for the person in front of them.

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

export class Signaling {
  constructor(path, { pingIntervalMs = 25000 } = {}) {
    this.url = wsUrl(path);
    this.ws = null;
    this.handlers = new Map();
    this.pingIntervalMs = pingIntervalMs;
    this.pingTimer = null;
    this.closedByUs = false;
    this.receivedAny = false;
  }

  /** Register a handler for a message type; "*" gets every message, "close" the close event. */
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

  /** Open the socket; resolves once open, rejects if it closes first. */
  connect() {
    return new Promise((resolve, reject) => {
      let opened = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.addEventListener("open", () => {
        opened = true;
        this._startPing();
        resolve();
      });
      ws.addEventListener("message", (event) => {
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          console.warn("ignoring a non-JSON signalling message");
          return;
        }
        if (!msg || typeof msg.type !== "string") return;
        this.receivedAny = true;
        this._emit("*", msg);
        this._emit(msg.type, msg);
      });
      ws.addEventListener("close", (event) => {
        this._stopPing();
        if (!opened) reject(new Error("Could not connect to the server."));
        this._emit("close", {
          code: event.code,
          reason: event.reason,
          wasClean: event.wasClean,
          byUs: this.closedByUs,
          receivedAny: this.receivedAny,
        });
      });
    });
  }

  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  close(code = 1000, reason = "") {
    this.closedByUs = true;
    this._stopPing();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
  }

  _startPing() {
    this._stopPing();
    if (!this.pingIntervalMs) return;
    this.pingTimer = setInterval(() => {
      this.send({ type: "ping", t: Date.now() / 1000 });
    }, this.pingIntervalMs);
  }

  _stopPing() {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }
}
