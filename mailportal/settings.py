"""Settings for mailportal, read from the environment.

With no environment at all the site runs on a SQLite file under ``var/`` and needs no
other server (the "embedded default"). Production sets ``DATABASE_URL`` (PostgreSQL),
``REDIS_URL`` and ``SECRET_KEY``; every variable is listed in ``.env.example``.
"""

import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
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

# Celery: Redis is the broker (REDIS_URL, or CELERY_BROKER_URL to keep it apart). Without a
# broker (the embedded default of `make run`) tasks run eagerly in the process that queues them:
# a block notice is e-mailed synchronously once the block commits, and the periodic jobs run
# through `manage.py run_job` instead of beat. Nothing then needs a worker.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", not CELERY_BROKER_URL)
# A task is acknowledged only once done, and requeued when its worker dies: every task is
# idempotent, so running one twice is safe, and losing one is not.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis redelivers a task not acknowledged within this many seconds: longer than any job runs.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = TIME_ZONE
# Exactly one `celery -A mailportal beat` runs; several workers share the queue. Each job
# is hourly or daily and works in bounded batches; a run that finds nothing costs one query.
CELERY_BEAT_SCHEDULE = {
    "block-inactive-access": {
        "task": "mailaccess.tasks.block_inactive_access",
        "schedule": crontab(minute="5"),
    },
    "block-idle-access": {
        "task": "mailaccess.tasks.block_idle_access",
        "schedule": crontab(minute="15"),
    },
    "warn-expiring-access": {
        "task": "mailaccess.tasks.warn_expiring_access",
        "schedule": crontab(minute="25"),
    },
    "mark-inactive-mailboxes": {
        "task": "mailaccess.tasks.mark_inactive_mailboxes",
        "schedule": crontab(hour="3", minute="35"),
    },
    "prune-old-records": {
        "task": "mailaccess.tasks.prune_old_records",
        "schedule": crontab(hour="4", minute="45"),
    },
    "send-pending-notices": {
        "task": "mailaccess.tasks.send_pending_notices",
        "schedule": crontab(minute="*/10"),
    },
}

# Jobs. A mailbox nobody signed in to on the web for this many months becomes inactive (the
# provider's published figure is nine); 0 turns the job off where another system owns the status.
MAILBOX_INACTIVE_AFTER_MONTHS = envint("MAILBOX_INACTIVE_AFTER_MONTHS", 9)
# Audit rows and notices older than these are deleted.
AUDIT_RETENTION_DAYS = envint("AUDIT_RETENTION_DAYS", 730)
NOTICE_RETENTION_DAYS = envint("NOTICE_RETENTION_DAYS", 365)
# Rows a job changes in one transaction: big enough to amortise the round trips, small enough
# that its row locks are held for well under a second.
JOB_BATCH_SIZE = envint("JOB_BATCH_SIZE", 1000)
# Where the portal is, for the links in notices e-mailed to users.
PORTAL_URL = os.environ.get("PORTAL_URL", "http://127.0.0.1:8000").rstrip("/")
