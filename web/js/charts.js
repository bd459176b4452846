// Small hand-written SVG charts (no library): lanes of "who spoke when" and line charts.
// Every chart is role="img" with a short label; the pages also give a data table beside it.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element: s("rect", {x: 1, class: "a"}, child…) */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** 75 → "1:15"; 3725 → "1:02:05"; null → "–". */
export function formatClock(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "–";
  const total = Math.max(0, Math.round(Number(seconds)));
  const hh = Math.floor(total / 3600);
  const mm = Math.floor((total % 3600) / 60);
  const ss = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}

/** 0.6234 → "62%"; null → "–" (the panel's exact rule: Math.round(share * 100) + "%"). */
export function formatShare(share) {
  if (share === null || share === undefined || !Number.isFinite(Number(share))) return "–";
  return `${Math.round(Number(share) * 100)}%`;
}

/** Human words for a duration: 75 → "1 min 15 s", 42 → "42 s". */
export function formatSpoken(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "no data";
  const total = Math.max(0, Math.round(Number(seconds)));
  const mm = Math.floor(total / 60);
  const ss = total % 60;
  if (!mm) return `${ss} s`;
  return ss ? `${mm} min ${ss} s` : `${mm} min`;
}

/** Turn per-second booleans into [start, end) runs: [[3, 7], [9, 10]]. */
export function runsFromSeconds(seconds, key) {
  const runs = [];
  let start = null;
  seconds.forEach((sec, i) => {
    const t = Number.isFinite(sec.second) ? sec.second : i;
    if (sec[key]) {
      if (start === null) start = t;
    } else if (start !== null) {
      runs.push([start, t]);
      start = null;
    }
  });
  if (start !== null) {
    const last = seconds[seconds.length - 1];
    runs.push([start, (Number.isFinite(last.second) ? last.second : seconds.length - 1) + 1]);
  }
  return runs;
}

/**
 * Lanes of intervals over a time domain (who spoke when).
 * lanes: [{name, className, intervals: [[a, b], …], shade?: [[a, b]…]}]; domain: [t0, t1].
 * ticks: [{at, label}]. Returns an <svg> sized by its viewBox (width 100 % in CSS).
 */
export function laneChart({ lanes, domain, ticks = [], width = 600, laneHeight = 16, gap = 8, labelWidth = 0, label }) {
  const [t0, t1] = domain;
  const span = Math.max(1e-6, t1 - t0);
  const plotW = width - labelWidth;
  const axisH = ticks.length ? 16 : 0;
  const height = lanes.length * laneHeight + (lanes.length - 1) * gap + axisH + 2;
  const x = (t) => labelWidth + ((Math.min(t1, Math.max(t0, t)) - t0) / span) * plotW;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart lane-chart",
    role: "img",
    "aria-label": label || "Timeline",
    preserveAspectRatio: "none",
    focusable: "false",
  });
  lanes.forEach((lane, i) => {
    const y = 1 + i * (laneHeight + gap);
    const g = s("g", { class: `lane ${lane.className || ""}` });
    g.append(s("rect", { class: "lane-bg", x: labelWidth, y, width: plotW, height: laneHeight, rx: 3 }));
    for (const [a, b] of lane.shade || []) {
      if (b <= t0 || a >= t1) continue;
      g.append(s("rect", { class: "lane-absent", x: x(a), y, width: Math.max(0.5, x(b) - x(a)), height: laneHeight }));
    }
    for (const [a, b] of lane.intervals || []) {
      if (b <= t0 || a >= t1) continue;
      g.append(s("rect", { class: "lane-on", x: x(a), y, width: Math.max(0.8, x(b) - x(a)), height: laneHeight, rx: 1.5 }));
    }
    if (labelWidth) {
      g.append(s("text", { class: "lane-label", x: labelWidth - 6, y: y + laneHeight / 2, "text-anchor": "end", "dominant-baseline": "central" }, lane.name));
    }
    svg.append(g);
  });
  if (ticks.length) {
    const yAxis = height - axisH + 2;
    const g = s("g", { class: "axis", "aria-hidden": "true" });
    for (const tick of ticks) {
      const tx = x(tick.at);
      g.append(s("line", { x1: tx, x2: tx, y1: 0, y2: yAxis - 2, class: "tick-line" }));
      const anchor = tx < labelWidth + 12 ? "start" : tx > width - 12 ? "end" : "middle";
      g.append(s("text", { x: tx, y: yAxis + 10, "text-anchor": anchor, class: "tick-label" }, tick.label));
    }
    svg.append(g);
  }
  return svg;
}

function niceStep(min, max, count = 4) {
  const raw = (max - min) / count;
  if (!(raw > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((v) => v >= raw * 0.999) || raw;
}

function ticksFor(min, max, step) {
  const ticks = [];
  for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + step * 1e-6; v += step) ticks.push(Number(v.toFixed(10)));
  return ticks;
}

function niceTicks(min, max, count = 4) {
  if (!(max > min)) return [min];
  return ticksFor(min, max, niceStep(min, max, count));
}

/** Decimals needed to print the ticks of a step: 0.25 → 2, 5 → 0. */
function stepDecimals(step) {
  const text = String(Number(step.toFixed(10)));
  return text.includes(".") ? text.split(".")[1].length : 0;
}

/**
 * A line chart. series: [{name, className, points: [[x, y|null], …]}]. Gaps (null) break the line.
 * yDomain optional ([min, max]); band optional ([lo, hi]) shades a target range.
 * formatX / formatY format tick labels. Returns an <svg>.
 */
export function lineChart({
  series, label, width = 560, height = 180, yDomain, band, formatX = String,
  formatY = (v, decimals) => v.toFixed(decimals),
  xTicks, yTickCount = 4, markers = true, xPad = 0, thresholds = [],
}) {
  const pad = { top: 10, right: 12, bottom: 22, left: 46 };
  const xs = [];
  const ys = [];
  for (const line of series) {
    for (const [px, py] of line.points) {
      if (Number.isFinite(px)) xs.push(px);
      if (py !== null && py !== undefined && Number.isFinite(py)) ys.push(py);
    }
  }
  let [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  // Categorical x (one point per session): half a step of room at both ends.
  x0 -= xPad;
  x1 += xPad;
  // Threshold lines ({ value, className }) widen the y range so they are always drawn.
  const limits = thresholds.map((t) => t.value).filter((v) => Number.isFinite(v));
  let [y0, y1] = yDomain || (ys.length || limits.length
    ? [Math.min(0, ...ys, ...limits), Math.max(...ys, ...limits)] : [0, 1]);
  if (y1 === y0) y1 = y0 + 1;
  const yStep = niceStep(y0, y1, yTickCount);
  if (!yDomain) {
    // Round the axis out to whole steps so the highest point sits under the top line.
    y0 = Math.floor(y0 / yStep + 1e-9) * yStep;
    y1 = Math.ceil(y1 / yStep - 1e-9) * yStep;
  }
  const yDecimals = stepDecimals(yStep);
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const X = (v) => pad.left + ((v - x0) / (x1 - x0)) * plotW;
  const Y = (v) => pad.top + plotH - ((v - y0) / (y1 - y0)) * plotH;

  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart line-chart", role: "img", "aria-label": label || "Chart", focusable: "false" });
  const grid = s("g", { class: "axis", "aria-hidden": "true" });
  for (const v of ticksFor(y0, y1, yStep)) {
    grid.append(s("line", { x1: pad.left, x2: width - pad.right, y1: Y(v), y2: Y(v), class: "grid-line" }));
    grid.append(s("text", { x: pad.left - 6, y: Y(v), "text-anchor": "end", "dominant-baseline": "central", class: "tick-label" }, formatY(v, yDecimals)));
  }
  const xt = xTicks || (xs.length ? niceTicks(x0, x1, 4) : []);
  for (const v of xt) {
    if (v < x0 || v > x1) continue;
    const tx = X(v);
    const anchor = tx - pad.left < 24 ? "start" : width - pad.right - tx < 24 ? "end" : "middle";
    grid.append(s("text", { x: tx, y: height - 6, "text-anchor": anchor, class: "tick-label" }, formatX(v)));
  }
  svg.append(grid);
  if (band) {
    const [lo, hi] = band;
    svg.append(s("rect", { class: "band", x: pad.left, width: plotW, y: Y(Math.min(hi, y1)), height: Math.max(0, Y(Math.max(lo, y0)) - Y(Math.min(hi, y1))) }));
  }
  for (const line of series) {
    const g = s("g", { class: `series ${line.className || ""}` });
    let d = "";
    let pen = false;
    for (const [px, py] of line.points) {
      if (py === null || py === undefined || !Number.isFinite(py)) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${X(px).toFixed(1)},${Y(py).toFixed(1)}`;
      pen = true;
    }
    if (d) g.append(s("path", { d, class: "line" }));
    if (markers) {
      for (const [px, py] of line.points) {
        if (py === null || py === undefined || !Number.isFinite(py)) continue;
        g.append(s("circle", { cx: X(px), cy: Y(py), r: line.markerRadius || 3, class: `marker ${line.highlight && line.highlight(px) ? "marker-current" : ""}` }));
      }
    }
    svg.append(g);
  }
  for (const t of thresholds) {
    if (!Number.isFinite(t.value) || t.value < y0 || t.value > y1) continue;
    svg.append(s("line", {
      x1: pad.left, x2: width - pad.right, y1: Y(t.value), y2: Y(t.value),
      class: `threshold-line ${t.className || ""}`, "aria-hidden": "true", "data-value": t.value,
    }));
  }
  svg.append(s("line", { x1: pad.left, x2: width - pad.right, y1: Y(y0), y2: Y(y0), class: "axis-line", "aria-hidden": "true" }));
  return svg;
}
