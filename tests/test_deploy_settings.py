"""Production settings: `check --deploy` is clean, and every response carries the headers."""

import re
import secrets
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

ROOT = Path(__file__).resolve().parent.parent


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only what production sets: nothing inherited from the test run's environment."""
    return {
        "PATH": "/usr/bin:/bin",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "settings.inbox.lv,settings.mail.ee",
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


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The production example, .env.example, as an operator fills it in."""
    env: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            env[name.strip()] = value
    # The example leaves the secret key empty: everybody makes their own.
    filled = {"SECRET_KEY": secrets.token_urlsafe(50), "VAR_DIR": str(tmp_path)}
    return {**env, "PATH": "/usr/bin:/bin", **filled, **extra}


def test_the_production_example_passes_check_deploy_with_no_warnings(tmp_path: Path) -> None:
    result = check_deploy(example_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def setting(env: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    """Load the settings in a fresh process, as a server starts, and print one of them."""
    code = f"from django.conf import settings; print(repr(settings.{name}), end='')"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "mailportal.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hsts_preload_is_on_by_default_as_in_the_example(tmp_path: Path) -> None:
    example = example_env(tmp_path)
    assert example["SECURE_HSTS_PRELOAD"] == "1"
    assert setting(production_env(tmp_path), "SECURE_HSTS_PRELOAD").stdout == "True"
    assert setting(production_env(tmp_path, DEBUG="1"), "SECURE_HSTS_PRELOAD").stdout == "False"


def test_a_misspelt_yes_or_no_stops_the_start_instead_of_meaning_no(tmp_path: Path) -> None:
    result = setting(production_env(tmp_path, SECURE_COOKIES="ture"), "SESSION_COOKIE_SECURE")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECURE_COOKIES" in result.stderr
    for word in ("1", "TRUE", " yes ", "on"):
        assert (
            setting(production_env(tmp_path, SECURE_COOKIES=word), "SESSION_COOKIE_SECURE").stdout
            == "True"
        )
    for word in ("0", "False", "no", "OFF"):
        assert (
            setting(production_env(tmp_path, SECURE_COOKIES=word), "SESSION_COOKIE_SECURE").stdout
            == "False"
        )


def test_secrets_can_come_from_files_without_their_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret_key"
    secret_file.write_text("file-secret-key-" + "k" * 40 + "\n")
    env = production_env(tmp_path, SECRET_KEY_FILE=str(secret_file))
    del env["SECRET_KEY"]
    assert setting(env, "SECRET_KEY").stdout == repr("file-secret-key-" + "k" * 40)


def test_systemd_credentials_are_read_from_the_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "auth_policy_api_key").write_text("api-key-from-systemd\n")
    (credentials / "metrics_token").write_text("token with a space\r\n")
    env = production_env(
        tmp_path,
        CREDENTIALS_DIRECTORY=str(credentials),
        AUTH_POLICY_API_KEY_FILE="auth_policy_api_key",
        METRICS_TOKEN_FILE="metrics_token",
    )
    assert setting(env, "AUTH_POLICY_API_KEY").stdout == repr("api-key-from-systemd")
    assert setting(env, "METRICS_TOKEN").stdout == repr("token with a space")


def test_only_one_trailing_newline_is_taken_off(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("token\n\n")
    env = production_env(tmp_path, METRICS_TOKEN_FILE=str(token))
    assert setting(env, "METRICS_TOKEN").stdout == repr("token\n")


def test_a_secret_set_twice_or_from_a_missing_file_stops_the_start(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret_key"
    secret_file.write_text("from-the-file")
    both = setting(production_env(tmp_path, SECRET_KEY_FILE=str(secret_file)), "SECRET_KEY")
    assert both.returncode != 0
    assert "Set SECRET_KEY or SECRET_KEY_FILE, not both." in both.stderr
    missing = production_env(tmp_path, AUTH_POLICY_API_KEY_FILE=str(tmp_path / "nowhere"))
    result = setting(missing, "AUTH_POLICY_API_KEY")
    assert result.returncode != 0
    assert "AUTH_POLICY_API_KEY_FILE" in result.stderr
    relative = setting(
        production_env(tmp_path, METRICS_TOKEN_FILE="metrics_token"), "METRICS_TOKEN"
    )
    assert relative.returncode != 0
    assert "CREDENTIALS_DIRECTORY" in relative.stderr


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


def test_plain_http_is_sent_to_https_in_production(db: None, settings: Settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    response = Client().get(reverse("accounts:login"))
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
