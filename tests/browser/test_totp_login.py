"""Two-factor sign-in in a real browser (issue 12, item 6): a therapist sets it up on the
account page, then signs in on the real login page with a code from the keyboard alone.
Codes come from pyotp, as from an authenticator app."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import expect

from tests.server_process import NO_MEDIA, rapport_server_process

from .conftest import CHROMIUM
from .helpers import WAIT_MS, axe_violations, describe_violations

pytestmark = pytest.mark.browser


def test_sign_in_with_a_code_on_the_login_page(pw: Any, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: ./dev.sh test installs it")
    with rapport_server_process(tmp_path, NO_MEDIA) as server:
        email, password = server.users["therapist"]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(base_url=server.url)
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))

            # Without two-factor the password alone signs in.
            page.goto("/login")
            page.get_by_label("Email", exact=True).fill(email)
            page.get_by_label("Password", exact=True).fill(password)
            page.keyboard.press("Enter")
            page.wait_for_url("**/sessions")

            # Enrol on the account page.
            page.get_by_test_id("nav-account").click()
            page.wait_for_url("**/account")
            page.get_by_test_id("tfa-start").click()
            expect(page.get_by_test_id("tfa-secret")).to_have_text(re.compile(r"^[A-Z2-7 ]{16,}$"))
            secret = page.get_by_test_id("tfa-secret").inner_text().replace(" ", "")
            uri = page.get_by_test_id("tfa-uri").get_attribute("href") or ""
            assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
            totp = pyotp.TOTP(secret)
            expect(page.get_by_test_id("tfa-code")).to_be_focused()
            page.keyboard.type(totp.now())
            page.keyboard.press("Enter")
            expect(page.get_by_test_id("tfa-recovery-code")).to_have_count(10)
            page.get_by_test_id("tfa-codes-done").click()
            expect(page.get_by_test_id("tfa-status")).to_contain_text("10 of 10")
            page.get_by_test_id("sign-out").click()
            page.wait_for_url("**/login")

            # Sign in: password, then the code step.
            page.get_by_label("Email", exact=True).fill(email)
            page.get_by_label("Password", exact=True).fill(password)
            page.keyboard.press("Enter")
            code = page.get_by_label("Code from your authenticator app")
            expect(code).to_be_visible()
            expect(code).to_be_focused()
            assert code.get_attribute("autocomplete") == "one-time-code"
            assert code.get_attribute("inputmode") == "numeric"
            # Still signed out: the password step set no cookie.
            assert not [c for c in context.cookies() if c["name"] == "rapport_login"]
            violations = axe_violations(page)
            assert violations == [], describe_violations(violations)

            # A wrong code is refused and the field is ready for another try.
            page.keyboard.type("000000")
            page.keyboard.press("Enter")
            expect(page.get_by_test_id("login-error")).to_contain_text("not valid")
            expect(code).to_be_focused()
            # The next step's code (the enrolment used the current one).
            page.keyboard.type(totp.at(time.time() + 30))
            page.keyboard.press("Enter")
            page.wait_for_url("**/sessions")
            expect(page.get_by_test_id("user-name")).to_have_text("Dr. Ellis Moreau")
            assert errors == []
        finally:
            browser.close()
