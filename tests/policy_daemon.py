"""A real SMTP policy daemon for tests: its own thread and event loop, a real TCP socket
(on the first free port of E2E_PORT_RANGE, default 21100-21899: the ports tests may use).

The end-to-end tests through real Postfix run the daemon as production does instead, as
``manage.py smtp_policy_server`` in its own process (``smtp_policy_daemon`` in
tests/mailservers.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

from mailaccess.mailserver.database_threads import DatabaseThreads
from mailaccess.mailserver.policy_server import PolicyServer
from mailaccess.mailserver.redis_cluster import open_pipeline
from mailaccess.mailserver.smtp_policy import SmtpPolicy


class RunningDaemon:
    """``SmtpPolicy`` behind ``PolicyServer`` on 127.0.0.1, in a background thread."""

    def __init__(
        self,
        redis_url: str,
        request_timeout: float = 2.0,
        idle_timeout: float = 60.0,
        **policy: Any,
    ) -> None:
        self.redis_url = redis_url
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.policy_options = policy
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="policy-daemon", daemon=True)

    def __enter__(self) -> RunningDaemon:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.request_stop)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as error:
            self._error = error
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        executor = DatabaseThreads(2, "smtp-policy-db")
        client = open_pipeline(self.redis_url, timeout=0.5)
        self.policy = SmtpPolicy(client, executor, **self.policy_options)
        # As in production: forget a cached mailbox as soon as its access changes.
        self.policy.access_changes_url = self.redis_url
        self.server = PolicyServer(
            self.policy, request_timeout=self.request_timeout, idle_timeout=self.idle_timeout
        )
        low, _, high = os.environ.get("E2E_PORT_RANGE", "21100-21899").partition("-")
        for port in range(int(low), int(high) + 1):
            try:
                bound = await self.server.listen(f"127.0.0.1:{port}")
            except OSError:
                continue
            self.port = int(bound.rpartition(":")[2])
            break
        self._ready.set()
        await self.server.wait_stopped()
        await self.policy.stop_following()
        await client.aclose()
        # Closes the threads' database connections: the test database can then be dropped.
        executor.shutdown(wait=True)

    def finish_blocks(self) -> None:
        """Wait until the blocks the daemon started in the background are written."""
        asyncio.run_coroutine_threadsafe(self.policy.wait_for_background(), self.loop).result(15)

    def connect(self) -> PolicyClient:
        return PolicyClient(socket.create_connection(("127.0.0.1", self.port), timeout=10))


class PolicyClient:
    """Speaks to the daemon the way Postfix's smtpd does: one persistent connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> str | None:
        """The next reply's action, or None when the daemon closed the connection."""
        while b"\n\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        reply, _, self._buffer = self._buffer.partition(b"\n\n")
        assert reply.startswith(b"action="), reply
        return reply[len(b"action=") :].decode()

    def ask(self, **attributes: str) -> str:
        request = {"request": "smtpd_access_policy", **attributes}
        self.send_raw(b"".join(f"{k}={v}\n".encode() for k, v in request.items()) + b"\n")
        reply = self.read_reply()
        assert reply is not None, "the daemon closed the connection"
        return reply

    def send_message(self, login: str, instance: str, recipients: int = 1) -> str:
        """DATA, then END-OF-MESSAGE if DATA passed: the daemon's view of one message."""
        common = {
            "sasl_username": login,
            "sender": login,
            "instance": instance,
            "client_address": "192.0.2.10",
        }
        at_data = self.ask(protocol_state="DATA", recipient_count=str(recipients), **common)
        if at_data != "DUNNO":
            return at_data
        return self.ask(protocol_state="END-OF-MESSAGE", recipient_count=str(recipients), **common)
