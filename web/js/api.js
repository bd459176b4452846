// Shared helpers: JSON fetch, error display, small DOM and formatting utilities.

export class ApiError extends Error {
  constructor(status, message, data = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.data = data;
  }
}

/** Turn a FastAPI error body into one human sentence. */
export function detailText(data, fallback = "Something went wrong. Please try again.") {
  if (!data) return fallback;
  const detail = data.detail;
  if (typeof detail === "string" && detail.trim()) return detail;
  // An error with a machine-readable code: {"code": "...", "message": "..."}.
  if (detail && typeof detail.message === "string" && detail.message.trim()) return detail.message;
  if (Array.isArray(detail) && detail.length) {
    // Validation errors: [{loc: [...], msg: "..."}]
    return detail
      .map((d) => {
        const parts = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body" && typeof p === "string") : [];
        const field = parts.length ? parts[parts.length - 1].replace(/_/g, " ") : "";
        const label = field ? field[0].toUpperCase() + field.slice(1) : "";
        // pydantic prefixes a validator's own sentence with "Value error, ".
        let msg = String(d.msg || "").replace(/^Value error,\s*/, "");
        if (!label && msg) msg = `${msg[0].toUpperCase()}${msg.slice(1)}${/[.!?]$/.test(msg) ? "" : "."}`;
        return label ? `${label}: ${msg}` : msg;
      })
      .join(" ");
  }
  return fallback;
}

export const ENROLMENT_REQUIRED = "two_factor_enrolment_required";

export function loginUrl(next = location.pathname + location.search) {
  return `/login?next=${encodeURIComponent(next)}`;
}

export function redirectToLogin() {
  location.assign(loginUrl());
}

/**
 * fetch() a JSON API. Returns the parsed body (or null for an empty one).
 * 401 redirects to the login page unless `redirectOn401` is false; other errors throw ApiError.
 */
export async function api(path, { method = "GET", body, redirectOn401 = true } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, "Could not reach the server. Check your connection and try again.");
  }
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.status === 401 && redirectOn401) {
    redirectToLogin();
    throw new ApiError(401, "Please sign in.", data);
  }
  if (res.status === 403 && data && data.detail && data.detail.code === ENROLMENT_REQUIRED
      && location.pathname !== "/account") {
    // The admins require two-factor sign-in: nothing else works until it is set up.
    location.assign("/account?required=1");
  }
  if (!res.ok) {
    throw new ApiError(res.status, detailText(data, `The server answered ${res.status}.`), data);
  }
  return data;
}

/** Show (or clear, with an empty message) text in an aria-live region. */
export function showMessage(el, message, kind = "error") {
  if (!el) return;
  el.textContent = message || "";
  el.classList.toggle("notice-error", kind === "error" && Boolean(message));
  el.classList.toggle("notice-ok", kind === "ok" && Boolean(message));
  el.hidden = !message;
}

export function showError(el, err) {
  const message = err instanceof Error ? err.message : String(err || "");
  showMessage(el, message, "error");
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

/** Create an element: h("li", {class: "x", dataset: {id: 1}}, "text", child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "short",
});

export function formatDateTime(iso) {
  if (!iso) return "";
  // The server stores UTC; a timestamp without an offset is UTC, not local time.
  const text = String(iso);
  const hasZone = /(?:Z|[+-]\d\d:?\d\d)$/i.test(text);
  const date = new Date(hasZone || !text.includes("T") ? text : `${text}Z`);
  if (Number.isNaN(date.getTime())) return String(iso);
  return dateTimeFormat.format(date);
}

/** Copy text to the clipboard; returns true on success. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall through to the legacy path */
  }
  try {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  } catch {
    return false;
  }
}

/** Only follow same-origin, path-only "next" targets (no open redirects). */
/**
 * The path to go to after sign-in, if it stays on this site; otherwise null.
 * URL parsing drops tabs and newlines ("/\t/evil.example" becomes "//evil.example") and reads
 * "\\" as "/", so such values are refused outright, and what is left is checked after parsing.
 */
export function safeNext(value) {
  if (!value || typeof value !== "string" || value.length > 2000) return null;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f\\]/.test(value)) return null;
  if (!value.startsWith("/") || value.startsWith("//")) return null;
  let url;
  try {
    url = new URL(value, location.origin);
  } catch {
    return null;
  }
  if (url.origin !== location.origin || url.pathname.startsWith("/login")) return null;
  return url.pathname + url.search + url.hash;
}

export function inviteStorageKey(sessionId) {
  return `rapport.invite.${sessionId}`;
}

export function rememberInvite(sessionId, url) {
  try {
    sessionStorage.setItem(inviteStorageKey(sessionId), url);
  } catch {
    /* storage may be disabled; the link is still shown on screen */
  }
}

export function recallInvite(sessionId) {
  try {
    return sessionStorage.getItem(inviteStorageKey(sessionId));
  } catch {
    return null;
  }
}

export async function signOut() {
  try {
    await api("/api/logout", { method: "POST", redirectOn401: false });
  } catch {
    /* signing out of an expired login is fine */
  }
  location.assign("/login");
}

/** Last path segment after a prefix, e.g. pathParam("/sessions/") on /sessions/abc → "abc". */
export function pathParam(prefix) {
  const path = location.pathname;
  if (!path.startsWith(prefix)) return "";
  return decodeURIComponent(path.slice(prefix.length).split("/")[0] || "");
}
