"""deploy/README.md followed as an operator follows it, so that the README and the tests cannot
drift apart.

The end-to-end test reads the shell blocks of the README's section 4 ("Render and install")
and runs each command as written, changing only what the README tells the operator to edit:
the copied site file's values (a test site's paths, loopback ports, the test database, the
policy servers the fixtures start), and, where a command would write system paths, the
arguments render.py takes for that (its out folder, ``--postfix-dir``, both documented in the
README). ``systemctl restart dovecot postfix`` becomes starting both in the foreground from the
installed files. A command the test does not know fails it: a new README step must be taught
here. Then a real IMAP login and a real SMTP submission go through the product's auth policy
and SMTP policy daemon, and section 5's ``doveadm auth test`` is run as written.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accounts.models import Mailbox, Plan
from mailaccess import activity
from mailaccess.models import ExternalAccess
from mailaccess.sending_limits import sending_panel
from tests.mailservers import (
    DEPLOY,
    REPO,
    MailServers,
    PolicyServer,
    SmtpPolicyDaemon,
    TlsFiles,
    _render_module,
    check_certificate,
    database_environment,
    free_port,
    imap_login,
    require_e2e_binaries,
    smtp_send,
    stop_mail_servers,
    switch_on,
    wait_for_port,
)

README = DEPLOY / "README.md"
RENDER_SECTION = "## 4. Render and install the mail-server configuration"
CHECK_SECTION = "## 5. Check it"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else None]


def shell_commands(text: str) -> list[str]:
    """Every command of the ```sh blocks in ``text``: continuations joined, comments gone."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = shlex.join(shlex.split(line, comments=True))
            if command:
                commands.append(command)
    return commands


def site_values(path: Path) -> dict[str, str]:
    result: dict[str, str] = _render_module().read_site(path)
    return result


# --- what needs no root ------------------------------------------------------------------------


def test_the_readme_creates_the_mail_store_user_with_the_ids_of_the_example_site() -> None:
    commands = shell_commands(section(RENDER_SECTION))
    example = site_values(DEPLOY / "site.env.example")
    groupadd = next(command for command in commands if command.startswith("groupadd"))
    useradd = next(command for command in commands if command.startswith("useradd"))

    assert f"--gid {example['MAIL_GID']} vmail" in groupadd
    assert f"--uid {example['MAIL_UID']} " in useradd
    assert any(
        command.startswith("install -d -o vmail -g vmail") and example["MAIL_HOME"] in command
        for command in commands
    )


def test_dovecot_lets_only_the_mail_stores_uid_and_gid_access_mail(tmp_path: Path) -> None:
    render = _render_module()
    values = render.read_site(DEPLOY / "site.env.example")
    render.render({**values, "MAIL_UID": "110", "MAIL_GID": "117"}, tmp_path)

    conf = (tmp_path / "dovecot" / "dovecot.conf").read_text()
    assert "first_valid_uid = 110\nlast_valid_uid = 110\n" in conf
    assert "first_valid_gid = 117\nlast_valid_gid = 117\n" in conf
    assert "args = uid=110 gid=117 " in conf
    # A name would be compared as a number by first_valid_uid: refused before anything is
    # written.
    for name in ("MAIL_UID", "MAIL_GID"):
        with pytest.raises(render.RenderError, match=f"{name} must be a number"):
            render.render({**values, name: "vmail"}, tmp_path / "named")


def test_the_login_processes_are_reused_and_sized_to_the_cores(tmp_path: Path) -> None:
    render = _render_module()
    values = render.read_site(DEPLOY / "site.env.example")

    render.render(values, tmp_path / "eight", cores=8)
    render.render(values, tmp_path / "here")

    for folder, cores in (("eight", 8), ("here", os.cpu_count())):
        conf = (tmp_path / folder / "dovecot" / "dovecot.conf").read_text()
        for service in ("imap-login", "pop3-login"):
            block = conf[conf.index(f"service {service} {{") :]
            block = block[: block.index("\n}\n") + 1]
            assert "service_count = 0\n" in block, service
            assert f"process_min_avail = {cores}\n" in block, service
            assert "vsz_limit = 1G\n" in block, service
    with pytest.raises(render.RenderError, match="LOGIN_PROCESSES is not a site value"):
        render.render({**values, "LOGIN_PROCESSES": "4"}, tmp_path / "set")
    with pytest.raises(render.RenderError, match="--cores must be at least 1"):
        render.render(values, tmp_path / "none", cores=0)


# --- the README followed, and the servers it installs booted -----------------------------------


def unused_system_ids() -> tuple[int, int]:
    """A uid and gid below Dovecot's default first_valid_uid (500), as `useradd --system`
    gives vmail on Debian (uid 110 in the report): only first_valid_uid = MAIL_UID lets it in."""
    uids = {user.pw_uid for user in pwd.getpwall()}
    gids = {group.gr_gid for group in grp.getgrall()}
    uid = next(number for number in range(499, 100, -1) if number not in uids)
    gid = next(number for number in range(499, 100, -1) if number not in gids)
    return uid, gid


def edit_site(path: Path, edits: dict[str, str]) -> None:
    """What the operator does to their copy: change values; never add a name the example
    lacks (render.py would refuse it anyway)."""
    lines = path.read_text().splitlines()
    left = dict(edits)
    for number, line in enumerate(lines):
        name = line.partition("=")[0].strip()
        if not line.startswith("#") and name in left:
            lines[number] = f"{name}={left.pop(name)}"
    assert not left, f"not in site.env.example: {sorted(left)}"
    path.write_text("\n".join(lines) + "\n")


def login_processes(dovecot_pid: int, name: str) -> set[int]:
    """The pids of Dovecot's `name` processes (they run in the master's session)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            # "dovecot-INSTANCE/imap-login": the title Dovecot gives the process.
            if os.getsid(int(entry.name)) == dovecot_pid and command.endswith(f"/{name}"):
                found.add(int(entry.name))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def wait_until(condition: Callable[[], bool], what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within 10 s\n{logs()}")
        time.sleep(0.1)


class ReadmeSite:
    """Runs the README's section 4 for a test site in ``root`` and boots what it installed."""

    def __init__(
        self,
        root: Path,
        tls: TlsFiles,
        policy: PolicyServer,
        smtp_policy: SmtpPolicyDaemon,
    ) -> None:
        self.servers = MailServers(
            root=root,
            tls=tls,
            imaps_port=free_port(),
            pop3s_port=free_port(),
            submission_port=free_port(),
            submissions_port=free_port(),
            policy=policy,
            smtp_policy=smtp_policy,
            doveadm_port=free_port(),
        )
        self.site = root / "site.env"
        self.rendered = root / "rendered"
        # The layout tests/mailservers.py's helpers expect (logs, stop_mail_servers).
        self.dovecot_dir = root / "dovecot"
        self.postfix_dir = root / "postfix"
        self.uid, self.gid = unused_system_ids()

    def edits(self) -> dict[str, str]:
        servers, root = self.servers, self.servers.root
        assert servers.policy and servers.smtp_policy
        return {
            "MAIL_LISTEN": "127.0.0.1",
            "TLS_CERT": str(servers.tls.cert),
            "TLS_KEY": str(servers.tls.key),
            "DOVECOT_CONF_DIR": str(self.dovecot_dir),
            "DOVECOT_INSTANCE": f"readme-{root.name}",
            "DOVECOT_BASE_DIR": str(root / "dovecot-run"),
            "DOVECOT_STATE_DIR": str(root / "dovecot-state"),
            "DOVECOT_LOG_PATH": str(servers.dovecot_log),
            "IMAPS_PORT": str(servers.imaps_port),
            "POP3S_PORT": str(servers.pop3s_port),
            "DOVECOT_SQL_CONNECT": database_environment()["DOVECOT_SQL_CONNECT"],
            "MAIL_UID": str(self.uid),
            "MAIL_GID": str(self.gid),
            "MAIL_HOME": str(root / "vmail"),
            "AUTH_POLICY_URL": servers.policy.url,
            "AUTH_POLICY_API_KEY": servers.policy.api_key,
            "AUTH_POLICY_HASH_NONCE": secrets.token_hex(16),
            "DOVEADM_HTTP_PORT": str(servers.doveadm_port),
            "DOVEADM_API_KEY": servers.doveadm_api_key,
            "POSTFIX_QUEUE_DIR": str(root / "postfix-queue"),
            "POSTFIX_DATA_DIR": str(root / "postfix-data"),
            "POSTFIX_INET_INTERFACES": "127.0.0.1",
            "POSTFIX_MAILLOG_FILE": "/dev/stdout",
            # No test mail leaves the machine.
            "POSTFIX_DEFAULT_TRANSPORT": "discard:",
            "SUBMISSION_SERVICE": f"127.0.0.1:{servers.submission_port}",
            "SUBMISSIONS_SERVICE": f"127.0.0.1:{servers.submissions_port}",
            "SMTP_POLICY_SERVICE": servers.smtp_policy.service,
            "SENDER_TAG_SERVICE": servers.smtp_policy.tag_service,
        }

    def follow(self) -> None:
        """Section 4's commands, in order, as written."""
        root = self.servers.root
        # The mail store as the README's `install -d -o vmail ...` makes it, for the test's ids.
        (root / "vmail").mkdir()
        os.chown(root / "vmail", self.uid, self.gid)
        (root / "vmail").chmod(0o750)
        ran = []
        for command in shell_commands(section(RENDER_SECTION)):
            words = shlex.split(command)
            if words[0] in ("groupadd", "useradd", "install"):
                # The mail store's user: a test must not add users to the machine; its ids are
                # checked against the example site above, and the test site uses ids of the
                # same range.
                continue
            if words == ["cp", "deploy/site.env.example", "deploy/site.env"]:
                shutil.copyfile(REPO / words[1], self.site)
                edit_site(self.site, self.edits())
            elif words[:2] == ["python3", "deploy/render.py"]:
                arguments = [
                    {"deploy/site.env": str(self.site)}.get(word, word) for word in words[2:]
                ]
                # The out folder: the last argument, wherever the README keeps it.
                arguments[-1] = str(self.rendered)
                if "--install" in arguments:
                    arguments[:0] = ["--postfix-dir", str(self.postfix_dir)]
                result = subprocess.run(
                    [words[0], words[1], *arguments],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert result.returncode == 0, result.stdout + result.stderr
            elif words == ["systemctl", "restart", "dovecot", "postfix"]:
                self.start()
            else:
                pytest.fail(f"deploy/README.md has a step this test does not know: {command}")
            ran.append(words[0])
        assert ran == ["cp", "python3", "systemctl"], ran

    def start(self) -> None:
        """What `systemctl restart dovecot postfix` does, from the files render.py installed."""
        servers = self.servers
        try:
            with servers.dovecot_log.open("ab") as out:
                dovecot = subprocess.Popen(
                    ["dovecot", "-F", "-c", str(self.dovecot_dir / "dovecot.conf")],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            servers.processes.append(dovecot)
            for port in (servers.imaps_port, servers.pop3s_port, servers.doveadm_port):
                wait_for_port(port, dovecot, servers.logs)
            check_certificate(servers.imaps_port, servers.tls)
            with servers.postfix_log.open("ab") as out:
                postfix = subprocess.Popen(
                    ["postfix", "-c", str(self.postfix_dir), "start-fg"],
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            servers.processes.append(postfix)
            for port in (servers.submission_port, servers.submissions_port):
                wait_for_port(port, postfix, servers.logs)
            check_certificate(servers.submissions_port, servers.tls)
        except BaseException:
            stop_mail_servers(servers)
            raise

    def doveadm(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """doveadm of this Dovecot: `-c` names its config, where systemd's is the default."""
        return subprocess.run(
            ["doveadm", "-c", str(self.dovecot_dir / "dovecot.conf"), *arguments],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def readme_site(
    transactional_db: None,
    tls_files: TlsFiles,
    policy_server: PolicyServer,
    policy_redis: None,
    smtp_policy_daemon: SmtpPolicyDaemon,
) -> Iterator[ReadmeSite]:
    require_e2e_binaries()
    # Not under pytest's 0700 folder: Dovecot's and Postfix's unprivileged processes must
    # reach their files inside.
    root = Path(tempfile.mkdtemp(prefix="mailportal-readme-"))
    root.chmod(0o755)
    site = ReadmeSite(root, tls_files, policy_server, smtp_policy_daemon)
    try:
        site.follow()
        yield site
    finally:
        stop_mail_servers(site.servers)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.postgres
def test_the_readme_installs_servers_that_log_in_and_send_through_the_policies(
    readme_site: ReadmeSite, new_sender: Callable[[Plan], Mailbox]
) -> None:
    servers = readme_site.servers
    mailbox = new_sender(Plan.FREE)
    address = mailbox.address
    app_password = switch_on(mailbox)
    dovecot_pid = servers.processes[0].pid
    cores = os.cpu_count() or 1
    # High-performance mode: a login process per core waits before anyone connects...
    wait_until(
        lambda: len(login_processes(dovecot_pid, "imap-login")) == cores,
        f"{cores} imap-login processes",
        servers.logs,
    )
    before = login_processes(dovecot_pid, "imap-login")

    # Section 5's first check, as written (service pop3: no POP3 login follows, so a use it
    # recorded would show below).
    check = next(
        shlex.split(command)
        for command in shell_commands(section(CHECK_SECTION))
        if command.startswith("doveadm auth test")
    )
    check = [{"service=imap": "service=pop3"}.get(word, word) for word in check]
    check[-2:] = [address, app_password]
    result = readme_site.doveadm(*check[1:])
    assert result.returncode == 0 and "auth succeeded" in result.stdout, (
        result.stdout + result.stderr + servers.logs()
    )

    # A real IMAP login: the passdb view, the auth policy, and the mail store's uid.
    try:
        assert imap_login(servers, address, app_password)
    except (OSError, imaplib.IMAP4.error) as error:
        raise AssertionError(f"IMAP login failed: {error!r}\n{servers.logs()}") from error
    # A real submission on 587: SMTP AUTH through Dovecot and the policy, the message counted
    # by the SMTP policy daemon, its envelope sender signed by the daemon's tag service.
    smtp_send(servers, address, app_password, implicit_tls=False)

    def recorded() -> bool:
        # The uses reach the database through the activity job, as Celery beat runs it.
        activity.compact()
        access = ExternalAccess.objects.get(mailbox=mailbox)
        return access.imap_last_ip == "127.0.0.1" and access.smtp_last_ip == "127.0.0.1"

    wait_until(recorded, "the auth policy recording both uses", servers.logs)
    # ...and served both connections itself: none was started for a connection.
    assert login_processes(dovecot_pid, "imap-login") == before
    panel = sending_panel(mailbox)
    assert panel is not None and panel.last_hour == 1, servers.logs()
    # The operator's check is no use of the owner's: the panel would show "POP3 from None".
    assert ExternalAccess.objects.get(mailbox=mailbox).pop3_last_used_at is None
    mail_home = Path(site_values(readme_site.site)["MAIL_HOME"])
    assert any(path.stat().st_uid == readme_site.uid for path in mail_home.rglob("*"))
