"""The policy servers' one Redis client (``mailserver/redis_pipeline.py``), against real
failures: a Redis that accepts and never answers, a closed port, and a redis-server of the
test's own that is killed and started again in the middle of the run.

Every call either answers or fails within the timeout; nothing hangs; what was queued with a
failed command fails with it; the next call after the failure works again.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailaccess.mailserver.redis_pipeline import (
    RedisPipeline,
    Script,
    join_command,
    pack_command,
    pack_parts,
    parse_url,
)
from tests.conftest import redis_url_for_tests
from tests.mailservers import free_port, stop_process, wait_for_port
from tests.policy_client import closed_port

TIMEOUT = 0.5
# The event loop's own lateness on a busy machine, on top of the timeout.
SLACK = 0.3


def called(pipeline: RedisPipeline, *parts: Any) -> asyncio.Future[Any]:
    """``call`` (the SMTP daemon's way) as a future: the reply or the exception."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pipeline.call(future.set_result, *parts)
    return future


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    """The result or the exception raised, and how long it took."""
    started = time.monotonic()
    try:
        result = await awaitable
    except Exception as error:
        result = error
    return result, time.monotonic() - started


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        # A hang fails the test instead of blocking the run.
        async with asyncio.timeout(30):
            return await scenario()

    return asyncio.run(bounded())


# -- a Redis that never answers -------------------------------------------------------------


@pytest.fixture
def hung_redis() -> Iterator[int]:
    """A listener whose backlog completes every handshake, and nothing reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_a_redis_that_never_answers_fails_every_queued_call_within_the_timeout(
    hung_redis: int,
) -> None:
    async def scenario() -> list[tuple[Any, float]]:
        pipeline = RedisPipeline(f"redis://:pw@127.0.0.1:{hung_redis}/2", timeout=TIMEOUT)
        try:
            first = [
                asyncio.ensure_future(timed(called(pipeline, "PING"))),
                asyncio.ensure_future(timed(pipeline.execute("GET", "k"))),
                asyncio.ensure_future(timed(pipeline.send_packed(pack_command("PING") * 3, 3))),
            ]
            await asyncio.sleep(TIMEOUT / 2)
            # Asked while the first batch waits: fails with it, not a timeout later.
            later = asyncio.ensure_future(timed(pipeline.execute("PING")))
            results = list(await asyncio.gather(*first, later))
            # The connection was dropped; the next call connects again and fails alike.
            results.append(await timed(pipeline.execute("PING")))
            return results
        finally:
            await pipeline.aclose()

    results = run(scenario)
    for error, seconds in results:
        assert isinstance(error, RedisTimeoutError)
        assert seconds < TIMEOUT + SLACK
    assert results[0][1] >= TIMEOUT * 0.9
    assert results[3][1] < TIMEOUT / 2 + SLACK


def test_a_closed_port_fails_at_once_and_again_at_the_next_call() -> None:
    async def scenario() -> list[tuple[Any, float]]:
        pipeline = RedisPipeline(f"redis://127.0.0.1:{closed_port()}/0", timeout=TIMEOUT)
        try:
            results = list(
                await asyncio.gather(
                    timed(called(pipeline, "PING")), timed(pipeline.execute("PING"))
                )
            )
            results.append(await timed(pipeline.send_packed(pack_command("PING"), 1)))
            return results
        finally:
            await pipeline.aclose()

    for error, seconds in run(scenario):
        assert isinstance(error, RedisConnectionError)
        assert "ConnectionRefusedError" in str(error)
        assert seconds < TIMEOUT


# -- a real Redis, killed and started again -------------------------------------------------


class OwnRedis:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:s%40cret@127.0.0.1:{self.port}/3"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--requirepass", "s@cret"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, self.log.read_text)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis_url_for_tests()  # skips, like every Redis test, where no Redis is wanted
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is needed to run a Redis of the test's own")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_redis_killed_mid_run_fails_the_queued_calls_and_the_restarted_one_answers(
    own_redis: OwnRedis,
) -> None:
    script = Script(f"-- {uuid.uuid4()}\nreturn redis.call('INCR', KEYS[1])")
    evalsha = pack_command("EVALSHA", script.sha, 1, "n")

    async def scenario() -> dict[str, Any]:
        pipeline = RedisPipeline(own_redis.url, timeout=2)
        seen: dict[str, Any] = {}
        try:
            seen["before"] = await pipeline.execute("SET", "k", "v")
            # Replies in order, through the callback and the awaiting paths together.
            seen["together"] = await asyncio.gather(
                called(pipeline, "INCR", "n"),
                pipeline.execute("INCR", "n"),
                pipeline.send_packed(pack_command("INCR", "n") + pack_command("GET", "k"), 2),
            )
            # BLPOP holds Redis's answers to this connection: the calls after it are queued
            # when Redis dies. (``called`` sends at once, ``execute`` when its task runs.)
            queued = [
                asyncio.ensure_future(timed(called(pipeline, "BLPOP", "nothing", 5))),
                asyncio.ensure_future(timed(called(pipeline, "PING"))),
                asyncio.ensure_future(timed(pipeline.send_packed(pack_command("PING"), 1))),
            ]
            await asyncio.sleep(0.3)
            own_redis.kill()
            seen["queued"] = await asyncio.gather(*queued)
            seen["down"] = await timed(pipeline.execute("PING"))
            own_redis.start()
            # The next call connects again, with AUTH and SELECT (database 3).
            seen["after"] = await pipeline.execute("SET", "k", "again")
            # Redis forgot the script: the callback path sends its body (EVAL); a batch
            # hands the caller NoScriptError, to load it and go again.
            seen["batch_noscript"] = await pipeline.send_packed(evalsha, 1)
            script_reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            pipeline.evalsha(script_reply.set_result, script, ["n"], [])
            seen["script"] = await script_reply
            seen["batch_script"] = await pipeline.send_packed(evalsha, 1)
            return seen
        finally:
            await pipeline.aclose()

    seen = run(scenario)
    assert seen["before"] == b"OK"
    assert seen["together"] == [1, 2, [3, b"v"]]
    for error, seconds in seen["queued"]:
        assert isinstance(error, RedisConnectionError)
        assert seconds < 2
    assert isinstance(seen["down"][0], RedisConnectionError)
    assert seen["after"] == b"OK"
    assert isinstance(seen["batch_noscript"][0], NoScriptError)
    assert seen["script"] == 1
    assert seen["batch_script"] == [2]
    assert redis.Redis.from_url(own_redis.url).get("k") == b"again"


def test_a_redis_late_beyond_the_timeout_is_dropped_and_its_late_replies_never_reach_anyone(
    own_redis: OwnRedis,
) -> None:
    async def scenario() -> list[Any]:
        pipeline = RedisPipeline(own_redis.url, timeout=TIMEOUT, decode=True)
        try:
            await pipeline.execute("DEL", "list")
            late = await asyncio.gather(
                timed(called(pipeline, "BLPOP", "list", 2)), timed(called(pipeline, "GET", "x"))
            )
            # Redis answers the BLPOP on the dropped connection, not on the new one.
            redis.Redis.from_url(own_redis.url).rpush("list", "late")
            return [late, await pipeline.execute("PING"), await pipeline.execute("LPOP", "list")]
        finally:
            await pipeline.aclose()

    late, pong, left = run(scenario)
    for error, seconds in late:
        assert isinstance(error, RedisTimeoutError)
        assert seconds < TIMEOUT + SLACK
    assert (pong, left) == ("PONG", "late")


# -- the URL and the protocol ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path", "address", "setup"),
    [
        ("redis://127.0.0.1:6379/0", None, ("127.0.0.1", 6379), []),
        ("redis://redis.internal/4", None, ("redis.internal", 6379), [["SELECT", 4]]),
        ("redis://:s%40cret@10.0.0.5:6380", None, ("10.0.0.5", 6380), [["AUTH", "s@cret"]]),
        (
            "redis://portal:pw@10.0.0.5/2",
            None,
            ("10.0.0.5", 6379),
            [["AUTH", "portal", "pw"], ["SELECT", 2]],
        ),
        ("unix:///run/redis/redis.sock?db=2", "/run/redis/redis.sock", ("", 0), [["SELECT", 2]]),
        ("rediss://redis.internal:6380/1", None, ("redis.internal", 6380), [["SELECT", 1]]),
    ],
)
def test_the_usual_urls_are_understood(
    url: str, path: str | None, address: tuple[str, int], setup: list[list[Any]]
) -> None:
    parsed = parse_url(url)
    assert (parsed.path, (parsed.host, parsed.port)) == (path, address)
    assert parsed.setup == tuple(pack_command(*command) for command in setup)
    assert (parsed.tls is not None) == url.startswith("rediss://")


@pytest.mark.parametrize(
    "url",
    ["http://:secret@redis/0", "redis://:secret@redis/x", "rediss://:secret@r/0?ssl_cert_reqs=x"],
)
def test_a_bad_url_is_refused_without_repeating_its_password(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_url(url)
    assert "secret" not in str(refused.value)


def test_commands_packed_in_parts_equal_commands_packed_whole() -> None:
    whole = pack_command("EVALSHA", "a" * 40, 1, "mp:{ā@inbox.lv}:k", 12, 0.5, b"\x00")
    parts = join_command(
        7,
        pack_parts("EVALSHA", "a" * 40),
        pack_parts(1, "mp:{ā@inbox.lv}:k"),
        pack_parts(12, 0.5, b"\x00"),
    )
    assert whole == parts
    assert whole.startswith(b"*7\r\n$7\r\nEVALSHA\r\n")
    with pytest.raises(UnicodeEncodeError):
        pack_command("GET", "\udcff")
