"""Production settings: `check --deploy` is clean, and every response carries the headers."""

import re
import secrets
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.test import Client
from django.urls import reverse

ROOT = Path(__file__).resolve().parent.parent


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only what production sets: nothing inherited from the test run's environment."""
    return {
        "PATH": "/usr/bin:/bin",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "settings.inbox.lv,settings.mail.ee",
        "SECURE_HSTS_PRELOAD": "1",
        "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
        "VAR_DIR": str(tmp_path),
        **extra,
    }


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy_with_no_warnings(tmp_path: Path) -> None:
    result = check_deploy(production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_check_deploy_does_catch_a_weak_setting(tmp_path: Path) -> None:
    # Proof that the test above can fail: cookies over plain HTTP are reported.
    result = check_deploy(production_env(tmp_path, SECURE_COOKIES="0"))
    assert result.returncode != 0
    assert "security.W012" in result.stdout + result.stderr


def test_every_page_sends_a_content_security_policy_without_inline_scripts(db: None) -> None:
    policy = Client().get(reverse("accounts:login"))["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


def test_templates_have_no_inline_scripts_styles_or_handlers() -> None:
    offenders = []
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)", r"<style", r"\sstyle=", r"\son[a-z]+="):
            if re.search(pattern, text):
                offenders.append(f"{template.relative_to(ROOT)}: {pattern}")
    assert offenders == []


def test_https_responses_carry_hsts_frame_denial_and_referrer_policy(db: None) -> None:
    response = Client().get(reverse("accounts:login"), secure=True)
    assert response["Strict-Transport-Security"].startswith(
        f"max-age={settings.SECURE_HSTS_SECONDS}"
    )
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_plain_http_is_sent_to_https_in_production(db: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SECURE_SSL_REDIRECT = True
    response = Client().get(reverse("accounts:login"))
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
