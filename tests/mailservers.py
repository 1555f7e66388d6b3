"""Real Dovecot and Postfix for end-to-end tests, started from the deploy/ templates.

Use the fixtures by importing them into a test module (``from tests.mailservers import ...``)
or a conftest. ``mail_servers_factory(policy=..., smtp_policy=...)`` renders deploy/dovecot
and deploy/postfix with deploy/render.py into a temporary folder and starts both on loopback
ports:

- Dovecot: IMAP and POP3 over implicit TLS, its SQL passdb on the test database's view, and
  (when given) the auth policy served for real by ``policy_server``;
- Postfix: submission on 587-style STARTTLS and 465-style implicit TLS, SMTP AUTH through
  Dovecot's socket in its queue folder, ``default_transport = discard:`` so no test mail leaves,
  and (when given) the SMTP policy daemon ``smtp_policy_daemon``, a real
  ``manage.py smtp_policy_server``, asked at DATA and END-OF-MESSAGE.

Both run as root (Postfix's master must; Dovecot drops to ``dovenull``/``dovecot`` for its
login and internal processes), so the fixtures skip when not root. Everything they start is
stopped in teardown by its own process id. Ports come from ``E2E_PORT_RANGE`` (default
20000-20499): each helper and CI may give its own range.

Later issues extend this: ``start_mail_servers(extra_postfix=..., extra_dovecot=...)`` take
more configuration lines.
"""

from __future__ import annotations

import ast
import contextlib
import imaplib
import importlib.util
import os
import poplib
import pwd
import re
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
START_TIMEOUT = 30.0
MAIL_UID = 65534  # nobody: a uid at least first_valid_uid that owns the test mail folder


def require_e2e_binaries() -> None:
    missing = [name for name in ("dovecot", "postfix", "openssl") if shutil.which(name) is None]
    if missing:
        pytest.skip(
            f"!!! END-TO-END MAIL TEST SKIPPED: {', '.join(missing)} not installed "
            "(.ci/run installs dovecot-core dovecot-imapd dovecot-pop3d dovecot-pgsql postfix)"
        )
    if os.geteuid() != 0:
        pytest.skip("!!! END-TO-END MAIL TEST SKIPPED: Postfix's master must run as root")
    for user in ("dovenull", "dovecot", "postfix"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip(f"!!! END-TO-END MAIL TEST SKIPPED: system user {user} is missing")


def _render_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- ports -----------------------------------------------------------------------------------

_taken: set[int] = set()


def free_port() -> int:
    """A port of E2E_PORT_RANGE that nothing listens on and this session has not handed out."""
    return free_ports(1)[0]


def free_ports(count: int, spec: str | None = None) -> list[int]:
    """``count`` ports of ``spec`` ("low-high", default E2E_PORT_RANGE) that nothing listens on
    and this session has not handed out.

    The search starts at a random place in the range, so two test sessions started at the
    same moment (two developers' ``make test`` on one machine) rarely pick the same ports;
    ``check_certificate`` catches it when they do.
    """
    spec = spec or os.environ.get("E2E_PORT_RANGE", "20000-20499")
    low_text, _, high_text = spec.partition("-")
    low, high = int(low_text), int(high_text)
    start = secrets.randbelow(high - low + 1)
    ports: list[int] = []
    for offset in range(high - low + 1):
        port = low + (start + offset) % (high - low + 1)
        if port in _taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"not {count} free ports left in {spec}")


def check_certificate(port: int, tls: TlsFiles) -> None:
    """Fail loudly when the port is served by someone else's server, not ours."""
    served = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    ours = tls.cert.read_text()
    if ssl.PEM_cert_to_DER_cert(served) != ssl.PEM_cert_to_DER_cert(ours):
        raise RuntimeError(
            f"port {port} answers with another certificate: another test session's server "
            "took it. Give each session its own E2E_PORT_RANGE."
        )


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Callable[[], str]) -> None:
    from tests.conftest import wait_until

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening:\n{log()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    wait_until(
        listening,
        START_TIMEOUT,
        failure=lambda: f"nothing listens on port {port} after {START_TIMEOUT} s:\n{log()}",
    )


def start_command(
    command: str, port: int, env: dict[str, str], log: Path, *options: str
) -> subprocess.Popen[bytes]:
    """``manage.py COMMAND --listen 127.0.0.1:PORT OPTIONS`` as production starts it, its
    output in ``log``; returns once it listens (stop it with ``stop_process``)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", command, "--listen", f"127.0.0.1:{port}", *options],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, lambda: tail(log))
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop a server started with ``start_new_session=True``, and every process it forked.

    Dovecot's master returns before its auth workers have closed their PostgreSQL sessions;
    the test database cannot be dropped while one is open. So the whole process group (the
    session this fixture created, by its id) gets SIGTERM and is waited for, then SIGKILL.
    """
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait(5)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the throwaway certificate: real verification."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TlsFiles]:
    require_e2e_binaries()
    # Outside pytest's basetemp: other sessions on the machine prune old basetemps, and
    # Postfix reads the key again for every connection.
    folder = Path(tempfile.mkdtemp(prefix="mailportal-e2e-tls-"))
    try:
        yield _make_certificate(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _make_certificate(folder: Path) -> TlsFiles:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return TlsFiles(cert, key)


# --- the policy endpoint ---------------------------------------------------------------------


@dataclass
class PolicyServer:
    url: str
    api_key: str
    redis_url: str
    log: Path


def database_environment() -> dict[str, str]:
    """The test database, as a DATABASE_URL for a subprocess and a libpq string for Dovecot."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.skip("the mail servers read the passdb view, which exists on PostgreSQL only")
    host, port = db["HOST"] or "127.0.0.1", str(db["PORT"] or 5432)
    user, password, name = db["USER"], db["PASSWORD"], db["NAME"]
    return {
        "DATABASE_URL": f"postgres://{user}:{password}@{host}:{port}/{name}",
        "DOVECOT_SQL_CONNECT": (
            f"host={host} port={port} dbname={name} user={user} password={password}"
        ),
    }


def policy_module_missing() -> str | None:
    if importlib.util.find_spec("mailaccess.mailserver.auth_policy_http") is None:
        return "auth_policy_http.py (the auth-policy server) does not exist yet"
    return None


@pytest.fixture(scope="session")
def policy_server(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyServer]:
    """``manage.py auth_policy_server``, as in production, on the test database."""
    missing = policy_module_missing()
    if missing:
        pytest.skip(missing)
    from tests.conftest import redis_url_for_tests

    redis_url = redis_url_for_tests()
    port = free_port()
    api_key = secrets.token_urlsafe(24)
    log = tmp_path_factory.mktemp("policy") / "auth-policy.log"
    env = {
        **os.environ,
        **database_environment(),
        "MAILSERVER_REDIS_URL": redis_url,
        "AUTH_POLICY_API_KEY": api_key,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "e2e-only-secret-key-never-used-elsewhere"),
        "DEBUG": "0",
    }
    process = start_command("auth_policy_server", port, env, log)
    try:
        yield PolicyServer(f"http://127.0.0.1:{port}/auth-policy", api_key, redis_url, log)
    finally:
        stop_process(process)


# --- the SMTP policy daemon ------------------------------------------------------------------


@dataclass
class SmtpPolicyDaemon:
    service: str  # what main.cf's check_policy_service is given: inet:127.0.0.1:PORT
    redis_url: str
    log: Path
    # Its socketmap of signed envelope senders (--tag-listen), inet:127.0.0.1:PORT; empty:
    # Postfix tags nothing.
    tag_service: str = ""


@pytest.fixture(scope="session")
def smtp_policy_daemon(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SmtpPolicyDaemon]:
    """``manage.py smtp_policy_server`` as in production, on the test database and Redis.

    The same Redis as the auth policy (``policy_server``): a block the daemon makes must
    reach the state the auth policy caches, or the next SMTP AUTH would still be let in.
    """
    from tests.conftest import redis_url_for_tests

    redis_url = redis_url_for_tests()
    port = free_port()
    tag_port = free_port()
    log = tmp_path_factory.mktemp("smtp-policy") / "daemon.log"
    env = {
        **os.environ,
        **database_environment(),
        "MAILSERVER_REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "e2e-only-secret-key-never-used-elsewhere"),
        "DEBUG": "0",
        # The tests set a plan's limits (the admin's Sending limits) before sending; in
        # production a change reaches the daemon within SMTP_POLICY_CACHE_SECONDS (60 s).
        "SMTP_POLICY_CACHE_SECONDS": "0",
        # A block's notice is e-mailed at once, into this log, instead of to a broker that no
        # worker here reads or to an SMTP server on port 25.
        "CELERY_TASK_ALWAYS_EAGER": "1",
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
    }
    process = start_command(
        "smtp_policy_server", port, env, log, "--tag-listen", f"127.0.0.1:{tag_port}"
    )
    try:
        yield SmtpPolicyDaemon(
            f"inet:127.0.0.1:{port}", redis_url, log, f"inet:127.0.0.1:{tag_port}"
        )
    finally:
        stop_process(process)


# --- Dovecot and Postfix ---------------------------------------------------------------------


@dataclass
class MailServers:
    root: Path
    tls: TlsFiles
    imaps_port: int
    pop3s_port: int
    submission_port: int  # STARTTLS, as 587
    submissions_port: int  # implicit TLS, as 465
    policy: PolicyServer | None
    smtp_policy: SmtpPolicyDaemon | None = None
    # Port 25 of the MX (deploy/postfix/mx-inbound.*.cf): only with an SMTP policy daemon.
    mx_port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Dovecot's doveadm HTTP API (kick): what the portal's DOVEADM_API_URL/KEY name.
    doveadm_port: int = 0
    doveadm_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def doveadm_url(self) -> str:
        return f"http://127.0.0.1:{self.doveadm_port}/doveadm/v1"

    @property
    def dovecot_log(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def postfix_log(self) -> Path:
        return self.root / "postfix.log"

    def logs(self) -> str:
        text = (
            f"--- dovecot.log\n{tail(self.dovecot_log)}\n--- postfix.log\n{tail(self.postfix_log)}"
        )
        if self.policy:
            text += f"\n--- auth policy\n{tail(self.policy.log)}"
        if self.smtp_policy:
            text += f"\n--- SMTP policy daemon\n{tail(self.smtp_policy.log)}"
        return text


def _values(servers: MailServers, sql_connect: str) -> dict[str, str]:
    root = servers.root
    policy = servers.policy
    return {
        "MAIL_HOSTNAME": "localhost.localdomain",
        "MAIL_LISTEN": "127.0.0.1",
        "TLS_CERT": str(servers.tls.cert),
        "TLS_KEY": str(servers.tls.key),
        "DOVECOT_CONF_DIR": str(root / "dovecot"),
        "DOVECOT_INSTANCE": f"e2e-{root.name}",
        "DOVECOT_BASE_DIR": str(root / "dovecot-run"),
        "DOVECOT_STATE_DIR": str(root / "dovecot-state"),
        "DOVECOT_LOG_PATH": str(servers.dovecot_log),
        "IMAPS_PORT": str(servers.imaps_port),
        "POP3S_PORT": str(servers.pop3s_port),
        "DOVECOT_SQL_CONNECT": sql_connect,
        "MAIL_UID": str(MAIL_UID),
        "MAIL_GID": str(MAIL_UID),
        "MAIL_HOME": str(root / "mail"),
        # Without a policy the URL stays empty, which switches Dovecot's auth policy off.
        "AUTH_POLICY_URL": policy.url if policy else "",
        "AUTH_POLICY_API_KEY": policy.api_key if policy else "unused",
        "AUTH_POLICY_HASH_NONCE": secrets.token_hex(16),
        "DOVEADM_HTTP_ADDRESS": "127.0.0.1",
        "DOVEADM_HTTP_PORT": str(servers.doveadm_port),
        "DOVEADM_API_KEY": servers.doveadm_api_key,
        "POSTFIX_QUEUE_DIR": str(root / "postfix-queue"),
        "POSTFIX_DATA_DIR": str(root / "postfix-data"),
        "POSTFIX_INET_INTERFACES": "127.0.0.1",
        "POSTFIX_MAILLOG_FILE": "/dev/stdout",
        "POSTFIX_DEFAULT_TRANSPORT": "discard:",
        "POSTFIX_RELAYHOST": "",
        "SUBMISSION_SERVICE": f"127.0.0.1:{servers.submission_port}",
        "SUBMISSIONS_SERVICE": f"127.0.0.1:{servers.submissions_port}",
        # Without a daemon the check is taken out (NO_SMTP_POLICY): this address is never
        # asked, it only fills the placeholder.
        "SMTP_POLICY_SERVICE": (
            servers.smtp_policy.service if servers.smtp_policy else "inet:127.0.0.1:9"
        ),
        # Likewise: without a tag service mailportal_sender_tag_maps is emptied.
        "SENDER_TAG_SERVICE": (
            servers.smtp_policy.tag_service
            if servers.smtp_policy and servers.smtp_policy.tag_service
            else "inet:127.0.0.1:9"
        ),
        "MX_SERVICE": f"127.0.0.1:{servers.mx_port or 9}",
    }


# Test-only differences from production, kept out of the templates: the auth-failure delay
# (2 s per wrong password) only slows the tests down, and verbose auth logging explains a
# failing test in dovecot.log.
DOVECOT_TEST_SETTINGS = """\
auth_failure_delay = 0
auth_verbose = yes
"""

# Tests that do not look at sending limits run Postfix without the SMTP policy daemon: with
# the check left in, every message would wait for the missing daemon (and its retry), then
# pass by smtpd_policy_service_default_action anyway.
NO_SMTP_POLICY = {
    "submission_data_restrictions": "",
    "submission_end_of_data_restrictions": "",
    "mailportal_sender_tag_maps": "",
}

# The MX of the tests, on top of deploy/postfix/mx-inbound.*.cf: a stranger may connect
# without TLS and without logging in (as on any MX), and it accepts mail for any address
# (the provider's MX would refuse unknown recipients and relay for nobody; here every 127.0.0.x
# client may send to any address, and default_transport discards it all).
# Its own host name: Postfix's SMTP client, handing it a bounce, would otherwise see its own
# name in the greeting and refuse to deliver "to itself". No reverse DNS of the strangers'
# 127.0.0.x addresses: the test machine may have no resolver to answer it.
MX_TEST_OPTIONS = """\
  -o myhostname=mx.e2e.test
  -o smtpd_peername_lookup=no
  -o smtpd_tls_security_level=may
  -o smtpd_client_restrictions=
  -o mynetworks=127.0.0.0/8
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=check_recipient_access,regexp:$config_directory/e2e_nowhere.regexp
  -o smtpd_sender_restrictions=
"""


def start_mail_servers(
    root: Path,
    tls: TlsFiles,
    policy: PolicyServer | None,
    *,
    smtp_policy: SmtpPolicyDaemon | None = None,
    extra_dovecot: str = "",
    extra_postfix: dict[str, str] | None = None,
) -> MailServers:
    servers = MailServers(
        root=root,
        tls=tls,
        imaps_port=free_port(),
        pop3s_port=free_port(),
        submission_port=free_port(),
        submissions_port=free_port(),
        policy=policy,
        smtp_policy=smtp_policy,
        doveadm_port=free_port(),
        mx_port=free_port() if smtp_policy else 0,
    )
    root.chmod(0o755)
    _render_module().render(_values(servers, database_environment()["DOVECOT_SQL_CONNECT"]), root)
    (root / "dovecot" / "local.conf").write_text(DOVECOT_TEST_SETTINGS + extra_dovecot)
    mail = root / "mail"
    mail.mkdir()
    os.chown(mail, MAIL_UID, MAIL_UID)
    postfix_dir = root / "postfix"
    data = root / "postfix-data"
    data.mkdir()
    postfix_user = pwd.getpwnam("postfix")
    os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
    if smtp_policy is not None:
        # The MX that receives bounces on "port 25", asking the same daemon after DATA.
        with (postfix_dir / "main.cf").open("a") as main_cf:
            main_cf.write((postfix_dir / "mx-inbound.main.cf").read_text())
        with (postfix_dir / "master.cf").open("a") as master_cf:
            master_cf.write((postfix_dir / "mx-inbound.master.cf").read_text() + MX_TEST_OPTIONS)
        # The MX also plays the Internet for a spam run: mail to nowhere.e2e.test goes to it
        # and is refused at RCPT, so Postfix writes a bounce ("Mail Delivery System") to the
        # message's envelope sender; bounces to our tagged envelope senders go to the MX, as
        # they would come back to inbox.lv.
        (postfix_dir / "e2e_transport.regexp").write_text(
            f"/@nowhere\\.e2e\\.test$/ smtp:[127.0.0.1]:{servers.mx_port}\n"
            f"/^prvs=/ smtp:[127.0.0.1]:{servers.mx_port}\n"
        )
        (postfix_dir / "e2e_nowhere.regexp").write_text(
            "/@nowhere\\.e2e\\.test$/ REJECT no such mailbox\n"
        )
        extra_postfix = {
            "transport_maps": "regexp:$config_directory/e2e_transport.regexp",
            **(extra_postfix or {}),
        }
        if not smtp_policy.tag_service:
            extra_postfix = {"mailportal_sender_tag_maps": "", **(extra_postfix or {})}
    if smtp_policy is None:
        extra_postfix = {**NO_SMTP_POLICY, **(extra_postfix or {})}
        # Now unused: Postfix would warn about it in every log.
        subprocess.run(
            ["postconf", "-c", str(postfix_dir), "-X", "mailportal_policy_service"], check=True
        )
    if extra_postfix:
        postconf = [f"{name}={value}" for name, value in extra_postfix.items()]
        subprocess.run(["postconf", "-c", str(postfix_dir), "-e", *postconf], check=True)
    (root / "postfix-queue").mkdir()
    # Creates the queue folders (among them private/, where Dovecot puts the SASL socket).
    subprocess.run(
        ["postfix", "-c", str(postfix_dir), "post-install", "create-missing"],
        check=True,
        capture_output=True,
    )
    try:
        with servers.dovecot_log.open("ab") as out:
            dovecot = subprocess.Popen(
                ["dovecot", "-F", "-c", str(root / "dovecot" / "dovecot.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        servers.processes.append(dovecot)
        wait_for_port(servers.imaps_port, dovecot, servers.logs)
        wait_for_port(servers.pop3s_port, dovecot, servers.logs)
        wait_for_port(servers.doveadm_port, dovecot, servers.logs)
        check_certificate(servers.imaps_port, tls)
        check_certificate(servers.pop3s_port, tls)
        with servers.postfix_log.open("ab") as out:
            postfix = subprocess.Popen(
                ["postfix", "-c", str(postfix_dir), "start-fg"],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        servers.processes.append(postfix)
        wait_for_port(servers.submission_port, postfix, servers.logs)
        wait_for_port(servers.submissions_port, postfix, servers.logs)
        check_certificate(servers.submissions_port, tls)
        if servers.mx_port:
            wait_for_port(servers.mx_port, postfix, servers.logs)
    except BaseException:
        stop_mail_servers(servers)
        raise
    return servers


def stop_postfix(servers: MailServers) -> None:
    """Postfix's master leaves the process group it was started in: ask it to stop, then wait
    for the pid it wrote to its queue folder to go away."""
    pid_file = servers.root / "postfix-queue" / "pid" / "master.pid"
    try:
        master = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    subprocess.run(["postfix", "-c", str(servers.root / "postfix"), "stop"], capture_output=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(master, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(master, signal.SIGKILL)


def stop_mail_servers(servers: MailServers) -> None:
    stop_postfix(servers)
    for process in reversed(servers.processes):
        stop_process(process)
    servers.processes.clear()


@pytest.fixture(scope="session")
def mail_servers_factory(
    django_db_setup: None, tls_files: TlsFiles
) -> Iterator[Callable[..., MailServers]]:
    """``factory(policy=None, smtp_policy=None)``: Dovecot and Postfix, one pair per distinct
    auth policy and SMTP policy daemon, kept for the session (they hold no state of their own:
    everything is in the database and Redis)."""
    running: dict[tuple[str, str], MailServers] = {}

    def factory(
        policy: PolicyServer | None = None, smtp_policy: SmtpPolicyDaemon | None = None
    ) -> MailServers:
        key = (policy.url if policy else "", smtp_policy.service if smtp_policy else "")
        if key not in running:
            # Not under pytest's 0700 folder: Postfix's and Dovecot's unprivileged processes
            # must reach their files inside.
            root = Path(tempfile.mkdtemp(prefix="mailportal-e2e-"))
            try:
                running[key] = start_mail_servers(root, tls_files, policy, smtp_policy=smtp_policy)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
        return running[key]

    try:
        yield factory
    finally:
        for servers in running.values():
            stop_mail_servers(servers)
            shutil.rmtree(servers.root, ignore_errors=True)


def reached_by_actions(servers: MailServers, settings: Any) -> MailServers:
    """Point this process's DOVEADM_API_URL/KEY (pytest-django's ``settings``) at the servers'
    doveadm API, as production lists every Dovecot: the actions then flush the mailbox's
    auth-cache entries after their commit (Dovecot's auth cache is on, deploy/dovecot) and kick
    its sessions. Without it a test that switches access off after a login would still get in
    from the cache whenever the auth policy does not refuse."""
    settings.DOVEADM_API_URL = [servers.doveadm_url]
    settings.DOVEADM_API_KEY = servers.doveadm_api_key
    return servers


@pytest.fixture
def policy_redis(policy_server: PolicyServer, settings: Any) -> Iterator[None]:
    """Point this process's access-change hooks at the policy server's Redis, so switching
    access in the panel invalidates the state the served policy caches."""
    from mailaccess import counters

    settings.MAILSERVER_REDIS_URL = policy_server.redis_url
    counters.sync_client.cache_clear()
    yield
    counters.sync_client.cache_clear()


@pytest.fixture
def policy_servers(
    transactional_db: None,
    policy_server: PolicyServer,
    policy_redis: None,
    mail_servers_factory: Callable[..., MailServers],
    settings: Any,
) -> MailServers:
    """Dovecot and Postfix that ask the served auth policy, reached by the access actions."""
    return reached_by_actions(mail_servers_factory(policy=policy_server), settings)


def smtp_error_text(error: smtplib.SMTPResponseException) -> str:
    """The server's reply text of a refusal (smtplib gives bytes; its stubs allow str too)."""
    reply = error.smtp_error
    return reply.decode() if isinstance(reply, bytes) else reply


# --- clients that pick their source address --------------------------------------------------
# Dovecot delays repeated failed logins from one IP (up to 15 s) and the auth policy counts
# failures per network: a client that fails on purpose binds its own 127.0.0.x.


class IMAP4SSLFrom(imaplib.IMAP4_SSL):
    def __init__(self, host: str, port: int, *, source: str, ssl_context: ssl.SSLContext):
        self._source = source
        super().__init__(host, port, ssl_context=ssl_context, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )
        context: ssl.SSLContext = self.ssl_context
        return context.wrap_socket(sock, server_hostname=self.host)


class POP3SSLFrom(poplib.POP3_SSL):
    def __init__(self, host: str, port: int, *, source: str, context: ssl.SSLContext):
        self._source = source
        self._context = context
        super().__init__(host, port, context=context, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )
        return self._context.wrap_socket(sock, server_hostname=self.host)


def imap_login(
    servers: MailServers, user: str, password: str, source: str = "127.0.0.1"
) -> list[Any]:
    """Log in over IMAPS and list the folders; raises imaplib.IMAP4.error on refusal."""
    with IMAP4SSLFrom(
        "127.0.0.1", servers.imaps_port, source=source, ssl_context=servers.tls.client_context()
    ) as client:
        client.login(user, password)
        status, folders = client.list()
        assert status == "OK"
        client.logout()
    return folders


def pop3_login(
    servers: MailServers, user: str, password: str, source: str = "127.0.0.1"
) -> tuple[int, int]:
    """Log in over POP3S and STAT; raises poplib.error_proto on refusal."""
    client = POP3SSLFrom(
        "127.0.0.1", servers.pop3s_port, source=source, context=servers.tls.client_context()
    )
    try:
        client.user(user)
        client.pass_(password)
        return client.stat()
    finally:
        with contextlib.suppress(OSError, poplib.error_proto):
            client.quit()
        client.close()


@contextlib.contextmanager
def smtp_session(
    servers: MailServers,
    user: str,
    password: str,
    *,
    implicit_tls: bool,
    source: str = "127.0.0.1",
) -> Iterator[smtplib.SMTP]:
    """A mail program's connection on 465 (implicit TLS) or 587 (STARTTLS), after AUTH;
    raises smtplib.SMTPAuthenticationError on refusal."""
    context = servers.tls.client_context()
    client: smtplib.SMTP
    if implicit_tls:
        client = smtplib.SMTP_SSL(
            "127.0.0.1",
            servers.submissions_port,
            context=context,
            timeout=30,
            source_address=(source, 0),
        )
    else:
        client = smtplib.SMTP(
            "127.0.0.1", servers.submission_port, timeout=30, source_address=(source, 0)
        )
    with client:
        client.ehlo("e2e.test")
        if not implicit_tls:
            client.starttls(context=context)
            client.ehlo("e2e.test")
        # AUTH PLAIN only, as mail programs do: smtplib's login() would try LOGIN after a
        # refusal, and a second refusal only waits out the server's failure delay.
        client.user, client.password = user, password
        client.auth("PLAIN", client.auth_plain)
        yield client


def send_message(
    client: smtplib.SMTP, sender: str, subject: str = "e2e", recipients: int = 1
) -> dict[str, tuple[int, bytes]]:
    """One message on an open session; returns the recipients refused (none, normally)."""
    to = [f"someone{number}@example.org" for number in range(recipients)]
    return client.sendmail(
        sender,
        to,
        f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n\r\nHello.\r\n",
    )


def smtp_send(
    servers: MailServers,
    user: str,
    password: str,
    *,
    implicit_tls: bool,
    source: str = "127.0.0.1",
) -> None:
    """AUTH and send one message on 465 (implicit TLS) or 587 (STARTTLS)."""
    with smtp_session(servers, user, password, implicit_tls=implicit_tls, source=source) as client:
        send_message(client, user)


def imap_error_text(error: BaseException) -> str:
    """The server's text from an imaplib error, decoded: LOGIN's error carries the bytes,
    other commands' errors their repr inside a message."""
    if error.args and isinstance(error.args[0], bytes):
        return error.args[0].decode("utf-8", "replace")
    match = re.search(r"\[(b(['\"]).*\2)\]", str(error))
    if match is None:
        return str(error)
    quoted: bytes = ast.literal_eval(match.group(1))
    return quoted.decode("utf-8", "replace")


def curl(
    *args: str, servers: MailServers, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run curl against the servers, trusting only the throwaway certificate."""
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--cacert", str(servers.tls.cert), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        input=input,
    )


@dataclass
class PrivateRedis:
    tls_port: int
    ca_file: Path
    socket_path: Path

    @property
    def tls_url(self) -> str:
        return f"rediss://localhost:{self.tls_port}/3?ssl_ca_certs={self.ca_file}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=3"


@pytest.fixture(name="private_redis")
def private_redis_fixture(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own, reached only over TLS (a certificate made for the test) or
    its unix socket: the ways production may reach Redis that the shared one does not offer."""
    from tests.conftest import redis_url_for_tests

    redis_url_for_tests()  # skips, like every Redis test, where no Redis is wanted
    if not shutil.which("redis-server") or not shutil.which("openssl"):
        pytest.skip("redis-server and openssl are needed to run a private Redis")
    tls = _make_certificate(tmp_path)
    # A unix socket's path has room for about 100 bytes: not under a test's own tmp_path.
    socket_folder = Path(tempfile.mkdtemp(prefix="mp-redis-"))
    redis = PrivateRedis(free_port(), tls.cert, socket_folder / "redis.sock")
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                *("redis-server", "--port", "0", "--bind", "127.0.0.1"),
                *("--tls-port", str(redis.tls_port), "--unixsocket", str(redis.socket_path)),
                *("--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)),
                *("--tls-auth-clients", "no", "--save", "", "--appendonly", "no"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(redis.tls_port, server, lambda: tail(log))
        yield redis
    finally:
        stop_process(server)
        shutil.rmtree(socket_folder, ignore_errors=True)


# Mailboxes of the sending tests (tests/test_sending_limits_e2e.py, test_bounce_floods_e2e.py).
SENDER_WEB_PASSWORD = "e2e-web-password-1"


@pytest.fixture
def new_sender(smtp_policy_daemon: Any) -> Iterator[Callable[..., Any]]:
    """``new_sender(plan)``: a new Latvian mailbox of this test; its counters leave Redis
    after it (every key of the policies is per address)."""
    from accounts.models import Mailbox, Plan
    from tests.conftest import forget_counters

    made: list[str] = []

    def make(plan: Plan) -> Mailbox:
        mailbox = Mailbox.objects.create_user(
            f"e2e-{secrets.token_hex(4)}@inbox.lv", SENDER_WEB_PASSWORD, plan=plan, language="lv"
        )
        made.append(mailbox.address)
        return mailbox

    yield make
    forget_counters(smtp_policy_daemon.redis_url, *made)


def switch_on(mailbox: Any) -> str:
    """The owner switches access on; the mail-program password it shows."""
    from audit.models import Actor
    from mailaccess import actions

    app_password = actions.enable_access(mailbox, actor=Actor.user(mailbox))
    assert app_password is not None
    return app_password
