"""Drive the auth-policy ASGI app in-process the way Dovecot does (the operations tests)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, cast

import httpx
import redis

from mailaccess import activity
from mailaccess.mailserver.asgi import AuthPolicyApp
from mailaccess.mailserver.redis_cluster import open_pipeline

API_KEY = "policy-test-key-0123456789abcdef"
# Dovecot's session ids look like this: base64 of a timestamp and a counter.
SESSION_ID = "Sr2fVvUCHtF/AAAB+xyz"
START = 1_800_000_000.0  # a Friday morning in 2027, Riga time


def closed_port() -> int:
    """A loopback port nothing listens on: a stopped Redis, for real (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request(
    redis_url: str,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    now: float | None = None,
) -> httpx.Response:
    async def send() -> httpx.Response:
        client = open_pipeline(redis_url, timeout=2, decode=True)
        app = AuthPolicyApp(client=client, clock=(lambda: now) if now else time.time)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy") as http:
            response = await http.request(
                method,
                path,
                content=json.dumps(body).encode() if body is not None else None,
                headers=headers or {},
            )
        await app.aclose()  # Redis, and the database connections of the app's threads
        return response

    return asyncio.run(send())


def login(
    redis_url: str,
    login: str,
    *,
    protocol: str = "imap",
    pwhash: str = "5e88489",
    right: bool = True,
    app_password: str = "1",
) -> dict[str, Any]:
    """One whole login: allow, (allow again,) report. Returns the first answer, or the second
    when that one refuses.

    As Dovecot does, the ``allow`` after a right password names the password the passdb
    matched (``app_password``): only that one may tell a refused mailbox why."""
    body = {
        "login": login,
        "protocol": protocol,
        "remote": "192.0.2.10",
        "pwhash": pwhash,
        "session_id": SESSION_ID,
        "device_id": "",
    }
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    first = request(
        redis_url, "POST", "/auth-policy?command=allow", body=body, headers=headers
    ).json()
    if first["status"] < 0:
        report = {**body, "success": False, "policy_reject": True}
    else:
        if right:
            verified = {**body, "app_password": app_password}
            second = request(
                redis_url, "POST", "/auth-policy?command=allow", body=verified, headers=headers
            ).json()
            if second["status"] < 0:
                report = {**verified, "success": False, "policy_reject": True}
                request(
                    redis_url, "POST", "/auth-policy?command=report", body=report, headers=headers
                )
                return cast(dict[str, Any], second)
        report = {**body, "success": right, "policy_reject": False}
    request(redis_url, "POST", "/auth-policy?command=report", body=report, headers=headers)
    return cast(dict[str, Any], first)


class Dovecot:
    """Speaks to the endpoint the way Dovecot's auth process does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.now = START

    def post(self, command: str, body: Any, *, key: str | None = API_KEY) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["X-API-Key"] = key

        async def send() -> httpx.Response:
            # A fresh app and pool per request: each asyncio.run is a new event loop.
            client = open_pipeline(self.url, timeout=2, decode=True)
            app = AuthPolicyApp(client=client, clock=lambda: self.now)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://policy") as http:
                response = await http.post(
                    f"/auth-policy?command={command}", content=content, headers=headers
                )
            # The Redis connection and the database connections of the app's threads: left
            # open, the test database could not be dropped at the end.
            await app.aclose()
            return response

        return asyncio.run(send())

    def compact_activity(self) -> int:
        """The minutely job: the buffered sign-ins become history rows and last uses."""
        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            return activity.compact(client)
        finally:
            client.close()

    def allow(
        self, login: str, protocol: str = "imap", remote: str = "192.0.2.10", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "login": login,
            "protocol": protocol,
            "remote": remote,
            "pwhash": "a1b",
            "session_id": "s",
            "device_id": "",
            **extra,
        }
        response = self.post("allow", body)
        assert response.status_code == 200
        return cast(dict[str, Any], response.json())

    def login(
        self,
        login: str,
        protocol: str = "imap",
        remote: str = "192.0.2.10",
        *,
        right: bool = True,
        pwhash: str = "a1b",
    ) -> dict[str, Any]:
        """One whole login; returns the answer before auth."""
        body = {
            "login": login,
            "protocol": protocol,
            "remote": remote,
            "pwhash": pwhash,
            "session_id": "s",
            "device_id": "",
        }
        first: dict[str, Any] = self.post("allow", body).json()
        if first["status"] < 0:
            self.post("report", {**body, "success": False, "policy_reject": True})
            return first
        if right:
            self.post("allow", body)
        self.post("report", {**body, "success": right, "policy_reject": False})
        return first
