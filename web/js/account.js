// Account page: /account — two-factor sign-in (TOTP) set-up, recovery codes, turning it off.
// Also where a signed-in person is sent while the admins require two-factor and they have none.

import { api, ApiError, byTestId, copyText, formatDateTime, h, showMessage, signOut } from "./api.js";

const el = {
  user: byTestId("user-name"),
  who: byTestId("account-who"),
  signOut: byTestId("sign-out"),
  error: byTestId("error-message"),
  required: byTestId("required-notice"),
  status: byTestId("tfa-status"),
  off: byTestId("tfa-off"),
  start: byTestId("tfa-start"),
  enrol: byTestId("tfa-enrol"),
  secret: byTestId("tfa-secret"),
  copy: byTestId("tfa-copy"),
  uri: byTestId("tfa-uri"),
  uriText: byTestId("tfa-uri-text"),
  confirmForm: byTestId("tfa-confirm-form"),
  code: byTestId("tfa-code"),
  cancel: byTestId("tfa-cancel"),
  codes: byTestId("tfa-codes"),
  codeList: byTestId("tfa-code-list"),
  copyCodes: byTestId("tfa-copy-codes"),
  codesDone: byTestId("tfa-codes-done"),
  on: byTestId("tfa-on"),
  disableForm: byTestId("tfa-disable-form"),
  disableCode: byTestId("tfa-disable-code"),
  disablePassword: byTestId("tfa-disable-password"),
};

let status = null;

function show(part) {
  for (const name of ["off", "enrol", "codes", "on"]) el[name].hidden = name !== part;
}

function render() {
  const user = status.user;
  el.user.textContent = user.display_name || user.email;
  el.who.textContent = `${user.email} · ${user.role}`;
  el.required.hidden = !(status.required && !status.enabled);
  if (status.enabled) {
    const since = status.enabled_at ? ` since ${formatDateTime(status.enabled_at)}` : "";
    el.status.textContent = `On${since}. ${status.recovery_codes_left} of 10 recovery codes left.`;
    show("on");
  } else {
    el.status.textContent = status.required
      ? "Off. Required by your organisation."
      : "Off. Your password alone signs you in.";
    show("off");
  }
}

async function load() {
  try {
    status = await api("/api/account/two-factor");
    render();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showMessage(el.error, err.message);
  }
}

el.start.addEventListener("click", async () => {
  showMessage(el.error, "");
  try {
    const setup = await api("/api/account/two-factor/setup", { method: "POST" });
    el.secret.textContent = setup.secret.replace(/(.{4})/g, "$1 ").trim();
    el.uri.href = setup.otpauth_uri;
    el.uriText.textContent = setup.otpauth_uri;
    el.code.value = "";
    show("enrol");
    el.status.textContent = "Setting up: not on until you enter a code.";
    el.code.focus();
  } catch (err) {
    showMessage(el.error, err.message);
  }
});

el.copy.addEventListener("click", async () => {
  await copyText(el.secret.textContent.replace(/\s/g, ""));
});

el.cancel.addEventListener("click", () => render());

el.confirmForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(el.error, "");
  el.code.removeAttribute("aria-invalid");
  if (!el.code.value.trim()) {
    showMessage(el.error, "Enter the code your app shows.");
    el.code.setAttribute("aria-invalid", "true");
    el.code.focus();
    return;
  }
  try {
    const res = await api("/api/account/two-factor/confirm", {
      method: "POST",
      body: { code: el.code.value.trim() },
    });
    el.codeList.replaceChildren(
      ...res.recovery_codes.map((c) => h("li", { "data-testid": "tfa-recovery-code" }, h("code", {}, c))),
    );
    show("codes");
    el.status.textContent = "On. Save your recovery codes now.";
    byTestId("tfa-codes").querySelector("h3").focus();
  } catch (err) {
    showMessage(el.error, err.message);
    el.code.value = "";
    el.code.setAttribute("aria-invalid", "true");
    el.code.focus();
  }
});

el.copyCodes.addEventListener("click", async () => {
  const codes = [...el.codeList.querySelectorAll("code")].map((c) => c.textContent);
  await copyText(codes.join("\n"));
});

el.codesDone.addEventListener("click", async () => {
  el.codeList.replaceChildren();
  const wasRequired = status && status.required;
  await load();
  if (wasRequired) {
    el.status.textContent += " You can now use Rapport.";
    const next = status.user.role === "admin" ? "/admin" : "/sessions";
    el.status.append(" ", h("a", { href: next, "data-testid": "tfa-continue" }, "Continue"));
  }
});

el.disableForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(el.error, "");
  const code = el.disableCode.value.trim();
  const password = el.disablePassword.value;
  if (!code && !password) {
    showMessage(el.error, "Enter a current code or your password.");
    el.disableCode.focus();
    return;
  }
  try {
    status = await api("/api/account/two-factor/disable", {
      method: "POST",
      body: { code: code || null, password: password || null },
    });
    el.disableCode.value = "";
    el.disablePassword.value = "";
    render();
    showMessage(el.error, "Two-factor sign-in is off.", "ok");
  } catch (err) {
    showMessage(el.error, err.message);
  }
});

el.signOut.addEventListener("click", signOut);

// ---------- sign out everywhere (with a confirmation) ----------
const everywhere = {
  button: byTestId("logout-all"),
  confirm: byTestId("logout-all-confirm"),
  yes: byTestId("logout-all-confirm-button"),
  no: byTestId("logout-all-cancel"),
};
function closeEverywhere() {
  everywhere.confirm.hidden = true;
  everywhere.button.setAttribute("aria-expanded", "false");
  everywhere.button.focus();
}
everywhere.button.addEventListener("click", () => {
  everywhere.confirm.hidden = false;
  everywhere.button.setAttribute("aria-expanded", "true");
  everywhere.no.focus();
});
everywhere.no.addEventListener("click", closeEverywhere);
everywhere.confirm.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeEverywhere();
});
everywhere.yes.addEventListener("click", async () => {
  everywhere.yes.disabled = true;
  try {
    await api("/api/logout-all", { method: "POST", redirectOn401: false });
    location.assign("/login");
  } catch (err) {
    everywhere.yes.disabled = false;
    showMessage(el.error, err.message);
  }
});
load();
