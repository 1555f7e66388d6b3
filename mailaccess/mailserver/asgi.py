"""The auth-policy endpoint as an ASGI app: ``uvicorn mailaccess.mailserver.asgi:application``.

Production serves the endpoint with ``manage.py auth_policy_server`` (``auth_policy_http.py``
says why); this adapter lets any ASGI server run the same ``AuthPolicyApp`` (the logic is all
in ``auth_policy_app.py``), for comparison in ``benchmarks/auth_policy.py --server uvicorn``
and for tests that drive the app in-process through httpx.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailportal.settings")
django.setup()

from mailaccess.mailserver import auth_policy, auth_policy_app  # noqa: E402

# ASGI's own types (the spec's and httpx's): servers may pass any mutable mapping.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AuthPolicyApp(auth_policy_app.AuthPolicyApp):
    """``AuthPolicyApp`` as an ASGI callable, with the lifespan protocol."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        api_key = authorization = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_key = value
            elif name == b"authorization":
                authorization = value
        status, body, content_type, extra = await self.respond(
            scope["method"].encode(),
            scope.get("raw_path") or scope["path"].encode(),
            scope.get("query_string", b""),
            api_key,
            authorization,
            await self._body(receive),
        )
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > auth_policy.MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


application = AuthPolicyApp()
