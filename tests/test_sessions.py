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
