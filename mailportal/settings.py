"""Settings for mailportal, read from the environment.

With no environment at all the site runs on a SQLite file under ``var/`` and needs no
other server (the "embedded default"). Production sets ``DATABASE_URL`` (PostgreSQL),
``REDIS_URL`` and ``SECRET_KEY``; every variable is listed in ``.env.example``.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (see .env.example). "
            "For local development run `make run`, which sets DEBUG=1."
        )
    # Only ever used on a developer's machine: DEBUG is on.
    SECRET_KEY = "development-only-insecure-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "accounts",
    "mailaccess",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "accounts.middleware.user_language_middleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mailportal.urls"
WSGI_APPLICATION = "mailportal.wsgi.application"
ASGI_APPLICATION = "mailportal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The embedded default: a SQLite file in the git-ignored var/ folder.
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'mailportal.sqlite3'}",
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite has no SELECT ... FOR UPDATE: taking the write lock when a transaction begins
    # (IMMEDIATE) serialises the access actions the way row locks do on PostgreSQL. Without
    # a timeout a second writer would fail at once instead of waiting its turn.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.Mailbox"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "mailaccess:settings"
LOGOUT_REDIRECT_URL = "accounts:login"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "mp",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Latvian first; English is the second language.
LANGUAGE_CODE = "lv"
LANGUAGES = [
    ("lv", _("Latvian")),
    ("en", _("English")),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
USE_TZ = True
TIME_ZONE = os.environ.get("TIME_ZONE", "Europe/Riga")

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))

# Mail domains this provider hosts and the server host each one's mail programs use.
# Format: "domain=host,domain=host". The defaults are the provider's own domains.
MAIL_DOMAINS: dict[str, str] = dict(
    item.split("=", 1)
    for item in envlist(
        "MAIL_DOMAINS",
        "inbox.lv=mail.inbox.lv,inbox.lt=mail.inbox.lt,inbox.eu=mail.inbox.eu,mail.ee=mail.ee",
    )
)

# Outgoing mail (notices).
EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Inbox.lv <noreply@inbox.lv>")

# The secret page and every response that may hold one must never be cached.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = envbool("SECURE_COOKIES", not DEBUG)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# The mail-server side (auth policy, SMTP policy daemon): its counters and cached state live
# in Redis. Seconds, not more: Dovecot and Postfix wait on every answer.
MAILSERVER_REDIS_URL = os.environ.get(
    "MAILSERVER_REDIS_URL", REDIS_URL or "redis://127.0.0.1:6379/0"
)
MAILSERVER_REDIS_TIMEOUT = float(os.environ.get("MAILSERVER_REDIS_TIMEOUT", "0.5"))

# The SMTP policy daemon (`manage.py smtp_policy_server`, see deploy/postfix-policy.md).
# Where it listens: host:port or unix:/path, comma separated.
SMTP_POLICY_LISTEN = envlist("SMTP_POLICY_LISTEN", "127.0.0.1:10040")
# Redis (or the database) unreachable: "dunno" lets mail through, "defer" answers 4xx.
SMTP_POLICY_ON_REDIS_ERROR = os.environ.get("SMTP_POLICY_ON_REDIS_ERROR", "dunno")
if SMTP_POLICY_ON_REDIS_ERROR not in {"dunno", "defer"}:
    raise ImproperlyConfigured("SMTP_POLICY_ON_REDIS_ERROR must be 'dunno' or 'defer'.")
# Seconds for one answer; keep it below Postfix's smtpd_policy_service_timeout.
SMTP_POLICY_REQUEST_TIMEOUT = float(os.environ.get("SMTP_POLICY_REQUEST_TIMEOUT", "2"))
# Longer than Postfix's smtpd_policy_service_max_idle (300 s): Postfix closes first.
SMTP_POLICY_IDLE_TIMEOUT = float(os.environ.get("SMTP_POLICY_IDLE_TIMEOUT", "600"))
# How long the daemon trusts its copy of a mailbox's plan and of the plans' limits.
SMTP_POLICY_CACHE_SECONDS = float(os.environ.get("SMTP_POLICY_CACHE_SECONDS", "60"))
# Bounces within an hour that mark a mailbox which sent through SMTP as compromised.
SMTP_POLICY_BOUNCE_LIMIT = envint("SMTP_POLICY_BOUNCE_LIMIT", 30)
# The n-th hourly-limit block within 24 hours blocks as compromised instead.
SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED = envint(
    "SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED", 3
)
