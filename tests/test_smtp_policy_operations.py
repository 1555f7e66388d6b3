"""The SMTP policy daemon for ops: its checks counted, its health port, its log lines."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest
import time_machine
from django.conf import settings
from prometheus_client import REGISTRY

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from tests.conftest import redis_url_for_tests
from tests.mailservers import free_port
from tests.policy_daemon import RunningDaemon

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MONDAY = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)


def checks(stage: str, result: str) -> float:
    labels = {"stage": stage, "result": result}
    return REGISTRY.get_sample_value("mailportal_smtp_policy_checks_total", labels) or 0.0


def test_each_check_is_counted_by_stage_and_result_and_a_deferral_logged(
    alice: Mailbox, test_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    actions.enable_access(alice, actor=Actor.user(alice))
    before = {
        "data": checks("data", "dunno"),
        "end": checks("end-of-message", "dunno"),
        "deferred": checks("data", "defer_if_permit"),
        "timed": REGISTRY.get_sample_value("mailportal_smtp_policy_check_seconds_count") or 0,
    }
    with (
        time_machine.travel(MONDAY, tick=False),
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        for number in range(5):
            assert client.send_message("alice@inbox.lv", f"ops{number}") == "DUNNO"
        assert client.send_message("alice@inbox.lv", "ops5").startswith("DEFER_IF_PERMIT")
    assert checks("data", "dunno") == before["data"] + 5
    assert checks("end-of-message", "dunno") == before["end"] + 5
    assert checks("data", "defer_if_permit") == before["deferred"] + 1
    timed = REGISTRY.get_sample_value("mailportal_smtp_policy_check_seconds_count")
    assert timed == before["timed"] + 11
    [deferral] = [r.getMessage() for r in caplog.records if "defer_if_permit" in r.getMessage()]
    assert deferral.startswith("event=smtp_policy.decision mailbox=alice@inbox.lv stage=data")
    assert "client_ip=192.0.2.10" in deferral and "instance=ops5" in deferral


def database_url_of_the_test_database() -> dict[str, str]:
    """The daemon is another process: on PostgreSQL point it at the test database (the
    configured one need not exist). On SQLite its own file answers the readiness check."""
    from urllib.parse import urlsplit, urlunsplit

    from django.db import connection

    url = os.environ.get("DATABASE_URL")
    if not url:
        return {}
    return {
        "DATABASE_URL": urlunsplit(
            urlsplit(url)._replace(path="/" + connection.settings_dict["NAME"])
        )
    }


def test_the_daemon_answers_health_and_metrics_on_its_own_port(django_db_setup: None) -> None:
    redis_url = redis_url_for_tests()
    policy_port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        **database_url_of_the_test_database(),
        "MAILSERVER_REDIS_URL": redis_url,
        "DEBUG": "1",
        "METRICS_TOKEN": "scrape-token-123",
    }
    daemon = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "smtp_policy_server",
            "--listen",
            f"127.0.0.1:{policy_port}",
            "--health-listen",
            f"127.0.0.1:{health_port}",
        ],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{health_port}"
    try:
        for _ in range(100):
            try:
                alive = httpx.get(f"{url}/healthz")
                break
            except httpx.ConnectError:
                assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
                time.sleep(0.1)
        assert alive.json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": "ok", "database": "ok"}
        assert httpx.get(f"{url}/metrics").status_code == 403
        scrape = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-token-123"})
        assert "# TYPE mailportal_smtp_policy_checks_total counter" in scrape.text
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
