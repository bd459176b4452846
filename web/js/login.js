// Sign-in page: /login?next=/path

import { api, ApiError, byTestId, safeNext, showMessage } from "./api.js";

const form = byTestId("login-form");
const email = byTestId("login-email");
const password = byTestId("login-password");
const submit = byTestId("login-submit");
const error = byTestId("login-error");

function destination(user) {
  const next = safeNext(new URLSearchParams(location.search).get("next"));
  if (next) return next;
  return user && user.role === "admin" ? "/admin" : "/sessions";
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
    location.assign(destination(res && res.user));
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

// Already signed in? Go straight on.
(async () => {
  try {
    const res = await api("/api/me", { redirectOn401: false });
    if (res && res.user) location.replace(destination(res.user));
  } catch {
    email.focus();
  }
})();
