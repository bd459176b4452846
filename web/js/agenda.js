// The shared agenda, live from `agenda` messages ({items, homework}).
// Therapist: add, edit, tick, reorder (move up/down), remove, accept proposals, homework.
// Client: sees the list, proposes items, reads the homework.

import { byTestId, h } from "./api.js";

const ICONS = {
  up: "M12 19V5M6 11l6-6 6 6",
  down: "M12 5v14M6 13l6 6 6-6",
  edit: "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
  remove: "M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13",
};

function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

/**
 * Wire up the agenda section found under `root`.
 * role: "therapist" | "client"; send(msg) → bool; onProblem(text) shows an error.
 */
export function setupAgenda({ root, role, send, onProblem, announce }) {
  const isTherapist = role === "therapist";
  const el = {
    list: byTestId("agenda-list", root),
    empty: byTestId("agenda-empty", root),
    form: byTestId("agenda-form", root),
    input: byTestId("agenda-input", root),
    add: byTestId("agenda-add", root),
    homework: byTestId("homework", root),
    homeworkEmpty: byTestId("homework-empty", root),
    homeworkStatus: byTestId("homework-status", root),
  };
  const state = {
    items: [],
    homework: "",
    editing: null, // {id, value}
    focusAfter: null, // {id, action}
    homeworkSent: null,
    received: false,
  };
  const say = announce || (() => {});

  function transmit(msg) {
    if (send(msg)) return true;
    onProblem("Not connected to the server, so the agenda could not be changed. Reload the page and try again.");
    return false;
  }

  // ---------- adding / proposing ----------
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.input.value.trim();
    if (!text) {
      el.input.focus();
      return;
    }
    if (transmit({ type: "agenda_add", text: text.slice(0, 200) })) {
      el.input.value = "";
      el.input.focus();
    }
  });

  // ---------- homework ----------
  let homeworkTimer = null;
  function sendHomework() {
    if (!isTherapist) return;
    clearTimeout(homeworkTimer);
    homeworkTimer = null;
    const text = el.homework.value;
    if (text.trim() === state.homework.trim() && state.homeworkSent === null) return;
    if (state.homeworkSent === text) return;
    if (transmit({ type: "homework", text: text.slice(0, 2000) })) {
      state.homeworkSent = text;
      if (el.homeworkStatus) el.homeworkStatus.textContent = "Saving…";
    }
  }
  if (isTherapist) {
    el.homework.addEventListener("input", () => {
      clearTimeout(homeworkTimer);
      if (el.homeworkStatus) el.homeworkStatus.textContent = "";
      homeworkTimer = setTimeout(sendHomework, 1200);
    });
    el.homework.addEventListener("blur", sendHomework);
  }

  // ---------- therapist actions ----------
  function move(id, delta) {
    const ids = state.items.map((i) => i.id);
    const from = ids.indexOf(id);
    const to = from + delta;
    if (from < 0 || to < 0 || to >= ids.length) return;
    [ids[from], ids[to]] = [ids[to], ids[from]];
    state.focusAfter = { id, action: delta < 0 ? "up" : "down" };
    transmit({ type: "agenda_reorder", item_ids: ids });
  }

  function startEdit(item) {
    state.editing = { id: item.id, value: item.text };
    state.focusAfter = { id: item.id, action: "edit-input" };
    render();
  }

  function finishEdit(save) {
    const editing = state.editing;
    if (!editing) return;
    state.editing = null;
    state.focusAfter = { id: editing.id, action: "edit" };
    const item = state.items.find((i) => i.id === editing.id);
    const text = editing.value.trim();
    if (save && item && text && text !== item.text) {
      transmit({ type: "agenda_update", item_id: editing.id, text: text.slice(0, 200) });
    }
    render();
  }

  function actionButton(item, action, label, extra = {}) {
    const button = h("button", {
      type: "button",
      class: "icon-btn",
      "data-testid": `agenda-${action}`,
      "data-action": action,
      "aria-label": `${label}: ${item.text}`,
      title: label,
      ...extra,
    }, icon(action));
    return button;
  }

  function therapistItem(item, index) {
    const li = h("li", {
      class: "agenda-item",
      "data-testid": "agenda-item",
      "data-item-id": item.id,
      "data-done": String(item.done),
      "data-accepted": String(item.accepted),
    });
    const checkId = `agenda-done-${item.id}`;
    if (state.editing && state.editing.id === item.id) {
      const inputId = `agenda-edit-${item.id}`;
      const input = h("input", {
        id: inputId, type: "text", maxlength: "200", "data-testid": "agenda-edit-input", "data-action": "edit-input",
        value: state.editing.value,
      });
      input.value = state.editing.value;
      input.addEventListener("input", () => { state.editing.value = input.value; });
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") { event.preventDefault(); finishEdit(true); }
        if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finishEdit(false); }
      });
      const save = h("button", { type: "button", class: "btn btn-primary btn-small", "data-testid": "agenda-save", "data-action": "save" }, "Save");
      save.addEventListener("click", () => finishEdit(true));
      const cancel = h("button", { type: "button", class: "btn btn-quiet btn-small", "data-action": "cancel" }, "Cancel");
      cancel.addEventListener("click", () => finishEdit(false));
      li.append(h("div", { class: "agenda-edit" },
        h("label", { for: inputId, class: "visually-hidden" }, "Edit agenda item"),
        input,
        h("div", { class: "agenda-edit-actions" }, save, cancel)));
      return li;
    }
    const main = h("div", { class: "agenda-main" });
    if (item.accepted) {
      const box = h("input", { type: "checkbox", id: checkId, "data-testid": "agenda-done", "data-action": "done" });
      box.checked = item.done;
      box.addEventListener("change", () => {
        state.focusAfter = { id: item.id, action: "done" };
        if (!transmit({ type: "agenda_update", item_id: item.id, done: box.checked })) box.checked = item.done;
      });
      main.append(box, h("label", { for: checkId, class: "agenda-text" }, item.text));
    } else {
      main.append(h("span", { class: "agenda-bullet", "aria-hidden": "true" }), h("span", { class: "agenda-text" }, item.text));
    }
    li.append(main);
    const actions = h("div", { class: "agenda-actions" });
    if (!item.accepted) {
      li.append(h("p", { class: "agenda-note" }, h("span", { class: "tag", "data-testid": "agenda-proposed" }, "Proposed by your client")));
      const accept = h("button", {
        type: "button", class: "btn btn-secondary btn-small", "data-testid": "agenda-accept", "data-action": "accept",
        "aria-label": `Accept: ${item.text}`,
      }, "Accept");
      accept.addEventListener("click", () => {
        state.focusAfter = { id: item.id, action: "done" };
        transmit({ type: "agenda_accept", item_id: item.id });
      });
      actions.append(accept);
    }
    const up = actionButton(item, "up", "Move up");
    up.disabled = index === 0;
    up.addEventListener("click", () => move(item.id, -1));
    const down = actionButton(item, "down", "Move down");
    down.disabled = index === state.items.length - 1;
    down.addEventListener("click", () => move(item.id, 1));
    const edit = actionButton(item, "edit", "Edit");
    edit.addEventListener("click", () => startEdit(item));
    const remove = actionButton(item, "remove", "Remove");
    remove.addEventListener("click", () => {
      const next = state.items[index + 1] || state.items[index - 1];
      state.focusAfter = next ? { id: next.id, action: "remove" } : { id: null, action: "input" };
      if (transmit({ type: "agenda_remove", item_id: item.id })) say(`Removed "${item.text}".`);
    });
    actions.append(up, down, edit, remove);
    li.append(actions);
    return li;
  }

  function clientItem(item) {
    const status = !item.accepted ? "proposed" : item.done ? "done" : "open";
    return h("li", {
      class: `agenda-item agenda-readonly agenda-${status}`,
      "data-testid": "agenda-item",
      "data-item-id": item.id,
      "data-done": String(item.done),
      "data-accepted": String(item.accepted),
    },
    h("div", { class: "agenda-main" },
      h("span", { class: `agenda-mark agenda-mark-${status}`, "aria-hidden": "true" }),
      h("span", { class: "agenda-text" }, item.text),
      status === "done" ? h("span", { class: "visually-hidden" }, " (done)") : null),
    !item.accepted
      ? h("p", { class: "agenda-note" }, h("span", { class: "tag", "data-testid": "agenda-proposed" }, "Proposed"), " waiting for your therapist")
      : null);
  }

  function restoreFocus() {
    const want = state.focusAfter;
    state.focusAfter = null;
    if (!want) return;
    if (want.action === "input" || want.id === null) {
      el.input.focus();
      return;
    }
    const row = el.list.querySelector(`[data-item-id="${want.id}"]`);
    if (!row) return;
    let target = row.querySelector(`[data-action="${want.action}"]`);
    if (want.action === "up" && target && target.disabled) target = row.querySelector('[data-action="down"]');
    if (want.action === "down" && target && target.disabled) target = row.querySelector('[data-action="up"]');
    if (!target || target.disabled) target = row.querySelector('[data-action="done"], [data-action="edit"]');
    if (target) target.focus();
  }

  function render() {
    // Keep the keyboard focus (and the caret while editing) across a re-render.
    const active = document.activeElement;
    if (!state.focusAfter && active && el.list.contains(active)) {
      const row = active.closest("[data-item-id]");
      if (row && active.dataset.action) state.focusAfter = { id: Number(row.dataset.itemId), action: active.dataset.action };
    }
    const caret = active && active.dataset && active.dataset.action === "edit-input" ? active.selectionStart : null;
    el.list.replaceChildren(...state.items.map((item, i) => (isTherapist ? therapistItem(item, i) : clientItem(item))));
    el.empty.hidden = state.items.length > 0;
    if (state.focusAfter) restoreFocus();
    const input = el.list.querySelector('[data-action="edit-input"]');
    if (input && document.activeElement === input) {
      const pos = caret ?? input.value.length;
      input.setSelectionRange(pos, pos);
    }
  }

  function update(msg) {
    const before = new Map(state.items.map((i) => [i.id, i]));
    state.items = Array.isArray(msg.items) ? msg.items : [];
    state.homework = typeof msg.homework === "string" ? msg.homework : "";
    if (state.editing && !state.items.some((i) => i.id === state.editing.id)) state.editing = null;
    // Tell screen-reader users about what the other person changed.
    if (state.received) {
      for (const item of state.items) {
        if (!before.has(item.id)) {
          if (isTherapist && !item.accepted) say(`Your client proposed an agenda item: ${item.text}`);
          else if (!isTherapist && item.proposed_by === "therapist") say(`New agenda item: ${item.text}`);
        } else if (!isTherapist && !before.get(item.id).accepted && item.accepted) {
          say(`Your therapist added your item to the agenda: ${item.text}`);
        }
      }
    }
    state.received = true;
    render();
    if (isTherapist) {
      const focused = document.activeElement === el.homework;
      if (state.homeworkSent !== null && state.homework === state.homeworkSent.trim()) {
        state.homeworkSent = null;
        if (el.homeworkStatus) el.homeworkStatus.textContent = "Homework saved.";
      }
      if (!focused && state.homeworkSent === null && el.homework.value !== state.homework) el.homework.value = state.homework;
    } else {
      el.homework.textContent = state.homework;
      el.homework.hidden = !state.homework;
      if (el.homeworkEmpty) el.homeworkEmpty.hidden = Boolean(state.homework);
    }
  }

  function setEnabled(on) {
    el.input.disabled = !on;
    el.add.disabled = !on;
    if (isTherapist) el.homework.disabled = !on;
  }

  return { update, setEnabled, flush: sendHomework };
}
