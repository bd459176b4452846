// Therapist's sessions list: /sessions

import {
  api, ApiError, byTestId, copyText, formatDateTime, h, rememberInvite, showMessage, signOut,
} from "./api.js";

const el = {
  user: byTestId("user-name"),
  signOut: byTestId("sign-out"),
  error: byTestId("error-message"),
  form: byTestId("create-form"),
  label: byTestId("client-label"),
  ttl: byTestId("invite-ttl"),
  create: byTestId("create-session"),
  created: byTestId("created"),
  inviteUrl: byTestId("invite-url"),
  copy: byTestId("copy-invite"),
  copyStatus: byTestId("copy-status"),
  openCreated: byTestId("open-created-room"),
  loading: byTestId("sessions-loading"),
  list: byTestId("session-list"),
};

const STATUS_LABEL = { scheduled: "Scheduled", live: "Live", ended: "Ended" };

function roomPath(session) {
  // room_url may be absolute (public URL); stay on this origin either way.
  try {
    if (session.room_url) return new URL(session.room_url, location.origin).pathname;
  } catch {
    /* fall back below */
  }
  return `/sessions/${encodeURIComponent(session.id)}`;
}

function sessionItem(s) {
  const label = (s.client_label || "").trim() || "Unlabelled session";
  const meta = [`Created ${formatDateTime(s.created_at)}`];
  if (s.status === "scheduled" && s.invite_expires_at) meta.push(`link works until ${formatDateTime(s.invite_expires_at)}`);
  if (s.status === "live" && s.started_at) meta.push(`started ${formatDateTime(s.started_at)}`);
  if (s.status === "ended" && s.ended_at) meta.push(`ended ${formatDateTime(s.ended_at)}`);
  const status = s.status in STATUS_LABEL ? s.status : "scheduled";
  return h("li", { class: "session-item", "data-testid": "session-item", "data-session-id": s.id },
    h("div", {},
      h("span", { class: "title" }, label),
      h("span", { class: `badge badge-${status}`, "data-testid": "session-status" }, STATUS_LABEL[status] || s.status)),
    h("div", { class: "meta" }, meta.join(", ")),
    h("div", { class: "actions" },
      s.status === "ended"
        ? h("a", {
          class: "btn btn-primary btn-small",
          href: `/sessions/${encodeURIComponent(s.id)}/summary`,
          "data-testid": "summary-link",
          "aria-label": `Summary for ${label}`,
        }, "Summary")
        : h("a", {
          class: "btn btn-primary btn-small",
          href: roomPath(s),
          "data-testid": "open-room",
          "aria-label": `Open room for ${label}`,
        }, "Open room")));
}

async function loadSessions() {
  try {
    const res = await api("/api/sessions");
    const sessions = (res && res.sessions) || [];
    sessions.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    el.list.replaceChildren(...sessions.map(sessionItem));
    el.loading.hidden = sessions.length > 0;
    el.loading.textContent = "No sessions yet. Create one above.";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    el.loading.hidden = true;
    showMessage(el.error, err instanceof ApiError && err.status === 403
      ? "This page is for therapists. Administrators use the admin page."
      : err.message);
  }
}

el.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(el.error, "");
  el.create.disabled = true;
  const body = {};
  const label = el.label.value.trim();
  if (label) body.client_label = label;
  if (el.ttl.value) body.invite_ttl_hours = Number(el.ttl.value);
  try {
    const res = await api("/api/sessions", { method: "POST", body });
    rememberInvite(res.id, res.invite_url);
    el.inviteUrl.textContent = res.invite_url;
    el.copyStatus.textContent = res.invite_expires_at ? `The link works until ${formatDateTime(res.invite_expires_at)}.` : "";
    el.openCreated.href = roomPath(res);
    el.openCreated.dataset.sessionId = res.id;
    el.created.hidden = false;
    el.label.value = "";
    el.copy.focus();
    await loadSessions();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showMessage(el.error, err.message);
  } finally {
    el.create.disabled = false;
  }
});

el.copy.addEventListener("click", async () => {
  const ok = await copyText(el.inviteUrl.textContent);
  el.copyStatus.textContent = ok ? "Link copied." : "Select the link and copy it.";
});

el.signOut.addEventListener("click", signOut);

(async () => {
  try {
    const res = await api("/api/me");
    const user = res && res.user;
    if (user) el.user.textContent = user.display_name || user.email;
    if (user && user.role === "admin") {
      el.user.after(h("a", { href: "/admin" }, "Admin"));
    }
  } catch {
    return; // redirected to login
  }
  await loadSessions();
})();
