"""`manage.py smtp_policy_server` as Postfix meets it: a unix socket, and SIGTERM to stop."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from pytest_django import Settings

from tests.conftest import redis_url_for_tests
from tests.policy_daemon import PolicyClient

pytestmark = pytest.mark.e2e


def test_the_daemon_answers_on_a_unix_socket_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.sock"
    env = {**os.environ, "MAILSERVER_REDIS_URL": redis_url_for_tests(), "DEBUG": "1"}
    daemon = subprocess.Popen(
        [sys.executable, "manage.py", "smtp_policy_server", "--listen", f"unix:{path}"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            if path.exists() or daemon.poll() is not None:
                break
            time.sleep(0.1)
        assert path.exists(), daemon.stdout.read().decode() if daemon.stdout else ""
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        with PolicyClient(sock) as client:
            # Not signed in, not a bounce: no opinion, on one persistent connection.
            for _ in range(3):
                assert client.ask(protocol_state="RCPT", sender="a@example.com") == "DUNNO"
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(15) == 0
            assert client.read_reply() is None
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert not path.exists()
    assert daemon.stdout is not None
    assert "stopped" in daemon.stdout.read().decode()


@pytest.mark.parametrize("command", ["smtp_policy_server", "auth_policy_server"])
@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("ssl_ca_certs=/nonexistent/ca.pem", "cannot load its TLS files"),
        ("ssl_cert_reqs=maybe", "ssl_cert_reqs must be required or none"),
    ],
)
def test_a_bad_tls_setting_for_redis_stops_the_start_with_a_clear_error(
    command: str, query: str, complaint: str, settings: Settings
) -> None:
    from django.core.management import CommandError, call_command

    settings.MAILSERVER_REDIS_URL = f"rediss://:secret-password@redis.internal:6380/1?{query}"
    with pytest.raises(CommandError) as refused:
        call_command(command, "--listen", "127.0.0.1:1")
    assert complaint in str(refused.value)
    assert "secret-password" not in str(refused.value)
