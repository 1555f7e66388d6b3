"""The logs: one key=value line per decision or action, the mailbox kept, never a secret."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from accounts.models import Mailbox
from common.logging import KeyValueFormatter, log_event
from mailaccess.models import AppPassword
from tests.conftest import csrf_post, signed_in_client
from tests.policy_client import API_KEY, SESSION_ID, login


def formatted(caplog: pytest.LogCaptureFixture) -> str:
    """What production writes: every captured record through the production formatter."""
    formatter = KeyValueFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


@pytest.mark.e2e
def test_switching_access_on_and_a_whole_login_log_no_secret(
    policy: str, alice: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    browser = signed_in_client(alice)
    response = csrf_post(browser, reverse("mailaccess:mail_programs"), {"external_access": "on"})
    password = response.context["new_password"]
    assert password
    app_password = AppPassword.objects.get(mailbox=alice)
    # Dovecot's pwhash: a few hex digits of a salted hash of the password tried.
    pwhash = "9f86d081"
    assert login(policy, "alice@inbox.lv", pwhash=pwhash)["status"] == 0

    text = caplog.text + "\n" + formatted(caplog)
    secrets = {
        "the generated password": password,
        "its password without dashes": password.replace("-", ""),
        "its Dovecot hash": app_password.password_hash,
        "the hash's salted digest": app_password.password_hash.removeprefix("{SSHA512}"),
        "its lookup key": app_password.lookup_key,
        "the auth-policy API key": API_KEY,
        "Dovecot's session id": SESSION_ID,
        "Dovecot's password hash": pwhash,
        "the web session id": browser.cookies["sessionid"].value,
        "the CSRF token": browser.cookies["csrftoken"].value,
    }
    for what, secret in secrets.items():
        assert secret not in text, f"{what} is in the logs"

    # One line per decision and action, each naming the mailbox.
    lines = formatted(caplog).splitlines()
    events = [line for line in lines if " event=" in line]
    assert [line.split(" event=")[1].split()[0] for line in events] == [
        "access.access_enabled",
        "access.password_created",
        "auth_policy.allow",
        "auth_policy.allow",
        "auth_policy.use_recorded",
        "auth_policy.report",
    ]
    assert all("mailbox=alice@inbox.lv" in line for line in events)
    assert "actor=user:alice@inbox.lv" in events[0]
    assert events[2].endswith(" session_prefix=Sr2fVv")


def test_a_field_named_like_a_secret_is_never_written(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("mailaccess.test")
    log_event(
        logger,
        "careless.call",
        mailbox="alice@inbox.lv",
        password="hunter2-hunter2",
        password_hash="{SSHA512}abc",
        lookup_key="deadbeef",
        api_key="k",
        session_id="full-session-id",
    )
    line = formatted(caplog)
    for secret in ("hunter2", "{SSHA512}abc", "deadbeef", "full-session-id", "api_key=k"):
        assert secret not in line
    assert "mailbox=alice@inbox.lv" in line
    assert line.count("[redacted]") == 5


def test_a_login_name_cannot_forge_a_second_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("mailaccess.test")
    log_event(logger, "auth_policy.allow", mailbox='x@inbox.lv\ntime=0 event=access.forged "')
    line = formatted(caplog)
    assert "\n" not in line
    assert line.endswith('mailbox="x@inbox.lv\\ntime=0 event=access.forged \\""')


def test_control_characters_from_a_request_are_escaped_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("mailaccess.test")
    # NUL, a terminal escape (ESC [ 2 J clears the screen), BEL, DEL, a C1 control, the Unicode
    # line separator and a lone surrogate: none may reach the log file as is.
    login = "x\x00@inbox.lv\x1b[2J\x07\x7f\x9b\u2028\ud800\t"
    log_event(logger, "auth_policy.allow", mailbox=login)
    line = formatted(caplog)
    assert line.endswith('mailbox="x\\x00@inbox.lv\\x1b[2J\\x07\\x7f\\x9b\\u2028\\ud800\\t"'), line
    assert line.isprintable()
    line.encode("utf-8")  # what a log file needs
    assert "Traceback" not in formatted(caplog)
