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
  plannedDate: byTestId("planned-date"),
  plannedTime: byTestId("planned-time"),
  plannedMinutes: byTestId("planned-minutes"),
  create: byTestId("create-session"),
  created: byTestId("created"),
  inviteUrl: byTestId("invite-url"),
  copy: byTestId("copy-invite"),
  copyStatus: byTestId("copy-status"),
  openCreated: byTestId("open-created-room"),
  loading: byTestId("sessions-loading"),
  list: byTestId("session-list"),
};

const STATUS_LABEL = { scheduled: "Scheduled", live: "Live", ended: "Ended", expired: "Link expired" };

/** "Tue 1 Dec, 14:00 · 50 min" in the therapist's own locale and zone. */
export function plannedText(s) {
  if (!s.planned_start) return s.planned_minutes ? `${s.planned_minutes} min` : "";
  const when = new Date(s.planned_start).toLocaleString([], {
    weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
  });
  return s.planned_minutes ? `${when} · ${s.planned_minutes} min` : when;
}

async function copySessionLink(s, button, status) {
  button.disabled = true;
  try {
    let res;
    if (s.invite_expired || !s.invite_available) {
      res = await api(`/api/sessions/${encodeURIComponent(s.id)}/invite`, { method: "POST", body: { keep_participants: true } });
    } else {
      res = await api(`/api/sessions/${encodeURIComponent(s.id)}/invite`);
    }
    rememberInvite(s.id, res.invite_url);
    const ok = await copyText(res.invite_url);
    const text = `${ok ? "Link copied" : `Copy this link: ${res.invite_url}`}. It works until ${formatDateTime(res.invite_expires_at)}.`;
    if (s.invite_expired || !s.invite_available) {
      await loadSessions(); // the item is drawn again (status, button): say it in the new one
      const item = el.list.querySelector(`[data-session-id="${CSS.escape(s.id)}"]`);
      const fresh = item && item.querySelector('[data-testid="link-status"]');
      if (fresh) {
        fresh.textContent = text;
        const again = item.querySelector('[data-testid="copy-session-link"]');
        if (again) again.focus();
      }
    } else {
      status.textContent = text;
    }
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) status.textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

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
  const planned = plannedText(s);
  const meta = [planned ? `Planned ${planned}` : `Created ${formatDateTime(s.created_at)}`];
  if (s.status === "scheduled" && s.invite_expires_at && !s.invite_expired) meta.push(`link works until ${formatDateTime(s.invite_expires_at)}`);
  if (s.status === "scheduled" && s.invite_expired) meta.push(`link expired ${formatDateTime(s.invite_expires_at)}`);
  if (s.status === "live" && s.started_at) meta.push(`started ${formatDateTime(s.started_at)}`);
  if (s.status === "ended" && s.ended_at) meta.push(`ended ${formatDateTime(s.ended_at)}`);
  let status = s.status in STATUS_LABEL ? s.status : "scheduled";
  if (status === "scheduled" && s.invite_expired) status = "expired";
  const linkStatus = h("p", { class: "hint link-status", "data-testid": "link-status", "aria-live": "polite" });
  const linkButton = s.status === "ended" ? null : h("button", {
    type: "button",
    class: "btn btn-secondary btn-small",
    "data-testid": s.invite_expired || !s.invite_available ? "new-link" : "copy-session-link",
    "aria-label": `${s.invite_expired || !s.invite_available ? "New link" : "Copy client link"} for ${label}`,
  }, s.invite_expired || !s.invite_available ? "New link" : "Copy client link");
  if (linkButton) linkButton.addEventListener("click", () => copySessionLink(s, linkButton, linkStatus));
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
        }, "Open room"),
      linkButton ? " " : null,
      linkButton),
    linkStatus);
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
  if (el.plannedDate.value) {
    // The therapist's local date and time, sent as an absolute instant.
    const when = new Date(`${el.plannedDate.value}T${el.plannedTime.value || "09:00"}`);
    if (Number.isNaN(when.getTime())) {
      showMessage(el.error, "The planned date or time is not valid.");
      el.create.disabled = false;
      el.plannedDate.focus();
      return;
    }
    body.planned_start = when.toISOString();
  }
  if (el.plannedMinutes.value) body.planned_minutes = Number(el.plannedMinutes.value);
  try {
    const res = await api("/api/sessions", { method: "POST", body });
    rememberInvite(res.id, res.invite_url);
    el.inviteUrl.textContent = res.invite_url;
    el.copyStatus.textContent = res.invite_expires_at ? `The link works until ${formatDateTime(res.invite_expires_at)}.` : "";
    el.openCreated.href = roomPath(res);
    el.openCreated.dataset.sessionId = res.id;
    el.created.hidden = false;
    el.label.value = "";
    el.plannedDate.value = "";
    el.plannedTime.value = "";
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
