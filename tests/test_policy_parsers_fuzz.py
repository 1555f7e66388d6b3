"""Property-based fuzzing of what strangers' bytes reach: both policy servers' parsers and
the log formatter (issue 18, item 5).

Each property runs a bounded number of examples, derandomized (the same examples on every
run, so a failure is reproducible and CI is not flaky), with no per-example deadline (a
loaded two-core machine must not turn slowness into a failure).

- Postfix's policy protocol: any bytes, split into any reads, give whole requests or
  ``ProtocolError`` and nothing else; every accessor of a parsed request raises nothing else
  either; well-formed requests come back attribute for attribute, however they are split.
- Dovecot's auth-policy JSON: any body, and any JSON document (deeply nested ones included),
  gives a request or ``RequestError`` and nothing else; a request's Redis commands encode, or
  fail with ``UnicodeEncodeError`` before anything is sent (answered as a bad request);
  well-formed Dovecot requests come back as sent.
- Log values: whatever the text, one line without control characters, writable as UTF-8.
"""

from __future__ import annotations

import contextlib
import json
import unicodedata
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.logging import format_value
from mailaccess.mailserver.auth_policy import (
    Command,
    LoginLimits,
    RequestError,
    parse_command,
    parse_login_request,
)
from mailaccess.mailserver.auth_policy_store import PolicyStore
from mailaccess.mailserver.postfix_policy import (
    PostfixRequest,
    ProtocolError,
    RequestParser,
)

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- Postfix's policy delegation protocol ---------------------------------------------------

NAMES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
    min_size=1,
    max_size=20,
)
# A value is any bytes but a line break (Postfix never sends one inside a value).
VALUES = st.binary(max_size=60).map(lambda value: value.replace(b"\n", b""))
# Bytes that look like the protocol often enough to get past the first check.
PROTOCOLISH = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\n", b"\n\n", b"=", b"request=smtpd_access_policy\n"]),
        st.builds(lambda n, v: n.encode() + b"=" + v + b"\n", NAMES, VALUES),
    ),
    max_size=30,
).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return [piece for piece in pieces if piece]


def read_everything(request: PostfixRequest, names: list[str]) -> None:
    """Every accessor the daemon and its log use: only ProtocolError may come out."""
    readers: tuple[Callable[[], object], ...] = (
        lambda: request.request,
        lambda: request.protocol_state,
        lambda: request.sasl_username,
        lambda: request.sender,
        lambda: request.recipient,
        lambda: request.instance,
        lambda: request.policy_context,
        lambda: request.attributes,
        *(lambda name=name: request.get(name) for name in names),
    )
    for read in readers:
        with contextlib.suppress(ProtocolError):
            read()
    for name in ("client_address", "recipient_count", *names):
        request.first(name)  # the log's reads never raise


@FUZZ
@given(
    data=PROTOCOLISH,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    names=st.lists(NAMES, max_size=3),
)
def test_any_bytes_in_any_reads_are_requests_or_a_protocol_error(
    data: bytes, cuts: list[int], names: list[str]
) -> None:
    parser = RequestParser()
    requests: list[PostfixRequest] = []
    try:
        for piece in split(data, cuts):
            requests += parser.feed(piece)
    except ProtocolError as error:
        requests += error.requests
    for request in requests:
        read_everything(request, names)


@FUZZ
@given(
    batch=st.lists(st.dictionaries(NAMES, VALUES, min_size=1, max_size=12), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_well_formed_requests_come_back_attribute_for_attribute(
    batch: list[dict[str, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(
        b"".join(name.encode() + b"=" + value + b"\n" for name, value in attributes.items()) + b"\n"
        for attributes in batch
    )
    parser = RequestParser()
    requests: list[PostfixRequest] = []
    for piece in split(stream, cuts):
        requests += parser.feed(piece)
    assert not parser.pending
    assert len(requests) == len(batch)
    for request, attributes in zip(requests, batch, strict=True):
        decoded = {name: value.decode("utf-8", "replace") for name, value in attributes.items()}
        assert request.attributes == decoded
        for name, value in decoded.items():
            assert request.get(name) == value
            assert request.first(name) == value


# --- Dovecot's auth-policy JSON --------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "login",
        "protocol",
        "remote",
        "pwhash",
        "session_id",
        "device_id",
        "success",
        "policy_reject",
        "app_password",
        "password_key",
    ]
)


STORE = PolicyStore(None, LoginLimits())  # type: ignore[arg-type]  # encodes only, sends nothing


def stored_fields_encode(body: bytes) -> None:
    """A body is a request or a RequestError; a request's Redis commands encode, or fail with
    UnicodeEncodeError before anything is sent (which the app answers as a bad request)."""
    for command in Command:
        try:
            request = parse_login_request(command, body)
        except RequestError:
            continue
        assert request.login.isprintable()
        request.login.encode("utf-8")  # the database and the state cache's keys
        request.client.encode("utf-8")  # the database (last use)
        with contextlib.suppress(UnicodeEncodeError):
            STORE._mailbox_call(request, "allow", 1_800_000_000.0)
            network = STORE._network_key(request)
            if network is not None:
                STORE._network_call(network, request, "failure", 1_800_000_000.0)


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_body_is_a_request_or_a_bad_request(body: bytes) -> None:
    stored_fields_encode(body)


@FUZZ
@given(
    document=st.one_of(JSON_VALUES, st.dictionaries(FIELDS, JSON_VALUES, max_size=10)),
    depth=st.integers(0, 6000),
)
def test_any_json_however_deep_is_a_request_or_a_bad_request(document: Any, depth: int) -> None:
    stored_fields_encode(json.dumps(document).encode())
    # Nested far past the JSON parser's recursion limit (an attacker's "[" * 5000).
    stored_fields_encode(b"[" * depth + json.dumps(document).encode() + b"]" * depth)
    stored_fields_encode(b'{"login": ' + b"[" * depth)


@FUZZ
@given(login=st.text(max_size=40), extra=st.dictionaries(FIELDS, st.text(max_size=20)))
def test_any_text_in_the_fields_is_a_request_or_a_bad_request(
    login: str, extra: dict[str, str]
) -> None:
    # json.dumps escapes control characters and lone surrogates as \\u sequences.
    stored_fields_encode(json.dumps({**extra, "login": login}).encode())
    stored_fields_encode(
        json.dumps({**extra, "login": login}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )


@FUZZ
@given(query=st.binary(max_size=60))
def test_any_query_is_a_command_or_a_bad_request(query: bytes) -> None:
    with contextlib.suppress(RequestError):
        parse_command(query)


LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=20)


@FUZZ
@given(
    local=LOCAL,
    domain=st.sampled_from(["inbox.lv", "mail.ee", "Inbox.LV", "ēpasts.lv"]),
    protocol=st.sampled_from(["imap", "pop3", "smtp", "submission"]),
    remote=st.ip_addresses().map(str),
    pwhash=st.text(alphabet="0123456789abcdef", max_size=8),
    success=st.booleans(),
)
def test_a_request_dovecot_sends_comes_back_as_sent(
    local: str, domain: str, protocol: str, remote: str, pwhash: str, success: bool
) -> None:
    login = f"{local}@{domain}"
    body = {
        "login": login,
        "protocol": protocol,
        "remote": remote,
        "pwhash": pwhash,
        "session_id": "Sr2fVvUCHtF/AAAB",
        "device_id": "",
        "success": success,
        "policy_reject": False,
    }
    for encoded in (json.dumps(body), json.dumps(body, ensure_ascii=False)):
        request = parse_login_request(Command.REPORT, encoded.encode())
        assert request.login == login.lower()
        assert request.service == protocol
        assert request.protocol is not None
        assert request.remote is not None
        assert request.pwhash == pwhash
        assert request.success is success


# --- log values ------------------------------------------------------------------------------


@FUZZ
@given(text=st.text())
def test_any_text_is_logged_as_one_line_without_control_characters(text: str) -> None:
    shown = format_value(text)
    # Cc: C0, DEL and C1 controls (NUL, ESC, ...); Cs: lone surrogates; Zl, Zp: the Unicode
    # line and paragraph separators.
    assert not any(unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in shown)
    shown.encode("utf-8")
