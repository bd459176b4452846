// The therapist's live panel. At a glance: the client's share of talk against the therapist's
// band (it changes colour, shape and word only when out of band), who is speaking, the current
// silence, and one gentle cue at a time (a newer cue replaces an older one; a cue goes away by
// itself when its condition ends). Behind "Details": last 5 minutes, the timeline and the
// counts. Fed by `signals` snapshots (≥ 2/s) and `speaking` messages (immediate).

import { api, ApiError, byTestId, h, showMessage } from "./api.js";
import { formatClock, formatShare, formatSpoken, laneChart } from "./charts.js";

const WINDOW_S = 600; // the timeline shows the last 10 minutes…
const MIN_WINDOW_S = 120; // …or, early in the session, everything so far (at least 2 minutes)
const DEFAULT_PREFS = {
  target_low: 0.5,
  target_high: 0.8,
  therapist_monologue: { on: true, minutes: 3 },
  share_below_band: { on: true, minutes: 5 },
  long_silence_seconds: 3,
  panel_open: true,
  arrival_chime: true,
};
// A monologue ends when the client talks this long, or the therapist pauses this long.
const FLOOR_TAKEN_S = 1.0;
const MONOLOGUE_PAUSE_S = 5.0;

const nowS = () => performance.now() / 1000;

function minutesText(minutes) {
  const m = Number(minutes);
  if (m < 1) {
    const secs = Math.max(1, Math.round(m * 60));
    return `${secs} second${secs === 1 ? "" : "s"}`;
  }
  const rounded = Math.round(m * 10) / 10;
  return `${rounded} minute${rounded === 1 ? "" : "s"}`;
}

const pct = (v) => Math.round(Number(v) * 100);

export function setupPanel({ sessionId, send, announce, onProblem, onPrefs = () => {} }) {
  const $ = (id) => byTestId(id);
  const el = {
    panel: $("live-panel"),
    body: $("signals-body"),
    toggle: $("panel-toggle"),
    toggleText: $("panel-toggle-text"),
    settingsButton: $("settings-button"),
    cues: $("cues"),
    speakingNow: $("speaking-now"),
    speakingDot: $("speaking-dot"),
    silence: $("current-silence"),
    balanceStatus: $("balance-status"),
    balance: $("talk-balance"),
    glance: $("balance-glance"),
    bandWordEl: $("band-word"),
    details: $("signals-details"),
    balance5: $("talk-balance-5min"),
    bar: $("balance-bar"),
    bar5: $("balance-bar-5min"),
    bandNote: $("band-note"),
    timelineBox: $("timeline"),
    timelineText: $("timeline-text"),
    timelineCaption: $("timeline-caption"),
    talkT: $("talk-therapist"),
    talkC: $("talk-client"),
    monoT: $("monologue-therapist"),
    monoC: $("monologue-client"),
    intT: $("interruptions-therapist"),
    intC: $("interruptions-client"),
    turns: $("turns"),
    longSilences: $("long-silences"),
    backchannels: $("backchannels"),
    share: $("share-balance"),
    shareText: $("share-balance-text"),
    dialog: $("settings-dialog"),
    form: $("settings-form"),
    low: $("settings-low"),
    high: $("settings-high"),
    monoOn: $("settings-monologue-on"),
    monoMin: $("settings-monologue-minutes"),
    shareOn: $("settings-share-on"),
    shareMin: $("settings-share-minutes"),
    settingsError: $("settings-error"),
    cancel: $("settings-cancel"),
  };

  const state = {
    prefs: structuredClone(DEFAULT_PREFS),
    snapshot: null,
    speaking: new Set(),
    // Intervals in local seconds (performance.now()/1000): {therapist: [[a, b|null]], client: …}
    intervals: { therapist: [], client: [] },
    historyLoaded: false,
    since: { therapist: null, client: null }, // current speech start per role
    lastEnd: { therapist: null, client: null },
    monologueStart: null,
    monologueCued: false,
    belowSince: null,
    belowCued: false,
    // The one cue slot: active cues by kind, newest last; the newest undismissed one shows.
    cues: new Map(),
    sharing: false,
    // The signals only count while both are in the call; until then a balance is meaningless.
    together: false,
    peer: "waiting",
    active: false,
    lastTimelineText: 0,
  };

  // ---------- preferences ----------
  function applyPrefs(prefs) {
    state.prefs = { ...structuredClone(DEFAULT_PREFS), ...prefs };
    setOpen(state.prefs.panel_open !== false, false);
    renderBalance();
    onPrefs(state.prefs);
  }

  async function loadPrefs() {
    try {
      applyPrefs(await api("/api/me/preferences"));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) applyPrefs(DEFAULT_PREFS);
    }
  }

  async function savePrefs(prefs) {
    const saved = await api("/api/me/preferences", { method: "PUT", body: prefs });
    applyPrefs(saved || prefs);
    return saved;
  }

  // ---------- collapse ----------
  function setOpen(open, persist = true) {
    el.body.hidden = !open;
    el.panel.dataset.open = String(open);
    el.toggle.setAttribute("aria-expanded", String(open));
    el.toggleText.textContent = open ? "Hide live signals" : "Show live signals";
    el.toggle.title = open ? "Hide live signals" : "Show live signals";
    if (persist) {
      state.prefs.panel_open = open;
      savePrefs({ ...state.prefs, panel_open: open }).catch((err) => {
        if (!(err instanceof ApiError && err.status === 401)) onProblem(`Your panel setting was not saved: ${err.message}`);
      });
    }
    if (open) renderTimeline(true);
  }
  el.toggle.addEventListener("click", () => setOpen(el.body.hidden));

  // ---------- settings dialog ----------
  function fillForm() {
    const p = state.prefs;
    el.low.value = String(pct(p.target_low));
    el.high.value = String(pct(p.target_high));
    el.monoOn.checked = Boolean(p.therapist_monologue.on);
    el.monoMin.value = String(p.therapist_monologue.minutes);
    el.shareOn.checked = Boolean(p.share_below_band.on);
    el.shareMin.value = String(p.share_below_band.minutes);
    el.monoMin.disabled = !el.monoOn.checked;
    el.shareMin.disabled = !el.shareOn.checked;
    showMessage(el.settingsError, "");
  }
  el.monoOn.addEventListener("change", () => { el.monoMin.disabled = !el.monoOn.checked; });
  el.shareOn.addEventListener("change", () => { el.shareMin.disabled = !el.shareOn.checked; });

  el.settingsButton.addEventListener("click", () => {
    fillForm();
    el.dialog.showModal();
    el.low.focus();
  });
  el.cancel.addEventListener("click", () => el.dialog.close());
  el.dialog.addEventListener("close", () => el.settingsButton.focus());

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const number = (input) => (input.value.trim() === "" ? NaN : Number(input.value));
    const low = number(el.low);
    const high = number(el.high);
    const monoMinutes = number(el.monoMin);
    const shareMinutes = number(el.shareMin);
    for (const [input, value, what] of [[el.low, low, "The lower bound"], [el.high, high, "The upper bound"]]) {
      if (!Number.isFinite(value) || value < 0 || value > 100) {
        showMessage(el.settingsError, `${what} of the band must be a number from 0 to 100.`);
        input.focus();
        return;
      }
    }
    for (const [input, value] of [[el.monoMin, monoMinutes], [el.shareMin, shareMinutes]]) {
      if (!Number.isFinite(value) || value <= 0 || value > 120) {
        showMessage(el.settingsError, "Reminder times must be more than 0 and at most 120 minutes.");
        input.focus();
        return;
      }
    }
    const body = {
      ...state.prefs,
      target_low: Math.round(low) / 100,
      target_high: Math.round(high) / 100,
      therapist_monologue: { on: el.monoOn.checked, minutes: monoMinutes },
      share_below_band: { on: el.shareOn.checked, minutes: shareMinutes },
    };
    try {
      await savePrefs(body);
      state.monologueCued = false;
      state.belowCued = false;
      el.dialog.close();
      announce("Signal settings saved.");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      showMessage(el.settingsError, err.message);
    }
  });

  // ---------- share the balance with the client ----------
  // The server keeps sharing across a reload of this page but never says so; remember the
  // choice per tab and re-assert it when (re)joining, so the button always tells the truth.
  const shareKey = `rapport.shareBalance.${sessionId}`;
  try {
    state.sharing = sessionStorage.getItem(shareKey) === "on";
  } catch {
    state.sharing = false;
  }
  function rememberShare() {
    try {
      sessionStorage.setItem(shareKey, state.sharing ? "on" : "off");
    } catch {
      /* the button still shows the state */
    }
  }
  function renderShare() {
    el.share.setAttribute("aria-pressed", String(state.sharing));
    el.shareText.textContent = state.sharing ? "Sharing balance with client" : "Share balance with client";
  }
  el.share.addEventListener("click", () => {
    const on = !state.sharing;
    if (!send({ type: "share_balance", on })) {
      onProblem("Not connected to the server. Reload the page and try again.");
      return;
    }
    state.sharing = on;
    rememberShare();
    renderShare();
    announce(on ? "Your client now sees the talk balance." : "Your client no longer sees the talk balance.");
  });
  renderShare();

  // ---------- cues: one slot ----------
  function renderCue() {
    const live = [...state.cues.entries()].filter(([, c]) => !c.dismissed);
    const top = live.length ? live[live.length - 1] : null;
    const shown = el.cues.querySelector('[data-testid="cue"]');
    if (top && shown && shown.dataset.kind === top[0] && shown.dataset.text === top[1].text) return;
    const hadFocus = shown && shown.contains(document.activeElement);
    if (!top) {
      el.cues.replaceChildren();
      if (hadFocus) el.settingsButton.focus();
      return;
    }
    const [kind, { text }] = top;
    // A small "×" keeps the text to two lines in the slot; its name says what it dismisses.
    const dismiss = h("button", { type: "button", class: "icon-btn cue-dismiss", "data-testid": "cue-dismiss", "aria-label": `Dismiss: ${text}`, title: "Dismiss" },
      h("span", { "aria-hidden": "true" }, "×"));
    const cue = h("div", { class: "cue", "data-testid": "cue", "data-kind": kind, "data-text": text },
      h("span", { class: "cue-icon", "aria-hidden": "true" }, "i"), h("p", {}, text), dismiss);
    dismiss.addEventListener("click", () => {
      const entry = state.cues.get(kind);
      if (entry) entry.dismissed = true;
      const focusBack = cue.contains(document.activeElement);
      renderCue();
      if (focusBack) (el.cues.querySelector("button") || el.settingsButton).focus();
    });
    el.cues.replaceChildren(cue);
    if (hadFocus) dismiss.focus();
  }

  function showCue(kind, text) {
    state.cues.delete(kind); // re-inserted last: the newest cue takes the slot
    state.cues.set(kind, { text, dismissed: false });
    renderCue();
  }

  function clearCue(kind) {
    if (state.cues.delete(kind)) renderCue();
  }

  function checkCues(now) {
    const p = state.prefs;
    // Therapist monologue: the therapist has held the floor for N minutes.
    const mono = p.therapist_monologue || {};
    if (state.monologueStart !== null) {
      const clientTook = state.since.client !== null && now - state.since.client >= FLOOR_TAKEN_S;
      const paused = !state.speaking.has("therapist")
        && state.lastEnd.therapist !== null && now - state.lastEnd.therapist >= MONOLOGUE_PAUSE_S;
      if (clientTook || paused) {
        state.monologueStart = null;
        state.monologueCued = false;
      }
    }
    // "You have been speaking…" is wrong the moment the client speaks or the run ends.
    if (state.monologueStart === null || state.speaking.has("client")) clearCue("monologue");
    // After the client had the floor, a therapist who talks on alone starts a new run.
    if (state.monologueStart === null && state.speaking.has("therapist") && !state.speaking.has("client")) {
      state.monologueStart = now;
    }
    if (mono.on && state.monologueStart !== null && !state.monologueCued && state.speaking.has("therapist")
        && now - state.monologueStart >= mono.minutes * 60) {
      state.monologueCued = true;
      showCue("monologue", `You have been speaking for ${minutesText(mono.minutes)}`);
    }
    // Client share (last 5 minutes) below the band for N minutes.
    const below = p.share_below_band || {};
    const snap = state.snapshot;
    const share5 = snap && snap.last_5min ? snap.last_5min.client_share : null;
    if (share5 !== null && share5 !== undefined && share5 < p.target_low) {
      if (state.belowSince === null) state.belowSince = now;
      if (below.on && !state.belowCued && now - state.belowSince >= below.minutes * 60) {
        state.belowCued = true;
        showCue("share-below", `Client share has been below your band for ${minutesText(below.minutes)}`);
      }
    } else if (share5 !== null && share5 !== undefined) {
      state.belowSince = null;
      state.belowCued = false;
      clearCue("share-below");
    }
    if (!state.together) {
      clearCue("share-below");
      clearCue("monologue");
    }
  }

  // ---------- speaking and the timeline ----------
  function setSpeaking(list, now = nowS()) {
    const next = new Set((list || []).filter((r) => r === "therapist" || r === "client"));
    for (const role of ["therapist", "client"]) {
      const open = state.intervals[role].length && state.intervals[role][state.intervals[role].length - 1][1] === null;
      if (next.has(role) && !open) {
        state.intervals[role].push([now, null]);
        state.since[role] = now;
        if (role === "therapist" && state.monologueStart === null) state.monologueStart = now;
      } else if (!next.has(role) && open) {
        state.intervals[role][state.intervals[role].length - 1][1] = now;
        state.since[role] = null;
        state.lastEnd[role] = now;
      }
    }
    state.speaking = next;
    renderSpeaking();
  }

  function renderSpeaking() {
    const t = state.speaking.has("therapist");
    const c = state.speaking.has("client");
    const who = t && c ? "Both of you" : t ? "You" : c ? "Client" : "No one";
    el.speakingNow.textContent = who;
    el.speakingDot.dataset.speaking = t && c ? "both" : t ? "therapist" : c ? "client" : "none";
  }

  async function loadHistory(snapshot) {
    // After a reload: draw what happened before this page opened, once.
    state.historyLoaded = true;
    if (!snapshot || !(snapshot.duration_s > 2)) return;
    try {
      const res = await api(`/api/sessions/${encodeURIComponent(sessionId)}/timeline`);
      const seconds = (res && res.seconds) || [];
      const now = nowS();
      const offset = now - Number(snapshot.duration_s);
      for (const role of ["therapist", "client"]) {
        const firstLive = state.intervals[role].length ? state.intervals[role][0][0] : now;
        const past = [];
        let start = null;
        for (const sec of seconds) {
          const t = offset + sec.second;
          if (t >= firstLive) break;
          if (sec[role] && start === null) start = t;
          if (!sec[role] && start !== null) { past.push([start, t]); start = null; }
        }
        if (start !== null) past.push([start, Math.min(firstLive, offset + seconds.length)]);
        state.intervals[role] = [...past.filter(([, b]) => b > now - WINDOW_S), ...state.intervals[role]];
      }
    } catch {
      /* the live part still draws */
    }
  }

  function windowTotals(now) {
    const from = now - WINDOW_S;
    const total = {};
    for (const role of ["therapist", "client"]) {
      state.intervals[role] = state.intervals[role].filter(([, b]) => b === null || b > from);
      total[role] = state.intervals[role].reduce((sum, [a, b]) => sum + Math.max(0, (b === null ? now : b) - Math.max(a, from)), 0);
    }
    return total;
  }

  function windowSpan(now) {
    // The session's own clock when known (it survives a reload), else time on this page.
    const snap = state.snapshot;
    const elapsed = snap && Number.isFinite(Number(snap.duration_s))
      ? Number(snap.duration_s)
      : now - (state.startedAt ?? now);
    return Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, Math.ceil(elapsed / 60) * 60));
  }

  function renderTimeline(force = false) {
    if (el.body.hidden || !el.details.open) return;
    const now = nowS();
    const totals = windowTotals(now);
    const span = windowSpan(now);
    const lane = (role) => state.intervals[role].map(([a, b]) => [a, b === null ? now : b]);
    const minutes = span / 60;
    const ticks = [
      { at: now - span, label: `${minutes} min ago` },
      { at: now - span / 2, label: `${minutes / 2} min` },
      { at: now, label: "now" },
    ];
    const svg = laneChart({
      lanes: [
        { name: "You", className: "lane-therapist", intervals: lane("therapist") },
        { name: "Client", className: "lane-client", intervals: lane("client") },
      ],
      domain: [now - span, now],
      ticks,
      width: 300,
      laneHeight: 14,
      gap: 6,
      labelWidth: 44,
      label: `Who spoke in the last ${minutes} minutes: you ${formatSpoken(totals.therapist)}, your client ${formatSpoken(totals.client)}.`,
    });
    el.timelineBox.replaceChildren(svg);
    el.timelineCaption.textContent = `Who spoke, last ${minutes} minutes`;
    el.timelineBox.dataset.therapistS = totals.therapist.toFixed(1);
    el.timelineBox.dataset.clientS = totals.client.toFixed(1);
    // The text alternative changes every few seconds at most (it is not a live region).
    if (force || now - state.lastTimelineText > 5) {
      state.lastTimelineText = now;
      el.timelineText.textContent = `In the last ${minutes} minutes you spoke for ${formatSpoken(totals.therapist)} and your client for ${formatSpoken(totals.client)}.`;
    }
  }

  // ---------- balance and numbers ----------
  function paintBar(bar, share) {
    const fill = bar.querySelector(".bar-fill");
    const band = bar.querySelector(".bar-band");
    const { target_low: lo, target_high: hi } = state.prefs;
    band.style.left = `${pct(lo)}%`;
    band.style.width = `${Math.max(0, pct(hi) - pct(lo))}%`;
    const known = share !== null && share !== undefined;
    fill.style.width = known ? `${Math.max(0, Math.min(100, share * 100))}%` : "0";
    bar.dataset.known = String(known);
  }

  // Where the share is against the band: in band is quiet (neutral colour, a plain dot);
  // out of band adds colour, an arrow shape and words, so colour is never the only sign.
  const BAND_LOOK = {
    unknown: { icon: "", word: "" },
    within: { icon: "●", word: "In your band" },
    below: { icon: "▼", word: "Below your band" },
    above: { icon: "▲", word: "Above your band" },
  };

  // A share hovering on an edge of the band must not make the indicator flicker: it leaves
  // (or comes back into) the band only once it is a point past the edge.
  const BAND_HYSTERESIS = 0.01;

  function bandState(share, previous) {
    if (share === null || share === undefined) return "unknown";
    const { target_low: lo, target_high: hi } = state.prefs;
    const plain = share < lo ? "below" : share > hi ? "above" : "within";
    if (previous === "unknown" || previous === undefined || plain === previous) return plain;
    const margin = BAND_HYSTERESIS;
    if (previous === "within") {
      if (share < lo - margin) return "below";
      if (share > hi + margin) return "above";
      return "within";
    }
    if (previous === "below") return share >= lo + margin ? plain : "below";
    return share <= hi - margin ? plain : "above";
  }

  function bandWord(share) {
    if (share === null || share === undefined) return "";
    const { target_low: lo, target_high: hi } = state.prefs;
    if (share < lo) return "below it";
    if (share > hi) return "above it";
    return "within it";
  }

  // Client presence as the room reports it (peer_state): "waiting" before they are in the
  // call, "connecting" while their media is not flowing, "together" once it is. Only then do
  // the signals accumulate, so only then is a balance shown.
  const PEER_TEXT = {
    waiting: "Waiting for your client",
    connecting: "Connecting to your client…",
    together: "",
  };

  function renderPresence() {
    el.balanceStatus.dataset.state = state.peer;
    el.balanceStatus.textContent = PEER_TEXT[state.peer];
    el.balanceStatus.hidden = state.together;
    for (const node of [el.glance, el.balance5, el.bar, el.bar5, el.bandNote]) {
      const row = node.closest(".balance-row") || node;
      row.hidden = !state.together;
    }
  }

  function renderBalance() {
    const snap = state.snapshot;
    const share = snap ? snap.client_share : null;
    const share5 = snap && snap.last_5min ? snap.last_5min.client_share : null;
    el.balance.textContent = formatShare(share);
    el.balance5.textContent = formatShare(share5);
    paintBar(el.bar, share);
    paintBar(el.bar5, share5);
    const { target_low: lo, target_high: hi } = state.prefs;
    const where = bandWord(share);
    el.bandNote.textContent = `Your band ${pct(lo)}–${pct(hi)}%${where ? ` · whole session ${where}` : ""}`;
    const band = bandState(share, el.glance.dataset.band);
    if (el.glance.dataset.band !== band) {
      el.glance.dataset.band = band;
      el.glance.querySelector(".band-icon").textContent = BAND_LOOK[band].icon;
      el.bandWordEl.textContent = BAND_LOOK[band].word;
    }
  }

  function renderNumbers(snap) {
    const roles = (obj, role) => (obj && obj[role] !== undefined ? obj[role] : null);
    el.silence.textContent = snap.speaking && snap.speaking.length ? "–" : formatClock(snap.current_silence_s);
    el.talkT.textContent = formatClock(snap.therapist_talk_s);
    el.talkC.textContent = formatClock(snap.client_talk_s);
    el.monoT.textContent = formatClock(roles(snap.longest_monologue_s, "therapist"));
    el.monoC.textContent = formatClock(roles(snap.longest_monologue_s, "client"));
    el.intT.textContent = String(roles(snap.interruptions, "therapist") ?? 0);
    el.intC.textContent = String(roles(snap.interruptions, "client") ?? 0);
    el.turns.textContent = String(snap.turns ?? 0);
    el.longSilences.textContent = String(snap.long_silences ?? 0);
    el.backchannels.textContent = String(snap.backchannels ?? 0);
  }

  function onSnapshot(snap) {
    if (!snap) return;
    state.snapshot = snap;
    if (!state.historyLoaded) loadHistory(snap);
    // The snapshot also says who is speaking; it corrects a missed `speaking` message.
    const listed = new Set(snap.speaking || []);
    const same = listed.size === state.speaking.size && [...listed].every((r) => state.speaking.has(r));
    if (!same) setSpeaking([...listed]);
    renderBalance();
    renderNumbers(snap);
  }

  // A slow clock: check cues four times a second, redraw the timeline once a second.
  let ticks = 0;
  const timer = setInterval(() => {
    if (!state.active) return;
    checkCues(nowS());
    ticks += 1;
    if (ticks % 4 === 0) renderTimeline();
  }, 250);

  el.details.addEventListener("toggle", () => {
    if (el.details.open) renderTimeline(true);
  });

  renderPresence();

  return {
    loadPrefs,
    savePrefs,
    prefs: () => state.prefs,
    start() {
      state.active = true;
      send({ type: "share_balance", on: state.sharing });
      state.startedAt = nowS();
      renderTimeline(true);
    },
    stop() {
      state.active = false;
      clearInterval(timer);
      setSpeaking([]);
      state.cues.clear();
      renderCue();
    },
    onSignals(msg) {
      onSnapshot(msg.snapshot);
    },
    onSpeaking(msg) {
      setSpeaking(msg.speaking);
    },
    onPeer(msg) {
      if (msg.role !== "client") return;
      if (!msg.present) state.peer = "waiting";
      else state.peer = msg.media === "connected" ? "together" : "connecting";
      state.together = state.peer === "together";
      renderPresence();
    },
  };
}
