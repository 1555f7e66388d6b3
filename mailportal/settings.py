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

from common.redis_urls import is_cluster_url

BASE_DIR = Path(__file__).resolve().parent.parent


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def envbool(name: str, default: bool) -> bool:
    """A yes/no setting. A value it does not know is an error, not "off": a typo such as
    ``SECURE_COOKIES=ture`` must stop the start, not quietly send cookies over plain HTTP."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is neither on (1, true, yes, on) nor off (0, false, no, off)."
    )


def env_secret(name: str, default: str = "") -> str:
    """A secret from ``NAME`` or from the file ``NAME_FILE`` names, never both.

    Files are how container secrets (/run/secrets/...) and systemd credentials
    (``LoadCredential=``) hand a secret over without putting it in the environment, which
    every child process inherits and ``/proc/<pid>/environ`` shows. A relative path is read
    from ``$CREDENTIALS_DIRECTORY``, where systemd puts the credentials, so a unit can say
    ``Environment=SECRET_KEY_FILE=secret_key``. One trailing newline (what ``echo`` and
    editors add) is not part of the secret.
    """
    value = os.environ.get(name, "")
    path_text = os.environ.get(f"{name}_FILE", "")
    if not path_text:
        return value or default
    if value:
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    path = Path(path_text)
    if not path.is_absolute():
        credentials = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not credentials:
            raise ImproperlyConfigured(
                f"{name}_FILE={path_text} is a relative path, which is read from "
                "$CREDENTIALS_DIRECTORY (systemd's LoadCredential=), and that is not set."
            )
        path = Path(credentials) / path
    try:
        secret = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        # The error names the file and why, never its contents.
        raise ImproperlyConfigured(
            f"{name}_FILE: cannot read {path} ({type(error).__name__})."
        ) from error
    secret = secret.removesuffix("\r\n") if secret.endswith("\r\n") else secret.removesuffix("\n")
    if not secret:
        raise ImproperlyConfigured(f"{name}_FILE: {path} is empty.")
    return secret


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envsecret(name: str) -> str:
    """NAME, or the contents of the file NAME_FILE names (a systemd credential, a mounted
    secret), so the secret need not sit in an environment file."""
    path = os.environ.get(f"{name}_FILE", "")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, "")


DEBUG = envbool("DEBUG", False)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off (see .env.example). "
            "For local development run `make run`, which sets DEBUG=1."
        )
    # Only ever used on a developer's machine: DEBUG is on.
    SECRET_KEY = "development-only-insecure-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")

INSTALLED_APPS = [
    # The admin with the site's own sign-in and a required second factor (mailportal/admin.py).
    "mailportal.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "accounts",
    "audit",
    "mailaccess",
]

MIDDLEWARE = [
    # /healthz, /readyz and /metrics answer before the HTTPS redirect and the host check.
    "common.health.health_middleware",
    "django.middleware.security.SecurityMiddleware",
    "mailportal.middleware.content_security_policy_middleware",
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
# URLs with a password inside may come from files too (DATABASE_URL_FILE, REDIS_URL_FILE, ...).
_database_url = env_secret("DATABASE_URL")
DATABASES = {
    "default": dj_database_url.parse(
        _database_url or f"sqlite:///{VAR_DIR / 'mailportal.sqlite3'}",
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if not _database_url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
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

# One Redis (redis://, rediss://, unix://) or a Redis Cluster (redis+cluster://host:port,...,
# rediss+cluster://): common/redis_urls.py reads both forms, for the policy servers too.
REDIS_URL = env_secret("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "common.cache.RedisClusterCache"
            if is_cluster_url(REDIS_URL)
            else "django.core.cache.backends.redis.RedisCache",
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

# Latvian first; the provider serves all five languages.
LANGUAGE_CODE = "lv"
LANGUAGES = [
    ("lv", _("Latvian")),
    ("en", _("English")),
    ("ru", _("Russian")),
    ("lt", _("Lithuanian")),
    ("et", _("Estonian")),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
USE_TZ = True
TIME_ZONE = os.environ.get("TIME_ZONE", "Europe/Riga")
# Numeric dates and a 24-hour clock in every language: see mailportal/formats/__init__.py.
FORMAT_MODULE_PATH = ["mailportal.formats"]

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

# The settings panel's own address, e.g. https://settings.inbox.lv: links in documents that
# mail programs fetch from other hosts (autoconfig.<domain>) and the links in e-mailed notices
# point there. Production must set it; `make run` serves on 127.0.0.1:8000.
PORTAL_URL = os.environ.get("PORTAL_URL", "http://127.0.0.1:8000" if DEBUG else "").rstrip("/")
# How long the Apple profile with the new password inside can be downloaded (once).
APPLE_PROFILE_PASSWORD_MINUTES = envint("APPLE_PROFILE_PASSWORD_MINUTES", 10)
# Live mail-program passwords a mailbox may hold (one per device). Ten covers a phone, a
# tablet, two computers and an old desktop with room to spare; beyond it, a list nobody
# reviews is where a forgotten, leaked password hides. The first password counts too.
APP_PASSWORDS_PER_MAILBOX = envint("APP_PASSWORDS_PER_MAILBOX", 10)

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
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
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
# HTTPS only in production. Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER to the
# header the proxy sets (and strips from clients), e.g. "HTTP_X_FORWARDED_PROTO,https";
# without it every request looks like plain HTTP and the redirect would loop.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# On, like the two above and like .env.example. The directive alone puts nothing in a
# browser's preload list: that takes a submission of the registered domain (inbox.lv), whose
# own apex must send it; the provider's mail web is HTTPS-only anyway. Off would make every
# production `check --deploy` warn (security.W021) unless each operator remembered to opt in.
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", not DEBUG)
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    _header, _sep, _value = os.environ["SECURE_PROXY_SSL_HEADER"].partition(",")
    if not _sep or not _header.strip().startswith("HTTP_") or not _value.strip():
        raise ImproperlyConfigured(
            'SECURE_PROXY_SSL_HEADER must look like "HTTP_X_FORWARDED_PROTO,https".'
        )
    SECURE_PROXY_SSL_HEADER = (_header.strip(), _value.strip())
# Sent by mailportal.middleware on every response. No inline scripts or styles anywhere:
# the QR code is inline SVG markup, which is neither.
CONTENT_SECURITY_POLICY = os.environ.get(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
)

# Sudo mode: switching access on, creating a mail-program password or downloading a profile
# with one needs the web password (or a two-factor code) again after this many seconds.
SUDO_MODE_SECONDS = envint("SUDO_MODE_SECONDS", 600)
# Web sign-in throttling: failed attempts allowed per mailbox address and per client network
# (an IPv4 address or an IPv6 /64) within the window (seconds, counted from the first
# attempt). Counters live in the cache; every attempt is counted before its password is checked.
SIGN_IN_WINDOW_SECONDS = envint("SIGN_IN_WINDOW_SECONDS", 900)
SIGN_IN_FAILURES_PER_MAILBOX = envint("SIGN_IN_FAILURES_PER_MAILBOX", 10)
SIGN_IN_FAILURES_PER_IP = envint("SIGN_IN_FAILURES_PER_IP", 30)
# A browser the owner has signed in from carries a device cookie for that mailbox (this many
# days): its attempts count only against its own limit, so failures from elsewhere never lock
# the owner out there (accounts/throttling.py).
SIGN_IN_FAILURES_PER_DEVICE = envint("SIGN_IN_FAILURES_PER_DEVICE", 10)
SIGN_IN_DEVICE_COOKIE_DAYS = envint("SIGN_IN_DEVICE_COOKIE_DAYS", 365)
# How long the second sign-in step (the two-factor code) may take after the password.
SIGN_IN_CODE_SECONDS = envint("SIGN_IN_CODE_SECONDS", 300)
# Shown in authenticator apps next to the mailbox address.
OTP_TOTP_ISSUER = os.environ.get("OTP_TOTP_ISSUER", "Inbox")
# Support staff may remove a lost authenticator in the admin, but never see its key or QR code.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# One key=value line per decision or action, never a secret (common/logging.py).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"kv": {"()": "common.logging.KeyValueFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "kv"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# The mail-server side (auth policy, SMTP policy daemon): its counters and cached state live
# in Redis. Seconds, not more: Dovecot and Postfix wait on every answer.
MAILSERVER_REDIS_URL = env_secret("MAILSERVER_REDIS_URL", REDIS_URL or "redis://127.0.0.1:6379/0")
MAILSERVER_REDIS_TIMEOUT = float(os.environ.get("MAILSERVER_REDIS_TIMEOUT", "0.5"))
# Their database calls (a cache miss, a last-use write, a block): an answer waits at most this
# many seconds for one, then is given as when the database is down (a 503 for the auth policy,
# SMTP_POLICY_ON_REDIS_ERROR for Postfix). Well inside Dovecot's 2 s and the daemon's request
# timeout, so the fallback is the policy's own answer, not the mail server's timeout.
MAILSERVER_DATABASE_WAIT = float(os.environ.get("MAILSERVER_DATABASE_WAIT", "0.5"))
# Whole seconds a policy server's database thread may be held by one call: connect_timeout
# (libpq's minimum is 2), tcp_user_timeout and statement_timeout of those threads' connections
# only (mailaccess/mailserver/database_threads.py).
MAILSERVER_DATABASE_TIMEOUT = max(2, envint("MAILSERVER_DATABASE_TIMEOUT", 2))

# The Dovecot auth-policy endpoint (manage.py auth_policy_server). Dovecot sends this key in
# X-API-Key (auth_policy_server_api_header); while it is empty every request gets a 401.
AUTH_POLICY_API_KEY = env_secret("AUTH_POLICY_API_KEY")
# "No checks more often than every five minutes" (the help page). What a check is: see
# mailaccess/mailserver/auth_policy.py.
AUTH_POLICY_CHECK_INTERVAL = envint("AUTH_POLICY_CHECK_INTERVAL", 300)
# Checks one program (one device password, and its IMAP ID where it sends one) may make ahead
# of that pace: a person pressing "Get mail" right after an automatic check. A program set to
# check every minute is refused from its second early check on, told when to come back.
AUTH_POLICY_PROGRAM_CHECK_BURST = envint("AUTH_POLICY_PROGRAM_CHECK_BURST", 2)
# The same for a client network, when the request names no password (a Dovecot without
# deploy/'s password_key attribute): the programs behind it cannot be told apart and share
# these, so start-up, waking from sleep and several programs need more.
AUTH_POLICY_CHECK_BURST = envint("AUTH_POLICY_CHECK_BURST", 6)
# Successful logins of one program within this many seconds of the first are one check:
# Thunderbird opens up to 5 connections at once, Outlook a few in a row, slowly on a phone.
AUTH_POLICY_CHECK_WINDOW = envint("AUTH_POLICY_CHECK_WINDOW", 60)
# Twice Thunderbird's 5 cached connections; beyond that a burst counts as another check.
AUTH_POLICY_CONNECTIONS_PER_CHECK = envint("AUTH_POLICY_CONNECTIONS_PER_CHECK", 10)
# A program at most this many seconds early is delayed (it then gets in) rather than refused.
# Dovecot's own penalty for failed logins grows to 15 s, which clients already put up with.
AUTH_POLICY_MAX_DELAY = envint("AUTH_POLICY_MAX_DELAY", 15)
# Successful IMAP/POP3 connections an hour past which a program is "faulty" and access is
# blocked. Three devices, each checking every five minutes with five connections, make 180;
# a program reconnecting in a loop (one every few seconds: 1,000 and more) crosses 300 in
# minutes. SMTP logins are sendings, limited by the SMTP policy, and are not counted here.
AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR = envint("AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR", 300)
# Distinct wrong passwords within the window that lock a mailbox out of logins from networks
# it does not know. The same wrong password again (a program with an ended password) counts
# once; a person mistypes a few times. App passwords carry 99 bits, so this guards the servers'
# time, and the web password (which never works here) against stuffing lists.
AUTH_POLICY_MAILBOX_FAILURES = envint("AUTH_POLICY_MAILBOX_FAILURES", 10)
# Distinct (login, wrong password) pairs from one client network (an IPv6 /64) within the
# window that lock that network out of every mailbox it has not logged in to lately. Higher
# than per mailbox: an office or mobile carrier NAT puts many people behind one address.
AUTH_POLICY_IP_FAILURES = envint("AUTH_POLICY_IP_FAILURES", 30)
# Seconds each failed login counts for; a lock ends once enough of them have aged out.
AUTH_POLICY_FAILURE_WINDOW = envint("AUTH_POLICY_FAILURE_WINDOW", 900)
# A network that logged in successfully within this many days is the owner's, exempt from locks.
AUTH_POLICY_KNOWN_IP_DAYS = envint("AUTH_POLICY_KNOWN_IP_DAYS", 30)
# Last use is written to the database at most this often per password, protocol and network.
AUTH_POLICY_USE_RECORD_INTERVAL = envint("AUTH_POLICY_USE_RECORD_INTERVAL", 60)
# Seconds the cached database state lives; access changes (and a new language or plan)
# invalidate it at once anyway, so this only bounds what no change announces. It must be well
# over the five minutes at which programs check: at 300 s nearly every periodic check found
# its state expired and paid a database query (benchmarks/README.md, issue 23). About 300
# bytes of Redis per mailbox that checked within the hour.
AUTH_POLICY_STATE_TTL = envint("AUTH_POLICY_STATE_TTL", 3600)

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
# Distinct messages of the last hour whose bounces (to their signed envelope sender, see
# mailaccess/mailserver/bounce_tags.py) mark the mailbox that sent them as compromised.
SMTP_POLICY_BOUNCE_LIMIT = envint("SMTP_POLICY_BOUNCE_LIMIT", 30)
# Where the daemon serves Postfix's sender_canonical_maps (socketmap) that tags the envelope
# senders of submitted mail: host:port or unix:/path, comma separated; empty: not served.
SMTP_POLICY_TAG_LISTEN = envlist("SMTP_POLICY_TAG_LISTEN", "")
# The n-th hourly-limit block within 24 hours blocks as compromised instead.
SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED = envint(
    "SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED", 3
)

# Ending a mailbox's open IMAP and POP3 sessions when it is blocked, switched off or one of
# its passwords ends (mailaccess/sessions.py): Dovecot's doveadm HTTP API, one URL per Dovecot
# server, comma separated (http://127.0.0.1:8102/doveadm/v1), and its doveadm_api_key (or
# DOVEADM_API_KEY_FILE). Empty: sessions stay open until the program logs in again.
DOVEADM_API_URL = envlist("DOVEADM_API_URL", "")
DOVEADM_API_KEY = envsecret("DOVEADM_API_KEY")
# Seconds for one call. Short: without a broker the call runs inside the web request.
DOVEADM_API_TIMEOUT = float(os.environ.get("DOVEADM_API_TIMEOUT", "2"))

# Celery: Redis is the broker (REDIS_URL, or CELERY_BROKER_URL to keep it apart). Without a
# broker (the embedded default of `make run`) tasks run eagerly in the process that queues them:
# a block notice is e-mailed synchronously once the block commits, and the periodic jobs run
# through `manage.py run_job` instead of beat. Nothing then needs a worker.
CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL") or REDIS_URL
if is_cluster_url(CELERY_BROKER_URL):
    # Celery's Redis transport (kombu) speaks to one Redis: its queues are lists and its
    # unacknowledged tasks a sorted set and a hash, moved together by multi-key commands that
    # a cluster refuses across slots, and it has no cluster client at all.
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL cannot be a Redis Cluster (redis+cluster://): Celery's broker must "
        "be one plain Redis (redis://, rediss://) or Sentinel (sentinel://). "
        "With REDIS_URL naming a cluster, set CELERY_BROKER_URL to a separate Redis."
    )
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
    "lift-due-sending-limits": {
        "task": "mailaccess.tasks.lift_due_sending_limits",
        "schedule": crontab(minute="45"),
    },
    "prune-old-records": {
        "task": "mailaccess.tasks.prune_old_records",
        "schedule": crontab(hour="4", minute="45"),
    },
    "send-pending-notices": {
        "task": "mailaccess.tasks.send_pending_notices",
        "schedule": crontab(minute="*/10"),
    },
    # "A new mail program signed in" goes out within a minute or so (mailaccess/activity.py).
    "compact-activity": {
        "task": "mailaccess.tasks.compact_activity",
        "schedule": 60.0,
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

# Operations (common/health.py, common/metrics.py). Readiness gives each of PostgreSQL
# and Redis this many seconds: a load balancer's probe must finish well inside its interval.
HEALTH_CHECK_TIMEOUT = float(os.environ.get("HEALTH_CHECK_TIMEOUT", "1.0"))
# Prometheus sends it as "Authorization: Bearer <token>" to every /metrics; empty: no scraping.
METRICS_TOKEN = env_secret("METRICS_TOKEN")
# host:port where `smtp_policy_server` answers /healthz, /readyz and /metrics over HTTP, and
# where a Celery worker serves /metrics (each process of a host needs its own port).
SMTP_POLICY_HEALTH_LISTEN = os.environ.get("SMTP_POLICY_HEALTH_LISTEN", "")
CELERY_METRICS_LISTEN = os.environ.get("CELERY_METRICS_LISTEN", "")
