// Admin page: /admin — live calls and their quality, call detail charts, incidents,
// server health and the audit log. Admins never see clinical content (the API gives none).

import { api, ApiError, byTestId, formatDateTime, h, showMessage, signOut } from "./api.js";
import { formatClock, lineChart } from "./charts.js";
import { QUALITY_WORDS } from "./quality.js";

const CALLS_EVERY_MS = 2000;
const HEALTH_EVERY_MS = 5000;
const INCIDENTS_EVERY_MS = 10000;

const el = {
  user: byTestId("user-name"),
  signOut: byTestId("sign-out"),
  error: byTestId("error-message"),
  form: byTestId("audit-filter"),
  session: byTestId("audit-session"),
  action: byTestId("audit-action"),
  limit: byTestId("audit-limit"),
  summary: byTestId("audit-summary"),
  rows: byTestId("audit-rows"),
  health: byTestId("health"),
  healthUpdated: byTestId("health-updated"),
  callsSummary: byTestId("calls-summary"),
  callsRows: byTestId("calls-rows"),
  detail: byTestId("call-detail"),
  detailTitle: byTestId("detail-title"),
  detailSummary: byTestId("detail-summary"),
  detailCharts: byTestId("detail-charts"),
  detailTable: byTestId("detail-table"),
  detailClose: byTestId("detail-close"),
  incidentsSummary: byTestId("incidents-summary"),
  incidentsRows: byTestId("incidents-rows"),
  require2fa: byTestId("require-2fa"),
  policyStatus: byTestId("policy-status"),
};

const state = { detailId: null, stopped: false };

function problem(err) {
  if (err instanceof ApiError && err.status === 401) return;
  showMessage(el.error, err instanceof ApiError && err.status === 403
    ? "This page is for administrators."
    : err.message);
}

const shortId = (id) => (id && id.length > 12 ? `${id.slice(0, 8)}…` : id || "");

function qualityBadge(quality) {
  const label = quality && quality.label ? quality.label : null;
  const word = label ? QUALITY_WORDS[label] || label : "no data yet";
  return h("span", { class: `q-badge q-${label || "none"}`, "data-testid": "call-quality", "data-label": label || "none" },
    h("span", { class: "q-dot", "aria-hidden": "true" }), word,
    quality && Number.isFinite(quality.score) ? h("span", { class: "hint" }, ` (${Math.round(quality.score)})`) : null);
}

/** relay_mode is one word, or one per direction ({"therapist->client": "forward", …}). */
function relayText(mode) {
  if (!mode) return "–";
  if (typeof mode === "string") return mode;
  const entries = Object.entries(mode);
  const values = new Set(entries.map(([, v]) => v));
  if (values.size === 1) return [...values][0];
  return entries.map(([dir, v]) => `${dir.replace("->", " → ")}: ${v}`).join("; ");
}

/** Each cell carries its column's name, shown beside the value when a phone stacks the
 * table's rows into cards (app.css, .stack-table). */
function labelCells(tbody) {
  const table = tbody.closest("table");
  const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const row of tbody.rows) {
    [...row.cells].forEach((cell, i) => {
      if (names[i]) cell.dataset.label = names[i];
    });
  }
}

// ---------- live calls ----------
async function loadCalls() {
  try {
    const res = await api("/api/admin/calls");
    const calls = (res && res.calls) || [];
    // Re-rendering every 2 s must not take the keyboard focus away.
    const focusedRow = document.activeElement && el.callsRows.contains(document.activeElement)
      ? document.activeElement.closest("tr").dataset.sessionId
      : null;
    el.callsRows.replaceChildren(...calls.map((c) => {
      const details = h("button", {
        type: "button", class: "btn btn-secondary btn-small", "data-testid": "call-details",
        "aria-label": `Details for call ${shortId(c.session_id)}`,
        "aria-expanded": String(state.detailId === c.session_id),
        "aria-controls": "call-detail",
      }, "Details");
      details.addEventListener("click", () => openDetail(c.session_id));
      return h("tr", { "data-testid": "call-row", "data-session-id": c.session_id },
        h("td", { class: "mono", title: c.session_id }, shortId(c.session_id)),
        h("td", {}, c.therapist || ""),
        h("td", { "data-testid": "call-duration" }, formatClock(c.duration_s)),
        h("td", { class: "num", "data-testid": "call-participants" }, String(c.participants ?? 0),
          c.reconnecting
            ? h("span", { class: "hint", "data-testid": "call-reconnecting" }, ` +${c.reconnecting} reconnecting`)
            : null,
          c.waiting ? h("span", { class: "hint" }, ` +${c.waiting} waiting`) : null),
        h("td", {}, qualityBadge(c.worst_quality)),
        h(
          "td",
          { "data-testid": "call-relay" },
          relayText(c.relay_mode) + (Number.isInteger(c.media_worker) ? ` · worker ${c.media_worker}` : ""),
        ),
        h("td", {}, details));
    }));
    labelCells(el.callsRows);
    if (focusedRow) {
      const again = el.callsRows.querySelector(`tr[data-session-id="${CSS.escape(focusedRow)}"] [data-testid="call-details"]`);
      if (again) again.focus();
    }
    el.callsSummary.textContent = calls.length
      ? `${calls.length} live call${calls.length === 1 ? "" : "s"}. Updated ${new Date().toLocaleTimeString()}.`
      : "No live calls right now.";
  } catch (err) {
    problem(err);
  }
}

// ---------- call detail ----------
// `limit`: where the quality score (media/relay/quality.py) starts to take points off; drawn
// as a dotted line on the chart ("above" or "below" it is worse).
const METRICS = [
  { key: "rtt_ms", title: "Round-trip time", unit: "ms", fmt: (v) => `${Math.round(v)} ms`,
    limit: { value: 200, worse: "above" } },
  { key: "loss", title: "Packet loss (worse direction)", unit: "%", fmt: (v) => `${v.toFixed(1)}%`,
    value: (p) => (p.loss_up === null && p.loss_down === null ? null : Math.max(p.loss_up || 0, p.loss_down || 0) * 100),
    limit: { value: 2, worse: "above" } },
  { key: "jitter_ms", title: "Audio jitter", unit: "ms", fmt: (v) => `${Math.round(v)} ms`,
    limit: { value: 30, worse: "above" } },
  { key: "bitrate_in", title: "Bitrate received by the server", unit: "kbps", fmt: (v) => `${Math.round(v)} kbps`,
    value: (p) => (p.bitrate_in === null || p.bitrate_in === undefined ? null : p.bitrate_in / 1000),
    limit: { value: 150, worse: "below" } },
  { key: "bitrate_out", title: "Bitrate sent by the server", unit: "kbps", fmt: (v) => `${Math.round(v)} kbps`,
    value: (p) => (p.bitrate_out === null || p.bitrate_out === undefined ? null : p.bitrate_out / 1000),
    limit: { value: 150, worse: "below" } },
  { key: "fps", title: "Frames per second received", unit: "fps", fmt: (v) => `${Math.round(v)} fps` },
];
const valueOf = (metric, p) => {
  const v = metric.value ? metric.value(p) : p[metric.key];
  return v === null || v === undefined || !Number.isFinite(Number(v)) ? null : Number(v);
};

function renderDetail(data) {
  const roles = Object.entries((data && data.participants) || {});
  const all = roles.flatMap(([, p]) => p.history || []);
  const t0 = all.length ? Math.min(...all.map((p) => p.t)) : 0;
  el.detailTitle.textContent = `Call ${shortId(data.session_id)}`;
  el.detailSummary.textContent = roles.length
    ? roles.map(([role, p]) => `${role}: ${p.label ? QUALITY_WORDS[p.label] || p.label : "no data"}${Number.isFinite(p.score) ? ` (score ${Math.round(p.score)})` : ""}`).join(" · ")
    : "No quality samples yet.";
  el.detailCharts.replaceChildren(...METRICS.map((metric) => {
    const series = roles.map(([role, p]) => ({
      name: role,
      className: `series-${role}`,
      points: (p.history || []).map((pt) => [pt.t - t0, valueOf(metric, pt)]),
    }));
    const summaries = roles.map(([role, p]) => {
      const vals = (p.history || []).map((pt) => valueOf(metric, pt)).filter((v) => v !== null);
      if (!vals.length) return `${role}: no data`;
      return `${role}: latest ${metric.fmt(vals[vals.length - 1])}, highest ${metric.fmt(Math.max(...vals))}`;
    });
    return h("figure", { class: "detail-chart", "data-testid": `detail-${metric.key}` },
      h("figcaption", {}, metric.title, h("span", { class: "hint" }, ` (${metric.unit})`)),
      lineChart({
        series,
        width: 360,
        height: 150,
        markers: false,
        formatX: (v) => formatClock(v),
        formatY: (v, d) => v.toFixed(d),
        thresholds: metric.limit ? [{ value: metric.limit.value, className: "limit-line" }] : [],
        label: `${metric.title} (${metric.unit}) over the call. ${summaries.join("; ")}.${
          metric.limit ? ` Quality suffers ${metric.limit.worse} ${metric.fmt(metric.limit.value)}.` : ""}`,
      }),
      metric.limit ? h("p", { class: "hint limit-note", "data-testid": `limit-${metric.key}` },
        `Dotted line: ${metric.fmt(metric.limit.value)}; quality suffers ${metric.limit.worse} it.`) : null);
  }));
  const rows = [];
  for (const [role, p] of roles) {
    for (const pt of (p.history || []).slice(-5)) {
      rows.push(h("tr", {},
        h("th", { scope: "row" }, role),
        h("td", {}, formatClock(pt.t - t0)),
        ...METRICS.map((metric) => {
          const v = valueOf(metric, pt);
          return h("td", { class: "num" }, v === null ? "–" : metric.fmt(v));
        }),
        h("td", {}, pt.candidate_type || "–")));
    }
  }
  el.detailTable.replaceChildren(h("table", {},
    h("caption", {}, "The last five samples per participant (every 2 s)"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Participant"), h("th", { scope: "col" }, "Time"),
      ...METRICS.map((m) => h("th", { scope: "col", class: "num" }, m.title)),
      h("th", { scope: "col" }, "Candidate"))),
    h("tbody", {}, ...rows)));
}

async function loadDetail() {
  const id = state.detailId;
  if (!id) return;
  try {
    const data = await api(`/api/admin/calls/${encodeURIComponent(id)}`);
    if (id === state.detailId) renderDetail(data);
  } catch (err) {
    if (id !== state.detailId) return;
    if (err instanceof ApiError && err.status === 404) {
      el.detailSummary.textContent = "This call has ended.";
      return;
    }
    problem(err);
  }
}

function openDetail(id) {
  state.detailId = id;
  el.detail.hidden = false;
  el.detailCharts.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  loadDetail().then(() => el.detailTitle.focus());
  for (const b of el.callsRows.querySelectorAll('[data-testid="call-details"]')) {
    b.setAttribute("aria-expanded", String(b.closest("tr").dataset.sessionId === id));
  }
}

el.detailTitle.setAttribute("tabindex", "-1");
el.detail.id = "call-detail";
el.detailClose.addEventListener("click", () => {
  const id = state.detailId;
  state.detailId = null;
  el.detail.hidden = true;
  const button = el.callsRows.querySelector(`tr[data-session-id="${CSS.escape(id || "")}"] [data-testid="call-details"]`);
  if (button) {
    button.setAttribute("aria-expanded", "false");
    button.focus();
  }
});

// ---------- incidents ----------
async function loadIncidents() {
  try {
    const res = await api("/api/admin/incidents?limit=50");
    const incidents = (res && res.incidents) || [];
    el.incidentsRows.replaceChildren(...incidents.map((i) => h("tr", { "data-testid": "incident-row" },
      h("td", {}, formatDateTime(new Date(i.at * 1000).toISOString())),
      h("td", { class: "mono", title: i.session_id }, shortId(i.session_id)),
      h("td", {}, i.role || ""),
      h("td", {}, `${i.from ? QUALITY_WORDS[i.from] || i.from : "start"} → ${QUALITY_WORDS[i.to] || i.to}`),
      h("td", { class: "num" }, Number.isFinite(i.score) ? String(Math.round(i.score)) : "–"))));
    labelCells(el.incidentsRows);
    el.incidentsSummary.textContent = incidents.length
      ? `${incidents.length} recent change${incidents.length === 1 ? "" : "s"} into or out of poor or lost quality, newest first.`
      : "No incidents recorded.";
  } catch (err) {
    problem(err);
  }
}

// ---------- health ----------
/** "2 of 2 running (CPU 31 %, 12 %)", plus restarts since start; media in-process when none. */
function workersText(workers, restarts) {
  if (!workers.length) return "none (media runs in the server process)";
  const running = workers.filter((w) => w.alive);
  const cpu = running.map((w) => `${Math.round((w.cpu_fraction || 0) * 100)} %`).join(", ");
  const text = `${running.length} of ${workers.length} running (CPU ${cpu || "–"})`;
  return restarts ? `${text}, ${restarts} restart${restarts === 1 ? "" : "s"}` : text;
}

// Thresholds for the health figures: [watch from, problem from]. The level is said in words
// next to the colour, and the thresholds are printed under each figure.
const HEALTH_LIMITS = {
  cpu: { watch: 0.7, problem: 0.9, text: "Watch from 70 %, a problem from 90 %" },
  lagP99: { watch: 50, problem: 200, text: "Watch from 50 ms, a problem from 200 ms" },
  lagMax: { watch: 250, problem: 1000, text: "Watch from 250 ms, a problem from 1 s" },
};
const LEVEL_WORDS = { ok: "Fine", watch: "Watch", problem: "Problem", none: "No data" };

function levelFor(value, limits) {
  if (!Number.isFinite(value)) return "none";
  if (value >= limits.problem) return "problem";
  if (value >= limits.watch) return "watch";
  return "ok";
}

function workersLevel(workers, restarts) {
  if (workers.some((w) => !w.alive)) return "problem";
  return restarts ? "watch" : "ok";
}

async function loadHealth() {
  try {
    const hl = await api("/api/admin/health");
    const item = (label, value, testid, level = null, rule = "") => h("div", { class: "health-item", "data-level": level || "plain" },
      h("dt", {}, label),
      h("dd", { "data-testid": testid }, value),
      level ? h("dd", { class: "level-word", "data-testid": `${testid}-level` },
        h("span", { class: "level-dot", "aria-hidden": "true" }), LEVEL_WORDS[level]) : null,
      rule ? h("dd", { class: "level-rule" }, rule) : null);
    const ms = (v) => (Number.isFinite(v) ? `${Math.round(v * 10) / 10} ms` : "–");
    const workers = hl.media_workers || [];
    const restarts = hl.media_worker_restarts || 0;
    el.health.replaceChildren(
      item("CPU", Number.isFinite(hl.cpu_fraction) ? `${Math.round(hl.cpu_fraction * 100)}%` : "–", "health-cpu",
        levelFor(hl.cpu_fraction, HEALTH_LIMITS.cpu), HEALTH_LIMITS.cpu.text),
      item("Event-loop lag (p99)", ms(hl.event_loop_lag_p99_ms), "health-lag-p99",
        levelFor(hl.event_loop_lag_p99_ms, HEALTH_LIMITS.lagP99), HEALTH_LIMITS.lagP99.text),
      item("Event-loop lag (max)", ms(hl.event_loop_lag_max_ms), "health-lag-max",
        levelFor(hl.event_loop_lag_max_ms, HEALTH_LIMITS.lagMax), HEALTH_LIMITS.lagMax.text),
      item("Database", hl.database ? "reachable" : "not reachable", "health-database",
        hl.database ? "ok" : "problem", "A problem when it cannot be reached"),
      item("Media workers", workersText(workers, restarts), "health-workers",
        workers.length ? workersLevel(workers, restarts) : null,
        workers.length ? "Watch after a restart, a problem when one is down" : ""),
      item("Rooms", String(hl.rooms ?? "–"), "health-rooms"),
      item("Peer connections", String(hl.peer_connections ?? "–"), "health-peers"),
    );
    el.healthUpdated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  } catch (err) {
    problem(err);
  }
}

// ---------- audit log ----------
function readQuery() {
  const params = new URLSearchParams(location.search);
  el.session.value = params.get("session_id") || "";
  el.action.value = params.get("action") || "";
  const limit = params.get("limit");
  if (limit && [...el.limit.options].some((o) => o.value === limit)) el.limit.value = limit;
}

function writeQuery() {
  const params = new URLSearchParams();
  if (el.session.value.trim()) params.set("session_id", el.session.value.trim());
  if (el.action.value.trim()) params.set("action", el.action.value.trim());
  if (el.limit.value !== "200") params.set("limit", el.limit.value);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

let auditRequest = 0;

async function loadAudit() {
  // Only the newest request may fill the table (an older, slower one must not win the race).
  const mine = ++auditRequest;
  showMessage(el.error, "");
  const params = new URLSearchParams();
  const sessionId = el.session.value.trim();
  const action = el.action.value.trim();
  if (sessionId) params.set("session_id", sessionId);
  if (action) params.set("action", action);
  params.set("limit", el.limit.value);
  el.summary.textContent = "Loading…";
  try {
    const res = await api(`/api/admin/audit?${params}`);
    if (mine !== auditRequest) return;
    const events = ((res && res.events) || []).slice();
    events.sort((a, b) => String(b.at).localeCompare(String(a.at)));
    el.rows.replaceChildren(...events.map((e) => h("tr", { "data-testid": "audit-row" },
      h("td", {}, h("time", { datetime: e.at }, formatDateTime(e.at))),
      h("td", { class: "mono" }, e.session_id
        ? h("a", { href: `?session_id=${encodeURIComponent(e.session_id)}`, "data-session": e.session_id }, e.session_id)
        : "—"),
      h("td", { title: e.actor || "" }, e.actor_name || e.actor || ""),
      h("td", {}, e.action || ""),
      h("td", {}, e.detail || ""))));
    labelCells(el.rows);
    const scope = `${sessionId ? ` for session ${sessionId}` : ""}${action ? ` with action ${action}` : ""}`;
    el.summary.textContent = events.length
      ? `${events.length} event${events.length === 1 ? "" : "s"}${scope}, newest first.`
      : `No events${scope}.`;
  } catch (err) {
    if (mine !== auditRequest) return;
    el.summary.textContent = "";
    problem(err);
  }
}

el.rows.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-session]");
  if (!link) return;
  event.preventDefault();
  el.session.value = link.dataset.session;
  writeQuery();
  loadAudit();
});

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  writeQuery();
  loadAudit();
});

el.signOut.addEventListener("click", signOut);

// ---------- sign-in policy ----------
async function loadPolicy() {
  try {
    const res = await api("/api/admin/settings");
    el.require2fa.checked = Boolean(res && res.require_two_factor);
  } catch (err) {
    problem(err);
  }
}

el.require2fa.addEventListener("change", async () => {
  const wanted = el.require2fa.checked;
  el.require2fa.disabled = true;
  showMessage(el.policyStatus, "");
  try {
    const res = await api("/api/admin/settings", { method: "PUT", body: { require_two_factor: wanted } });
    el.require2fa.checked = Boolean(res.require_two_factor);
    showMessage(el.policyStatus, wanted
      ? "Two-factor sign-in is now required for all staff."
      : "Two-factor sign-in is no longer required.", "ok");
  } catch (err) {
    el.require2fa.checked = !wanted;
    showMessage(el.policyStatus, err.message, "error");
  } finally {
    el.require2fa.disabled = false;
  }
});

/** Run `fn` now and then every `ms`, skipping a round while the previous one is still out. */
function every(ms, fn) {
  let busy = false;
  const run = async () => {
    if (busy || state.stopped || document.hidden) return;
    busy = true;
    try {
      await fn();
    } finally {
      busy = false;
    }
  };
  run();
  setInterval(run, ms);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) run(); });
}

(async () => {
  // Read the URL's filter before the first await: an admin who types a filter and presses Apply
  // while the page is still asking who they are must not have it overwritten afterwards.
  readQuery();
  try {
    const res = await api("/api/me");
    const user = res && res.user;
    if (user) el.user.textContent = user.display_name || user.email;
    if (user && user.role !== "admin") {
      showMessage(el.error, "This page is for administrators.");
      return;
    }
  } catch {
    return;
  }
  every(CALLS_EVERY_MS, async () => {
    await loadCalls();
    await loadDetail();
  });
  every(HEALTH_EVERY_MS, loadHealth);
  every(INCIDENTS_EVERY_MS, loadIncidents);
  await loadPolicy();
  // The admin may already have applied a filter; the page's own first load must not replace it.
  if (auditRequest === 0) await loadAudit();
})();
