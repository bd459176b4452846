// Session summary: /sessions/{id}/summary — signals, timeline, agenda, check-in, trend, exports.

import { api, ApiError, byTestId, formatDateTime, h, pathParam, showMessage, signOut } from "./api.js";
import { formatClock, formatShare, laneChart, lineChart, runsFromSeconds } from "./charts.js";

const sessionId = pathParam("/sessions/");

const el = {
  user: byTestId("user-name"),
  signOut: byTestId("sign-out"),
  title: byTestId("summary-title"),
  meta: byTestId("summary-meta"),
  exports: byTestId("exports"),
  exportJson: byTestId("export-json"),
  exportCsv: byTestId("export-csv"),
  error: byTestId("error-message"),
  content: byTestId("summary-content"),
  checkin: byTestId("checkin-summary"),
  agenda: byTestId("agenda-summary"),
  figures: byTestId("key-figures"),
  signalsTable: byTestId("signals-table"),
  timeline: byTestId("summary-timeline"),
  timelineCaption: byTestId("timeline-caption"),
  timelineTable: byTestId("timeline-table"),
  trendCaption: byTestId("trend-caption"),
  trendCharts: byTestId("trend-charts"),
  trendTable: byTestId("trend-table"),
};

const QUESTIONS = {
  bond: "Felt heard, understood and respected",
  goals: "Worked on what they wanted to work on",
  tasks: "The way of working suited them",
  overall: "Overall, the session was right for them",
};

const dateOnly = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const dateTime = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", hour: "numeric", minute: "2-digit" });
function parseDate(iso) {
  const text = String(iso || "");
  const hasZone = /(?:Z|[+-]\d\d:?\d\d)$/i.test(text);
  const d = new Date(hasZone || !text.includes("T") ? text : `${text}Z`);
  return Number.isNaN(d.getTime()) ? null : d;
}
/** Axis labels for sessions: the day, or day and time when two sessions share a day. */
function sessionLabels(points) {
  const days = points.map((p) => { const d = parseDate(p.date); return d ? dateOnly.format(d) : ""; });
  const clash = new Set(days).size < days.length;
  return points.map((p, i) => { const d = parseDate(p.date); return d ? (clash ? dateTime.format(d) : days[i]) : ""; });
}

function table({ caption, head, rows, testid }) {
  return h("table", { "data-testid": testid },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, ...head.map((c, i) => h("th", { scope: "col", class: i ? "num" : "" }, c)))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", { class: "num" }, c)))))));
}

// ---------- check-in ----------
function renderCheckin(checkin) {
  if (!checkin) {
    el.checkin.replaceChildren(h("p", { class: "muted" }, "No check-in answers yet. The client can answer for two days after the session."));
    el.checkin.dataset.state = "none";
    return;
  }
  if (checkin.skipped) {
    el.checkin.replaceChildren(h("p", {}, "The client chose to skip the check-in."));
    el.checkin.dataset.state = "skipped";
    return;
  }
  el.checkin.dataset.state = "answered";
  const scores = h("ul", { class: "score-list" }, ...["bond", "goals", "tasks", "overall"].map((key) => {
    const v = checkin[key];
    return h("li", { class: "score", "data-testid": `checkin-score-${key}` },
      h("span", { class: "score-q" }, QUESTIONS[key]),
      h("span", { class: "score-bar", "aria-hidden": "true" }, h("span", { class: "score-fill", style: `width:${(Number(v) || 0) * 10}%` })),
      h("strong", { class: "score-v" }, `${v}`, h("span", { class: "visually-hidden" }, " out of 10")));
  }));
  const total = h("p", { class: "score-total", "data-testid": "checkin-total" },
    h("span", {}, "Total "), h("strong", {}, `${checkin.total} of 40`));
  const parts = [total, scores];
  if (checkin.low) {
    parts.unshift(h("p", { class: "calm-flag", "data-testid": "checkin-low" },
      h("span", { class: "flag-icon", "aria-hidden": "true" }, "i"),
      h("span", {}, `Lower than usual for this client (compared with their ${checkin.compared_with > 1 ? `last ${checkin.compared_with} check-ins` : "previous check-in"}). It may be worth gently asking how the session felt next time.`)));
  }
  if (checkin.comment) {
    parts.push(h("figure", { class: "comment" },
      h("figcaption", {}, "Comment"),
      h("blockquote", { "data-testid": "checkin-comment" }, checkin.comment)));
  }
  if (checkin.submitted_at) parts.push(h("p", { class: "hint" }, `Answered ${formatDateTime(checkin.submitted_at)}`));
  el.checkin.replaceChildren(...parts);
}

// ---------- agenda ----------
function renderAgenda(agenda) {
  const items = (agenda && agenda.items) || [];
  const parts = [];
  parts.push(h("p", { "data-testid": "agenda-outcome" }, items.length
    ? h("strong", {}, `${agenda.done} of ${agenda.total} done`)
    : "No agenda items in this session."));
  if (items.length) {
    parts.push(h("ul", { class: "agenda-outcome" }, ...items.map((i) => h("li", { "data-done": String(Boolean(i.done)) },
      h("span", { class: `agenda-mark agenda-mark-${i.done ? "done" : i.accepted === false ? "proposed" : "open"}`, "aria-hidden": "true" }),
      h("span", {}, i.text),
      h("span", { class: "hint" }, ` — ${i.done ? "done" : i.accepted === false ? "proposal, not accepted" : "not done"}${i.proposed_by === "client" ? ", from the client" : ""}`)))));
  }
  parts.push(h("h3", {}, "Homework"));
  parts.push(agenda && agenda.homework
    ? h("p", { class: "homework-text", "data-testid": "summary-homework" }, agenda.homework)
    : h("p", { class: "muted", "data-testid": "summary-homework" }, "None set."));
  el.agenda.replaceChildren(...parts);
}

// ---------- signals ----------
function figure(label, value, note, testid) {
  return h("div", { class: "figure" },
    h("dt", {}, label),
    h("dd", {}, h("strong", { "data-testid": testid }, value), note ? h("span", { class: "hint" }, note) : null));
}

function renderSignals(m, prefs) {
  if (!m) {
    el.figures.replaceChildren(h("p", { class: "muted" }, "No signals were recorded for this session (nobody talked while both were present)."));
    el.signalsTable.replaceChildren();
    return;
  }
  const lo = Math.round(prefs.target_low * 100);
  const hi = Math.round(prefs.target_high * 100);
  let where = "";
  if (m.client_share !== null && m.client_share !== undefined) {
    where = m.client_share < prefs.target_low ? "below your band" : m.client_share > prefs.target_high ? "above your band" : "within your band";
  }
  el.figures.replaceChildren(h("dl", { class: "figures" },
    figure("Client share of talk", formatShare(m.client_share), `${where ? `${where}, ` : ""}band ${lo}–${hi}%`, "summary-share"),
    figure("Talk time", `${formatClock(m.therapist_talk_s)} / ${formatClock(m.client_talk_s)}`, "you / client", "summary-talk"),
    figure("Silence", formatClock(m.silence_s), `${m.long_silences} long (${prefs.long_silence_seconds ?? 3} s or more)`, "summary-silence"),
    figure("Turns", String(m.turns), `${m.backchannels} backchannels`, "summary-turns"),
    figure("Length", formatClock(m.duration_s), m.absent_s ? `${formatClock(m.absent_s)} away or reconnecting` : "", "summary-duration")));

  const role = (obj, key) => (obj ? obj[key] : null);
  const lat = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(1)} s`);
  const w = m.last_5min || null;
  const rows = [
    ["Session length", formatClock(m.duration_s), w ? formatClock(w.duration_s) : "–"],
    ["Your talk time", formatClock(m.therapist_talk_s), w ? formatClock(w.therapist_talk_s) : "–"],
    ["Client talk time", formatClock(m.client_talk_s), w ? formatClock(w.client_talk_s) : "–"],
    ["Client share", formatShare(m.client_share), w ? formatShare(w.client_share) : "–"],
    ["Silence", formatClock(m.silence_s), w ? formatClock(w.silence_s) : "–"],
    ["Long silences", String(m.long_silences), w ? String(w.long_silences) : "–"],
    ["Overlap (both talking)", formatClock(m.overlap_s), w ? formatClock(w.overlap_s) : "–"],
    ["Turns", String(m.turns), w ? String(w.turns) : "–"],
    ["Interruptions by you", String(role(m.interruptions, "therapist") ?? 0), w ? String(role(w.interruptions, "therapist") ?? 0) : "–"],
    ["Interruptions by client", String(role(m.interruptions, "client") ?? 0), w ? String(role(w.interruptions, "client") ?? 0) : "–"],
    ["Backchannels", String(m.backchannels), w ? String(w.backchannels) : "–"],
    ["Your reply time (median)", lat(role(m.median_response_latency_s, "therapist")), "–"],
    ["Client reply time (median)", lat(role(m.median_response_latency_s, "client")), "–"],
    ["Your longest monologue", formatClock(role(m.longest_monologue_s, "therapist")), "–"],
    ["Client's longest monologue", formatClock(role(m.longest_monologue_s, "client")), "–"],
    ["Away or reconnecting", formatClock(m.absent_s), w ? formatClock(w.absent_s) : "–"],
  ];
  el.signalsTable.replaceChildren(table({
    caption: "Every signal for the whole session, and for its last 5 minutes",
    head: ["Signal", "Whole session", "Last 5 minutes"],
    rows,
    testid: "signals-all",
  }));
}

// ---------- timeline ----------
// The chart is drawn at the width it is shown (a phone gets a narrower drawing with fewer
// ticks), so its words stay readable instead of being shrunk to a fraction of their size.
let lastSeconds = null;
let drawnWidth = 0;

function chartWidth() {
  // Hidden until loaded: then the page's width (less the card's padding) is the estimate.
  const shown = el.timeline.clientWidth || document.documentElement.clientWidth - 72;
  return Math.max(300, Math.min(800, Math.round(shown)));
}

window.addEventListener("resize", () => {
  if (lastSeconds && Math.abs(chartWidth() - drawnWidth) > 40) renderTimeline(lastSeconds);
});

function renderTimeline(seconds) {
  lastSeconds = seconds;
  if (!seconds.length) {
    el.timelineCaption.textContent = "No timeline was recorded for this session.";
    el.timeline.replaceChildren();
    el.timelineTable.replaceChildren();
    return;
  }
  const n = seconds.length;
  const width = chartWidth();
  drawnWidth = width;
  const maxTicks = width < 500 ? 4 : 8;
  const step = [1, 2, 5, 10, 15, 30, 60].find((m) => n / (m * 60) <= maxTicks) || 60;
  const ticks = [];
  for (let t = 0; t <= n; t += step * 60) ticks.push({ at: t, label: `${t / 60} min` });
  const talkT = seconds.filter((x) => x.therapist).length;
  const talkC = seconds.filter((x) => x.client).length;
  const alt = `Timeline of ${formatClock(n)}: you talked in ${talkT} seconds and your client in ${talkC} seconds. A per-minute table follows.`;
  el.timeline.replaceChildren(laneChart({
    lanes: [
      { name: "You", className: "lane-therapist", intervals: runsFromSeconds(seconds, "therapist"), shade: runsFromSeconds(seconds, "therapist_absent") },
      { name: "Client", className: "lane-client", intervals: runsFromSeconds(seconds, "client"), shade: runsFromSeconds(seconds, "client_absent") },
    ],
    domain: [0, Math.max(n, 1)],
    ticks,
    width,
    laneHeight: 22,
    gap: 10,
    labelWidth: 56,
    label: alt,
  }));
  el.timelineCaption.textContent = `Each bar is talk, second by second, over ${formatClock(n)}.`;
  const rows = [];
  for (let start = 0; start < n; start += 60) {
    const slice = seconds.slice(start, start + 60);
    const count = (f) => slice.filter(f).length;
    rows.push([
      `${formatClock(start)}–${formatClock(Math.min(n, start + 60))}`,
      String(count((x) => x.therapist)),
      String(count((x) => x.client)),
      String(count((x) => !x.therapist && !x.client && !x.therapist_absent && !x.client_absent)),
      String(count((x) => x.therapist_absent || x.client_absent)),
    ]);
  }
  el.timelineTable.replaceChildren(table({
    caption: "Seconds per minute of the session",
    head: ["Minute", "You talked", "Client talked", "Both silent", "Someone away"],
    rows,
    testid: "timeline-minutes",
  }));
}

// ---------- trend ----------
function renderTrend(trend, session, prefs) {
  const points = trend || [];
  const label = (session.client_label || "").trim();
  el.trendCaption.textContent = label
    ? `Sessions with ${label}: ${points.length === 1 ? "this is the first" : `the last ${points.length}, oldest on the left`}.`
    : "This session has no client label, so there is no trend across sessions.";
  if (!points.length) {
    el.trendCharts.replaceChildren();
    el.trendTable.replaceChildren();
    return;
  }
  const xs = points.map((_, i) => i + 1);
  const current = (x) => points[x - 1] && points[x - 1].id === session.id;
  const labels = sessionLabels(points);
  const fmtX = (x) => labels[x - 1] || "";
  // Few labels: the first and the last session, plus a middle one when there is room.
  const xTicks = xs.length <= 2 ? xs : [1, Math.ceil(xs.length / 2), xs.length].filter((x, i, a) => a.indexOf(x) === i);
  const chart = (title, testid, series, opts, alt) => h("figure", { class: "trend-chart", "data-testid": testid },
    h("figcaption", {}, title),
    lineChart({ series, xTicks, formatX: fmtX, width: 360, height: 170, label: alt, xPad: 0.5, ...opts }));
  const mk = (key, f = (v) => v) => points.map((p, i) => [i + 1, p[key] === null || p[key] === undefined ? null : f(p[key])]);
  const describe = (name, vals, fmt) => {
    const known = vals.filter((v) => v !== null);
    if (!known.length) return `${name}: no data yet.`;
    return `${name} over ${points.length} sessions: from ${fmt(known[0])} to ${fmt(known[known.length - 1])} (this session ${fmt(vals[vals.length - 1] ?? NaN)}).`;
  };
  const shares = points.map((p) => (p.client_share === null || p.client_share === undefined ? null : p.client_share * 100));
  // Silence in seconds while it is short, in minutes once any session has minutes of it.
  const bigSilence = points.some((p) => (p.silence_s || 0) >= 180);
  const silenceScale = bigSilence ? 60 : 1;
  const silences = points.map((p) => (p.silence_s === null || p.silence_s === undefined ? null : p.silence_s / silenceScale));
  const totals = points.map((p) => (p.checkin_total === null || p.checkin_total === undefined ? null : p.checkin_total));
  const pctFmt = (v) => (Number.isFinite(v) ? `${Math.round(v)}%` : "–");
  const minFmt = (v) => (Number.isFinite(v) ? (bigSilence ? `${v.toFixed(1)} min` : `${Math.round(v)} s`) : "–");
  const totFmt = (v) => (Number.isFinite(v) ? `${v} of 40` : "–");
  el.trendCharts.replaceChildren(
    chart("Client share of talk", "trend-share",
      [{ name: "Client share", className: "series-share", points: mk("client_share", (v) => v * 100), highlight: current }],
      { yDomain: [0, 100], band: [prefs.target_low * 100, prefs.target_high * 100], formatY: (v) => `${v}%` },
      describe("Client share", shares, pctFmt)),
    chart("Silence", "trend-silence",
      [{ name: "Silence", className: "series-silence", points: mk("silence_s", (v) => v / silenceScale), highlight: current }],
      { formatY: (v, d) => `${v.toFixed(d)}${bigSilence ? " min" : " s"}` },
      describe("Silence", silences, minFmt)),
    chart("Check-in total", "trend-checkin",
      [{ name: "Check-in total", className: "series-checkin", points: mk("checkin_total"), highlight: current }],
      { yDomain: [0, 40] },
      describe("Check-in total", totals, totFmt)),
  );
  el.trendTable.replaceChildren(table({
    caption: "Sessions with this client, oldest first",
    head: ["Date", "Length", "Client share", "Silence", "Long silences", "Check-in total"],
    rows: points.map((p) => [
      `${formatDateTime(p.date)}${p.id === session.id ? " (this session)" : ""}`,
      formatClock(p.duration_s),
      formatShare(p.client_share),
      formatClock(p.silence_s),
      p.long_silences === null || p.long_silences === undefined ? "–" : String(p.long_silences),
      p.checkin_total === null || p.checkin_total === undefined ? "–" : `${p.checkin_total} of 40${p.checkin_low ? " (low)" : ""}`,
    ]),
    testid: "trend-rows",
  }));
}

// ---------- page ----------
async function load() {
  let data;
  let prefs = { target_low: 0.5, target_high: 0.8 };
  try {
    const [summary, preferences] = await Promise.all([
      api(`/api/sessions/${encodeURIComponent(sessionId)}/summary`),
      api("/api/me/preferences").catch(() => null),
    ]);
    data = summary;
    if (preferences) prefs = preferences;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    el.meta.textContent = "";
    showMessage(el.error, err instanceof ApiError && err.status === 404
      ? "There is no such session in your list."
      : err.message);
    return;
  }
  const session = data.session || {};
  const label = (session.client_label || "").trim();
  el.title.textContent = label ? `Session with ${label}` : "Session summary";
  document.title = `${label ? `${label} · ` : ""}Summary · Rapport`;
  const when = session.started_at || session.created_at;
  const status = session.status === "ended" ? "" : " · still open";
  el.meta.textContent = `${formatDateTime(when)}${data.metrics ? ` · ${formatClock(data.metrics.duration_s)} of conversation` : ""}${status}`;

  el.exportJson.href = `/api/sessions/${encodeURIComponent(sessionId)}/export`;
  el.exportJson.setAttribute("aria-label", "Download this session as JSON");
  if (label) {
    el.exportCsv.href = `/api/clients/history.csv?label=${encodeURIComponent(label)}`;
    el.exportCsv.setAttribute("aria-label", `Download the history of ${label} as CSV`);
    el.exportCsv.hidden = false;
  }
  el.exports.hidden = false;

  renderCheckin(data.checkin);
  renderAgenda(data.agenda);
  renderSignals(data.metrics, prefs);
  renderTimeline(data.timeline || []);
  renderTrend(data.trend, session, prefs);
  if (label) {
    // The count the deletion will remove: every session with this label, not just the trend's.
    const clients = await api("/api/clients").catch(() => null);
    const entry = ((clients && clients.clients) || []).find((c) => c.label === label);
    renderErase(label, entry ? entry.sessions : 1);
  }
  el.content.hidden = false;
}

// ---------- erasure ----------
/** "Delete this client's data": every session with this label (this therapist's only), after a
 * confirmation that says what goes and that it cannot be undone. */
function renderErase(label, sessions) {
  if (!label) return;
  const status = h("p", { class: "notice", role: "status", "data-testid": "delete-client-status", hidden: true });
  const confirmBox = h("div", { class: "notice notice-error", "data-testid": "delete-client-confirmation", hidden: true });
  const button = h("button", { type: "button", class: "btn btn-secondary btn-small", "data-testid": "delete-client" },
    "Delete this client's data…");
  const cancel = h("button", { type: "button", class: "btn btn-quiet btn-small", "data-testid": "delete-client-cancel" }, "Cancel");
  const confirm = h("button", { type: "button", class: "btn btn-danger btn-small", "data-testid": "delete-client-confirm" },
    `Delete all data of ${label}`);
  const count = sessions === 1 ? "1 session" : `${sessions} sessions`;
  confirmBox.append(
    h("p", {}, `This deletes ${count} with ${label} — conversation signals, timelines, agenda, homework and check-ins — including this one. It cannot be undone. The audit log keeps only that a deletion happened.`),
    h("div", { class: "row" }, confirm, cancel),
  );
  button.addEventListener("click", () => { confirmBox.hidden = false; button.hidden = true; confirm.focus(); });
  cancel.addEventListener("click", () => { confirmBox.hidden = true; button.hidden = false; button.focus(); });
  confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    cancel.disabled = true;
    try {
      const done = await api("/api/clients/delete", { method: "POST", body: { label } });
      confirmBox.hidden = true;
      el.content.hidden = true;
      el.exports.hidden = true;
      showMessage(status, `Deleted ${done.sessions} session(s) with ${label}.`, "ok");
      status.append(" ", h("a", { href: "/sessions" }, "Back to sessions"));
    } catch (err) {
      confirm.disabled = false;
      cancel.disabled = false;
      showMessage(status, err instanceof ApiError && err.status === 409
        ? "A session with this client is in progress. End it first, then delete the data."
        : err.message);
    }
  });
  const section = h("section", { class: "card", "aria-labelledby": "erase-h", "data-testid": "delete-client-section" },
    h("h2", { id: "erase-h" }, "Client data"),
    h("p", { class: "hint" }, `Everything Rapport holds about ${label} is in ${count}.`),
    button, confirmBox);
  el.content.after(status);
  el.content.append(section);
}

el.signOut.addEventListener("click", signOut);

(async () => {
  try {
    const res = await api("/api/me");
    const user = res && res.user;
    if (user) el.user.textContent = user.display_name || user.email;
  } catch {
    return;
  }
  await load();
})();
