// Admin page: /admin — audit log (read-only).

import { api, ApiError, byTestId, formatDateTime, h, showMessage, signOut } from "./api.js";

const el = {
  user: byTestId("user-name"),
  signOut: byTestId("sign-out"),
  error: byTestId("error-message"),
  form: byTestId("audit-filter"),
  session: byTestId("audit-session"),
  limit: byTestId("audit-limit"),
  summary: byTestId("audit-summary"),
  rows: byTestId("audit-rows"),
};

function readQuery() {
  const params = new URLSearchParams(location.search);
  el.session.value = params.get("session_id") || "";
  const limit = params.get("limit");
  if (limit && [...el.limit.options].some((o) => o.value === limit)) el.limit.value = limit;
}

function writeQuery() {
  const params = new URLSearchParams();
  if (el.session.value.trim()) params.set("session_id", el.session.value.trim());
  if (el.limit.value !== "200") params.set("limit", el.limit.value);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

async function load() {
  showMessage(el.error, "");
  const params = new URLSearchParams();
  const sessionId = el.session.value.trim();
  if (sessionId) params.set("session_id", sessionId);
  params.set("limit", el.limit.value);
  el.summary.textContent = "Loading…";
  try {
    const res = await api(`/api/admin/audit?${params}`);
    const events = ((res && res.events) || []).slice();
    events.sort((a, b) => String(b.at).localeCompare(String(a.at)));
    el.rows.replaceChildren(...events.map((e) => h("tr", { "data-testid": "audit-row" },
      h("td", {}, h("time", { datetime: e.at }, formatDateTime(e.at))),
      h("td", { class: "mono" }, e.session_id
        ? h("a", { href: `?session_id=${encodeURIComponent(e.session_id)}`, "data-session": e.session_id }, e.session_id)
        : "—"),
      h("td", { class: "mono" }, e.actor || ""),
      h("td", {}, e.action || ""),
      h("td", {}, e.detail || ""))));
    const scope = sessionId ? ` for session ${sessionId}` : "";
    el.summary.textContent = events.length
      ? `${events.length} event${events.length === 1 ? "" : "s"}${scope}, newest first.`
      : `No events${scope}.`;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    el.summary.textContent = "";
    showMessage(el.error, err instanceof ApiError && err.status === 403
      ? "This page is for administrators."
      : err.message);
  }
}

el.rows.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-session]");
  if (!link) return;
  event.preventDefault();
  el.session.value = link.dataset.session;
  writeQuery();
  load();
});

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  writeQuery();
  load();
});

el.signOut.addEventListener("click", signOut);

(async () => {
  try {
    const res = await api("/api/me");
    const user = res && res.user;
    if (user) el.user.textContent = user.display_name || user.email;
  } catch {
    return;
  }
  readQuery();
  await load();
})();
