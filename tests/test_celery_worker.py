"""A real Celery beat and worker against the real Redis: the wiring the other tests skip.

Beat sends the idle-expiry job as scheduled in settings; the worker, another process on
the test database, blocks the idle access, and the notice task it queues on commit e-mails
the owner.
"""

import contextlib
import imaplib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import time_machine
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.models import BlockReason, ExternalAccess, Notice
from tests.conftest import redis_url_for_tests, wait_until
from tests.mailservers import IMAP4SSLFrom, free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_url() -> str:
    url = redis_url_for_tests()
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis at {url} does not answer ({error}): the Celery worker needs it")
    return url


def worker_database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def celery(redis_url: str, tmp_path: Path, metrics_port: int) -> Iterator[Path]:
    """Start `celery -A mailportal beat` and `... worker`; yield the folder mail goes to."""
    with run_celery(redis_url, tmp_path, metrics_port) as mail_dir:
        yield mail_dir


@contextlib.contextmanager
def run_celery(
    redis_url: str, tmp_path: Path, metrics_port: int, extra_env: dict[str, str] | None = None
) -> Iterator[Path]:
    queue = f"mailportal-e2e-{uuid.uuid4().hex}"
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.celery_worker_settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": worker_database_url(),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "0",
        "E2E_CELERY_QUEUE": queue,
        "E2E_EMAIL_DIR": str(mail_dir),
        "CELERY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "METRICS_TOKEN": "scrape-token-123",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **(extra_env or {}),
    }
    celery = [sys.executable, "-m", "celery", "-A", "mailportal"]
    logs = {name: (tmp_path / f"{name}.log").open("w+") for name in ("worker", "beat")}
    processes = {
        "worker": subprocess.Popen(
            [
                *celery,
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                f"--hostname={queue}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            stdout=logs["worker"],
            stderr=subprocess.STDOUT,
        ),
        "beat": subprocess.Popen(
            [*celery, "beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat-schedule'}"],
            cwd=ROOT,
            env=env,
            stdout=logs["beat"],
            stderr=subprocess.STDOUT,
        ),
    }
    try:
        yield mail_dir
    finally:
        for process in processes.values():
            process.terminate()
        for name, process in processes.items():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            logs[name].seek(0)
            print(f"--- celery {name} log ---\n{logs[name].read()[-4000:]}")
            logs[name].close()
        broker = redis.Redis.from_url(redis_url)
        # The queue and the bindings kombu keeps for it.
        broker.delete(queue, *broker.scan_iter(f"_kombu.binding*{queue}"))


def test_beat_sends_the_idle_job_to_a_real_worker_which_blocks_and_emails(
    celery: Path, alice: Mailbox, bob: Mailbox, metrics_port: int
) -> None:
    with time_machine.travel(timezone.now() - timedelta(days=70), tick=False):
        actions.enable_access(alice, actor=Actor.user(alice))
    actions.enable_access(bob, actor=Actor.user(bob))
    mail_dir = celery

    wait_until(
        lambda: Notice.objects.filter(mailbox=alice, emailed_at__isnull=False).exists(),
        90,
        every=0.5,
        failure="the worker blocked alice's idle access and e-mailed the notice",
    )

    access = ExternalAccess.objects.get(mailbox=alice)
    assert (access.enabled, access.block) == (False, BlockReason.IDLE)
    assert ExternalAccess.objects.get(mailbox=bob).enabled, "access used recently stays on"
    messages = [message_from_bytes(path.read_bytes()) for path in mail_dir.iterdir()]
    assert [message["To"] for message in messages] == ["alice@inbox.lv"]
    subject = str(make_header(decode_header(messages[0]["Subject"])))
    assert subject == "POP3\\IMAP pieeja pastkastītei alice@inbox.lv ir bloķēta"

    # The worker's metrics port shows the run, the block and the notice it sent.
    scrape = httpx.get(
        f"http://127.0.0.1:{metrics_port}/metrics",
        headers={"Authorization": "Bearer scrape-token-123"},
    ).text
    assert 'mailportal_access_blocks_total{reason="idle"} 1.0' in scrape
    assert 'mailportal_notices_sent_total{kind="blocked"} 1.0' in scrape
    assert re.search(
        r'mailportal_job_runs_total\{job_name="block_idle_access",outcome="ok"\} [1-9]', scrape
    )


def test_a_block_by_the_worker_ends_the_open_imap_session_through_a_queued_task(
    redis_url: str,
    tmp_path: Path,
    metrics_port: int,
    alice: Mailbox,
    mail_servers_factory: Any,
) -> None:
    """The wiring: the idle job blocks in the worker; after its commit the kick goes to the
    broker as ``end_sessions`` (nothing eager there), and the worker asks Dovecot."""
    servers = mail_servers_factory(policy=None)
    with time_machine.travel(timezone.now() - timedelta(days=70), tick=False):
        password = actions.enable_access(alice, actor=Actor.user(alice))
    assert password is not None
    session = IMAP4SSLFrom(
        "127.0.0.1",
        servers.imaps_port,
        source="127.0.0.1",
        ssl_context=servers.tls.client_context(),
    )
    session.login(alice.address, password)
    session.select("INBOX")

    doveadm = {"DOVEADM_API_URL": servers.doveadm_url, "DOVEADM_API_KEY": servers.doveadm_api_key}
    with run_celery(redis_url, tmp_path, metrics_port, doveadm):

        def session_gone() -> bool:
            try:
                session.noop()
            except (imaplib.IMAP4.abort, OSError):
                return True
            return False

        wait_until(session_gone, 60, every=0.5, failure=servers.logs)

    assert ExternalAccess.objects.get(mailbox=alice).block == BlockReason.IDLE
