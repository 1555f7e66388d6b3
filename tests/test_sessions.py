"""Ending open sessions through the doveadm HTTP API: what is sent, what counts as done, and
the task that retries while Dovecot does not answer (real HTTP on loopback, no mocks)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mailaccess import sessions, tasks


class FakeDoveadm:
    """A doveadm HTTP listener that fails the first ``failures`` requests with a 503."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.headers.get("Authorization", ""), body))
                if len(owner.requests) <= owner.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = [["doveadmResponse", [], c[2]] for c in body]
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/doveadm/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def doveadm(settings: Any) -> Iterator[FakeDoveadm]:
    settings.DOVEADM_API_KEY = "s3cret"
    fake = FakeDoveadm(failures=2)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_it_asks_for_one_kick_per_address_with_the_api_key(doveadm: FakeDoveadm) -> None:
    doveadm.failures = 0

    sessions.kick(doveadm.url, ["alice@inbox.lv", "bob@mail.ee"])

    [(authorization, body)] = doveadm.requests
    assert authorization == "X-Dovecot-API " + base64.b64encode(b"s3cret").decode()
    assert body == [
        ["kick", {"mask": ["alice@inbox.lv"]}, "0"],
        ["kick", {"mask": ["bob@mail.ee"]}, "1"],
    ]


def test_nobody_to_kick_is_done_and_any_other_error_is_retried() -> None:
    sessions.check_answer([["error", {"type": "exitCode", "exitCode": 68}, "0"]], 1)
    sessions.check_answer([["doveadmResponse", [], "0"]], 1)
    with pytest.raises(sessions.DoveadmError):
        sessions.check_answer([["error", {"type": "exitCode", "exitCode": 75}, "0"]], 1)
    with pytest.raises(sessions.DoveadmError):
        sessions.check_answer({"error": "unauthorized"}, 1)
    with pytest.raises(sessions.DoveadmError):
        sessions.check_answer([], 1)


def test_a_dovecot_that_is_down_raises_an_error_the_task_retries(settings: Any) -> None:
    settings.DOVEADM_API_KEY = "s3cret"
    with pytest.raises(OSError):
        sessions.kick("http://127.0.0.1:9/doveadm/v1", ["alice@inbox.lv"], timeout=0.5)
    assert issubclass(sessions.DoveadmError, tasks.TRANSIENT_ERRORS)


def test_the_task_retries_until_dovecot_answers(doveadm: FakeDoveadm, settings: Any) -> None:
    result = tasks.end_sessions.apply(args=(doveadm.url, ["alice@inbox.lv"]))

    assert result.successful()
    assert len(doveadm.requests) == 3  # two 503s, then done


def test_the_auth_cache_flush_is_one_command_for_all_addresses(doveadm: FakeDoveadm) -> None:
    doveadm.failures = 0

    sessions.flush_auth_cache(doveadm.url, ["alice@inbox.lv", "bob@mail.ee"])

    [(_, body)] = doveadm.requests
    assert body == [["authCacheFlush", {"user": ["alice@inbox.lv", "bob@mail.ee"]}, "0"]]


def test_the_flush_task_retries_until_dovecot_answers(doveadm: FakeDoveadm) -> None:
    result = tasks.flush_auth_cache.apply(args=(doveadm.url, ["alice@inbox.lv"]))

    assert result.successful()
    assert len(doveadm.requests) == 3  # two 503s, then done


@pytest.mark.django_db
def test_an_access_change_flushes_directly_and_a_failure_is_logged_not_raised(
    doveadm: FakeDoveadm, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from accounts.models import Mailbox

    mailbox = Mailbox.objects.create_user("carol@inbox.lv", "web-password-1")
    settings.DOVEADM_API_URL = [doveadm.url]
    doveadm.failures = 1  # the direct flush fails; eager: no worker would retry it

    tasks.queue_flush_auth_cache([mailbox.pk])
    assert len(doveadm.requests) == 1
    assert "auth_cache.not_flushed" in caplog.text

    tasks.queue_flush_auth_cache([mailbox.pk])
    assert doveadm.requests[-1][1] == [["authCacheFlush", {"user": ["carol@inbox.lv"]}, "0"]]
    assert len(doveadm.requests) == 2


def test_the_tasks_by_ids_read_the_addresses_and_send_a_request_per_hundred(
    doveadm: FakeDoveadm, django_user_model: Any
) -> None:
    from accounts.models import Mailbox

    doveadm.failures = 0
    mailboxes = Mailbox.objects.bulk_create(
        Mailbox(address=f"m{n:03}@inbox.lv", password="!") for n in range(150)
    )
    ids = [mailbox.pk for mailbox in mailboxes]

    assert tasks.end_sessions_of.apply(args=(doveadm.url, ids)).successful()
    assert tasks.flush_auth_cache_of.apply(args=(doveadm.url, ids)).successful()

    kicks, kicks_rest, flush, flush_rest = (body for _, body in doveadm.requests)
    kicked = [command[1]["mask"][0] for command in kicks + kicks_rest]
    assert (len(kicks), len(kicks_rest)) == (100, 50)
    assert sorted(kicked) == sorted(mailbox.address for mailbox in mailboxes)
    flushed = flush[0][1]["user"] + flush_rest[0][1]["user"]
    assert (len(flush), len(flush_rest)) == (1, 1)
    assert sorted(flushed) == sorted(kicked)


def test_a_job_batch_is_flushed_and_kicked_by_one_task_per_server_taking_the_ids(
    doveadm: FakeDoveadm,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_user_model: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The idle-expiry job's page: every mailbox's auth-cache entries flushed and sessions
    ended on every Dovecot, by one task of each per server, not by the job's process."""
    from datetime import timedelta

    from django.utils import timezone

    from mailaccess import jobs
    from tests.test_jobs import make_due_mailboxes

    doveadm.failures = 0
    second = FakeDoveadm()
    second.thread.start()
    settings.DOVEADM_API_URL = [doveadm.url, second.url]
    # As with a worker (the settings' switch is Celery's too, so no task could be queued
    # here without a broker): what is queued is recorded, then run as a worker would.
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued: list[tuple[str, str, list[int]]] = []
    for task in (tasks.end_sessions_of, tasks.flush_auth_cache_of):
        monkeypatch.setattr(
            task,
            "delay",
            lambda url, ids, name=task.name: queued.append((name, url, sorted(ids))),
        )
    try:
        ids = make_due_mailboxes(150, timezone.now() - timedelta(days=90))
        with django_capture_on_commit_callbacks(execute=True):
            assert jobs.block_idle_access(batch_size=1000) == 150
        assert sorted(queued) == sorted(
            (task.name, url, sorted(ids))
            for task in (tasks.end_sessions_of, tasks.flush_auth_cache_of)
            for url in (doveadm.url, second.url)
        )
        assert doveadm.requests == [] == second.requests  # nothing from the job's process
        for name, url, task_ids in queued:
            task = (
                tasks.end_sessions_of
                if name == tasks.end_sessions_of.name
                else tasks.flush_auth_cache_of
            )
            assert task.apply(args=(url, task_ids)).successful()
    finally:
        second.server.shutdown()
        second.server.server_close()

    addresses = sorted(f"due{n}@inbox.lv" for n in range(150))
    for server in (doveadm, second):
        commands = [command for _, body in server.requests for command in body]
        kicked = [command[1]["mask"][0] for command in commands if command[0] == "kick"]
        flushed = [
            user
            for command in commands
            if command[0] == "authCacheFlush"
            for user in command[1]["user"]
        ]
        assert sorted(kicked) == addresses
        assert sorted(flushed) == addresses
