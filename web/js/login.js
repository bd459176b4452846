// Sign-in page: /login?next=/path. Accounts with two-factor sign-in get a second step: the
// password answers with a pending token (no cookie yet) that a current code completes.

import { api, ApiError, byTestId, safeNext, showMessage } from "./api.js";

const form = byTestId("login-form");
const email = byTestId("login-email");
const password = byTestId("login-password");
const submit = byTestId("login-submit");
const error = byTestId("login-error");
const title = byTestId("login-title");
const intro = byTestId("login-intro");
const codeForm = byTestId("code-form");
const code = byTestId("login-code");
const codeLabel = byTestId("code-label");
const codeHint = byTestId("code-hint");
const codeSubmit = byTestId("code-submit");
const useRecovery = byTestId("use-recovery");
const back = byTestId("code-back");

const INTRO = intro.textContent;
let pendingToken = null;

function destination(res) {
  // Admins require two-factor and this account has none yet: set it up before anything else.
  if (res && res.enrolment_required) return "/account?required=1";
  const next = safeNext(new URLSearchParams(location.search).get("next"));
  if (next) return next;
  return res && res.user && res.user.role === "admin" ? "/admin" : "/sessions";
}

function setRecovery(on) {
  useRecovery.setAttribute("aria-pressed", String(on));
  useRecovery.textContent = on ? "Use a code from the app instead" : "Use a recovery code instead";
  codeLabel.textContent = on ? "Recovery code" : "Code from your authenticator app";
  codeHint.textContent = on
    ? "One of the ten codes you saved when you set up two-factor sign-in. Each works once."
    : "Six digits; a new one appears every 30 seconds.";
  code.setAttribute("inputmode", on ? "text" : "numeric");
  code.setAttribute("autocomplete", on ? "off" : "one-time-code");
  code.value = "";
  code.removeAttribute("aria-invalid");
  code.focus();
}

function showPasswordStep(message = "") {
  pendingToken = null;
  codeForm.hidden = true;
  form.hidden = false;
  title.textContent = "Sign in";
  intro.textContent = INTRO;
  submit.disabled = false;
  submit.textContent = "Sign in";
  password.value = "";
  showMessage(error, message);
  password.focus();
}

function showCodeStep(token) {
  pendingToken = token;
  form.hidden = true;
  codeForm.hidden = false;
  title.textContent = "Two-factor sign-in";
  intro.textContent = "Open your authenticator app and enter the code it shows for Rapport.";
  setRecovery(false);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(error, "");
  email.removeAttribute("aria-invalid");
  password.removeAttribute("aria-invalid");
  if (!email.value.trim() || !password.value) {
    showMessage(error, "Enter your email and password.");
    (email.value.trim() ? password : email).setAttribute("aria-invalid", "true");
    (email.value.trim() ? password : email).focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = "Signing in…";
  try {
    const res = await api("/api/login", {
      method: "POST",
      body: { email: email.value.trim(), password: password.value },
      redirectOn401: false,
    });
    if (res && res.code_required) {
      showCodeStep(res.pending_token);
      return;
    }
    location.assign(destination(res));
  } catch (err) {
    const message = err instanceof ApiError && err.status === 401
      ? "That email and password don't match an account. Please try again."
      : err.message;
    showMessage(error, message);
    password.value = "";
    password.setAttribute("aria-invalid", "true");
    password.focus();
    submit.disabled = false;
    submit.textContent = "Sign in";
  }
});

codeForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(error, "");
  code.removeAttribute("aria-invalid");
  if (!code.value.trim()) {
    showMessage(error, "Enter the code.");
    code.setAttribute("aria-invalid", "true");
    code.focus();
    return;
  }
  codeSubmit.disabled = true;
  codeSubmit.textContent = "Checking…";
  try {
    const res = await api("/api/login/code", {
      method: "POST",
      body: { pending_token: pendingToken, code: code.value.trim() },
      redirectOn401: false,
    });
    location.assign(destination(res));
  } catch (err) {
    codeSubmit.disabled = false;
    codeSubmit.textContent = "Verify and sign in";
    if (err instanceof ApiError && err.status === 401 && /password again/.test(err.message)) {
      showPasswordStep(err.message);
      return;
    }
    showMessage(error, err.message);
    code.value = "";
    code.setAttribute("aria-invalid", "true");
    code.focus();
  }
});

useRecovery.addEventListener("click", () => {
  setRecovery(useRecovery.getAttribute("aria-pressed") !== "true");
});
back.addEventListener("click", () => showPasswordStep());

// Already signed in? Go straight on.
(async () => {
  try {
    const res = await api("/api/me", { redirectOn401: false });
    if (res && res.user) location.replace(destination(res));
  } catch {
    email.focus();
  }
})();
