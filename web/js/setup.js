// First-run page: /setup/{token}

import { api, ApiError, byTestId, pathParam, showMessage } from "./api.js";

const token = pathParam("/setup/");
const intro = byTestId("setup-intro");
const error = byTestId("setup-error");
const form = byTestId("setup-form");
const name = byTestId("setup-name");
const email = byTestId("setup-email");
const password = byTestId("setup-password");
const password2 = byTestId("setup-password2");
const submit = byTestId("setup-submit");

function invalid(input, message) {
  input.setAttribute("aria-invalid", "true");
  showMessage(error, message);
  input.focus();
}

async function check() {
  if (!token) {
    intro.textContent = "";
    showMessage(error, "This setup link is incomplete. Use the full link printed by the server.");
    return;
  }
  try {
    await api(`/api/setup/${encodeURIComponent(token)}`, { redirectOn401: false });
    intro.textContent = "This account can create sessions or run the server, depending on its role. More accounts can be added later.";
    form.hidden = false;
    name.focus();
  } catch (err) {
    intro.textContent = "";
    const gone = err instanceof ApiError && (err.status === 404 || err.status === 410);
    showMessage(error, gone
      ? "This setup link is not valid any more. It may have been used already or expired. Sign in instead, or ask the server's operator for a new link."
      : err.message);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(error, "");
  for (const input of [name, email, password, password2]) input.removeAttribute("aria-invalid");
  if (!name.value.trim()) return invalid(name, "Enter your name.");
  if (!email.value.trim() || !email.value.includes("@")) return invalid(email, "Enter a valid email address.");
  if (password.value.length < 10) return invalid(password, "The password needs at least 10 characters.");
  if (password.value !== password2.value) return invalid(password2, "The two passwords are different.");
  const role = form.querySelector('input[name="role"]:checked').value;
  submit.disabled = true;
  submit.textContent = "Creating…";
  try {
    const res = await api("/api/setup", {
      method: "POST",
      redirectOn401: false,
      body: {
        token,
        email: email.value.trim(),
        password: password.value,
        display_name: name.value.trim(),
        role,
      },
    });
    const user = res && res.user;
    location.assign(user && user.role === "admin" ? "/admin" : "/sessions");
  } catch (err) {
    showMessage(error, err.message);
    submit.disabled = false;
    submit.textContent = "Create account";
  }
});

check();
