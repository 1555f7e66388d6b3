"""Postfix's policy delegation protocol: what the daemon accepts, and what it refuses."""

import pytest

from mailaccess.mailserver.postfix_policy import (
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    ProtocolError,
    RequestParser,
    defer_if_permit,
    format_reply,
    parse_postfix_request,
    reject,
    reply_text,
)

DATA_REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=DATA\n"
    b"protocol_name=ESMTP\n"
    b"sasl_username=Alice@Inbox.lv\n"
    b"sender=alice@inbox.lv\n"
    b"recipient_count=2\n"
    b"instance=1a2b.3c4d.5\n"
    b"\n"
)


def test_a_request_of_postfix_is_parsed() -> None:
    [request] = RequestParser().feed(DATA_REQUEST)
    assert request.request == "smtpd_access_policy"
    assert request.protocol_state == "DATA"
    assert request.sasl_username == "alice@inbox.lv"
    assert request.get("recipient_count") == "2"
    assert request.instance == "1a2b.3c4d.5"


def test_unknown_attributes_are_kept_and_do_not_matter() -> None:
    request = parse_postfix_request(b"request=smtpd_access_policy\nfuture_attribute=x=y\nempty=")
    assert request.get("future_attribute") == "x=y"
    assert request.get("empty") == ""
    assert request.get("never_sent") == ""


def test_several_requests_on_one_connection_are_answered_in_order() -> None:
    parser = RequestParser()
    second = DATA_REQUEST.replace(b"DATA", b"END-OF-MESSAGE")
    requests = parser.feed(DATA_REQUEST + second)
    assert [r.protocol_state for r in requests] == ["DATA", "END-OF-MESSAGE"]
    assert not parser.pending


def test_a_request_split_across_reads_waits_for_its_empty_line() -> None:
    parser = RequestParser()
    stream = DATA_REQUEST + DATA_REQUEST
    got = []
    for byte in range(len(stream)):
        got += parser.feed(stream[byte : byte + 1])
    assert len(got) == 2


def test_a_request_without_its_empty_line_is_not_answered() -> None:
    parser = RequestParser()
    assert parser.feed(DATA_REQUEST[:-1]) == []
    assert parser.pending


def test_two_requests_run_together_without_an_empty_line_are_refused() -> None:
    with pytest.raises(ProtocolError, match="repeated"):
        RequestParser().feed(DATA_REQUEST[:-1] + DATA_REQUEST)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"\n",
        b"=value\n\n",
        b"na me=value\n\n",
        b"\x00\xff\xfe=1\n\n",
    ],
    ids=["http", "empty-request", "no-name", "space-in-name", "binary-name"],
)
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        RequestParser().feed(garbage)


def test_bytes_that_are_not_utf8_in_a_value_do_not_break_the_parser() -> None:
    request = parse_postfix_request(b"request=smtpd_access_policy\nsender=\xff\xfe@example.com")
    assert request.sender.endswith("@example.com")


def test_an_oversized_line_is_refused_before_its_end_arrives() -> None:
    parser = RequestParser()
    with pytest.raises(ProtocolError, match="line longer"):
        parser.feed(b"request=" + b"x" * MAX_LINE_BYTES)


def test_an_oversized_request_is_refused() -> None:
    parser = RequestParser()
    line = b"a" * 10 + b"=" + b"x" * 1000 + b"\n"
    with pytest.raises(ProtocolError, match="request longer"):
        for number in range(MAX_REQUEST_BYTES // len(line) + 2):
            parser.feed(line.replace(b"a" * 10, b"a%09d" % number))


def test_replies_are_one_line_of_ascii() -> None:
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    action = defer_if_permit("Mēģiniet vēlreiz pēc 40 sekundēm.\r\nX-Injected: 1")
    assert action == "DEFER_IF_PERMIT Meginiet velreiz pec 40 sekundem. X-Injected: 1"
    assert format_reply(reject("Ā" * 1000)).count(b"\n") == 2
    assert len(reply_text("x" * 1000)) == 400


def test_the_requests_before_garbage_in_one_read_come_with_the_error() -> None:
    with pytest.raises(ProtocolError) as raised:
        RequestParser().feed(DATA_REQUEST + DATA_REQUEST + b"GET / HTTP/1.1\n\n")
    assert [r.protocol_state for r in raised.value.requests] == ["DATA", "DATA"]


def test_the_log_reads_the_first_of_a_repeated_attribute_the_checks_refuse_it() -> None:
    request = parse_postfix_request(
        b"request=smtpd_access_policy\nclient_address=1\nclient_address=2"
    )
    assert request.first("client_address") == "1"
    assert request.first("never_sent") == ""
    with pytest.raises(ProtocolError, match="repeated"):
        request.get("client_address")
