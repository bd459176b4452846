// The client's four-question check-in after the session (join page).
// GET /api/join/{token}/checkin → {open, submitted, questions}; POST answers or {skipped: true}.

import { api, ApiError, byTestId, h, showMessage } from "./api.js";

export const CHECKIN_KEYS = ["bond", "goals", "tasks", "overall"];
// Used only if the server's wording cannot be fetched; the server's texts win.
const FALLBACK_QUESTIONS = {
  bond: "I felt heard, understood and respected.",
  goals: "We worked on what I wanted to work on.",
  tasks: "The way we worked today suited me.",
  overall: "Overall, today's session was right for me.",
};

const checkinPath = (token) => `/api/join/${encodeURIComponent(token)}/checkin`;

/** The check-in status for this browser, or null when it does not apply (not a participant). */
export async function checkinStatus(token) {
  try {
    return await api(checkinPath(token), { redirectOn401: false });
  } catch (err) {
    if (err instanceof ApiError && [401, 403, 404].includes(err.status)) return null;
    throw err;
  }
}

// Each question is a row of eleven choices (0–10) with nothing chosen at first: an untouched
// form must not look like an answer. Arrow keys move within a row (native radio groups).
function scale(key, question) {
  const id = `checkin-${key}`;
  const choices = [];
  for (let v = 0; v <= 10; v += 1) {
    const input = h("input", {
      type: "radio", name: id, id: `${id}-${v}`, value: String(v), "data-testid": `${id}-${v}`,
    });
    choices.push(h("label", { class: "scale-choice", for: `${id}-${v}` }, input,
      h("span", { class: "scale-num" }, String(v)),
      h("span", { class: "visually-hidden" }, v === 0 ? " (not at all)" : v === 10 ? " (completely)" : "")));
  }
  return h("fieldset", { class: "scale-field", "data-testid": id, "aria-describedby": `${id}-anchors` },
    h("legend", { class: "slider-question" }, question),
    h("div", { class: "scale-row" }, ...choices),
    h("div", { class: "slider-anchors", id: `${id}-anchors` },
      h("span", {}, "0 not at all"), h("span", {}, "10 completely")),
    h("p", { class: "scale-value visually-hidden", "data-testid": `${id}-value` }, ""));
}

function chosen(view, key) {
  const picked = view.querySelector(`input[name="checkin-${key}"]:checked`);
  return picked ? Number(picked.value) : null;
}

/** The homework as the room last showed it (the server's copy may not be saved yet). */
function roomHomework() {
  const shown = document.querySelector('[data-testid="homework"]');
  return shown && !shown.hidden ? shown.textContent.trim() : "";
}

/** Homework stays in front of the client after the call: above the questions and after them. */
function showHomework(view, text) {
  const existing = view.querySelector('[data-testid="checkin-homework"]');
  if (!text || !text.trim()) {
    if (existing) existing.remove();
    return;
  }
  const box = h("section", { class: "checkin-homework", "data-testid": "checkin-homework", "aria-labelledby": "checkin-homework-h" },
    h("h2", { id: "checkin-homework-h" }, "Your homework"),
    h("p", { class: "homework-text" }, text.trim()));
  if (existing) existing.replaceWith(box);
  else view.querySelector("#checkin-title").after(box);
}

/**
 * Show the check-in in `view` (the [data-testid=checkin] element). `hideRest()` hides the room.
 * Returns once it is on screen.
 */
export async function showCheckin({ view, token, status, hideRest }) {
  let info = status;
  if (!info) {
    try {
      info = await checkinStatus(token);
    } catch {
      info = null;
    }
  }
  const questions = { ...FALLBACK_QUESTIONS, ...((info && info.questions) || {}) };
  const el = {
    title: view.querySelector("#checkin-title"),
    questions: byTestId("checkin-questions", view),
    form: byTestId("checkin-form", view),
    sliders: byTestId("checkin-sliders", view),
    comment: byTestId("checkin-comment", view),
    error: byTestId("checkin-error", view),
    submit: byTestId("checkin-submit", view),
    skip: byTestId("checkin-skip", view),
    done: byTestId("checkin-done", view),
  };
  if (hideRest) hideRest();
  view.hidden = false;
  showHomework(view, (info && info.homework) || roomHomework());

  const finished = (text) => {
    el.questions.hidden = true;
    if (text) byTestId("checkin-done-text", view).textContent = text;
    el.done.hidden = false;
    el.done.setAttribute("tabindex", "-1");
    el.done.focus();
  };

  if (info && info.submitted) {
    finished("Your answers are already with your therapist. You can close this window now.");
    return;
  }
  if (info && info.open === false) {
    el.questions.hidden = true;
    el.done.hidden = false;
    byTestId("checkin-done-title", view).textContent = "Thank you";
    byTestId("checkin-done-text", view).textContent = "You can close this window now.";
    return;
  }

  el.sliders.replaceChildren(...CHECKIN_KEYS.map((key) => scale(key, questions[key])));
  el.title.focus();
  // Submit once every question has an answer; until then say what is missing.
  const hint = h("p", { class: "hint", id: "checkin-submit-hint", "data-testid": "checkin-submit-hint" });
  el.submit.parentElement.before(hint);
  el.submit.setAttribute("aria-describedby", "checkin-submit-hint");
  const refresh = () => {
    const missing = CHECKIN_KEYS.filter((key) => chosen(view, key) === null).length;
    el.submit.disabled = missing > 0;
    hint.textContent = missing === 0 ? "" : `${missing} question${missing === 1 ? "" : "s"} still to answer, or skip.`;
    for (const key of CHECKIN_KEYS) {
      const v = chosen(view, key);
      byTestId(`checkin-${key}-value`, view).textContent = v === null ? "" : String(v);
      byTestId(`checkin-${key}`, view).dataset.answered = String(v !== null);
    }
  };
  el.sliders.addEventListener("change", refresh);
  refresh();

  const post = async (body) => {
    showMessage(el.error, "");
    el.submit.disabled = true;
    el.skip.disabled = true;
    try {
      await api(checkinPath(token), { method: "POST", body, redirectOn401: false });
      finished(body.skipped
        ? "No problem. You can close this window now."
        : "Your answers are with your therapist. You can close this window now.");
    } catch (err) {
      if (err instanceof ApiError && err.status === 409 && /already/i.test(err.message)) {
        finished(err.message);
        return;
      }
      showMessage(el.error, err.message);
      el.skip.disabled = false;
      refresh();
    }
  };

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { comment: el.comment.value.trim().slice(0, 2000) };
    for (const key of CHECKIN_KEYS) body[key] = chosen(view, key);
    if (CHECKIN_KEYS.some((key) => body[key] === null)) {
      showMessage(el.error, "Please answer all four questions, or skip the check-in.");
      return;
    }
    post(body);
  });
  el.skip.addEventListener("click", () => post({ skipped: true }));
}
