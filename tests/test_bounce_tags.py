"""Signed envelope senders: what Postfix's cleanup is told, and which bounces count."""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from mailaccess.mailserver import bounce_tags, policy_server
from mailaccess.mailserver.smtp_policy import now_ms

NOW = 1_794_218_400_000  # Monday 9 November 2026, 10:00 UTC
ALICE = "alice@inbox.lv"


def test_a_tag_verifies_for_its_mailbox_for_an_hour() -> None:
    tag = bounce_tags.tag_sender(ALICE, NOW)
    assert tag is not None and tag.startswith("prvs=") and tag.endswith(f"={ALICE}")

    verified = bounce_tags.verify(tag, NOW + 59 * 60_000)
    assert verified is not None
    assert verified[0] == ALICE and verified[2] == NOW
    # Some servers change the case of an address they bounce to.
    assert bounce_tags.verify(tag.upper(), NOW) == verified
    # An hour later it is not a bounce of a recent message any more.
    assert bounce_tags.verify(tag, NOW + 61 * 60_000) is None


def test_two_messages_of_one_minute_get_different_tags() -> None:
    assert bounce_tags.tag_sender(ALICE, NOW, nonce=1) != bounce_tags.tag_sender(
        ALICE, NOW, nonce=2
    )


def test_a_stranger_cannot_make_or_move_a_tag() -> None:
    tag = bounce_tags.tag_sender(ALICE, NOW)
    assert tag is not None
    stamp_nonce, mac = tag[5:17], tag[17:29]
    guessed = "0" * 12 if mac != "0" * 12 else "1" * 12
    assert bounce_tags.verify(f"prvs={stamp_nonce}{guessed}={ALICE}", NOW) is None
    # The same signature for another mailbox, or for another minute.
    assert bounce_tags.verify(tag.replace(ALICE, "bob@inbox.lv"), NOW) is None
    later = f"{int(stamp_nonce[:7], 16) + 1:07x}"
    assert bounce_tags.verify(f"prvs={later}{tag[12:]}", NOW) is None
    # Plain addresses and other shapes are not tags.
    for address in (ALICE, f"prvs={stamp_nonce}={ALICE}", f"{tag}.example", "prvs=x=@"):
        assert bounce_tags.verify(address, NOW) is None
    # A tag from the future beyond clock skew is not believed either.
    assert bounce_tags.verify(bounce_tags.tag_sender(ALICE, NOW + 10 * 60_000) or "", NOW) is None


def test_another_secret_key_makes_every_tag_invalid() -> None:
    tag = bounce_tags.tag_sender(ALICE, NOW)
    assert tag is not None
    with override_settings(SECRET_KEY="another-secret-key-for-this-test-0123456789abcdef"):
        assert bounce_tags.verify(tag, NOW) is None


def test_addresses_that_cannot_be_tagged_go_out_as_they_are() -> None:
    assert bounce_tags.tag_sender("", NOW) is None
    assert bounce_tags.tag_sender("no-domain", NOW) is None
    # Not tagged twice, and not past 64 characters of local part (RFC 5321).
    tag = bounce_tags.tag_sender(ALICE, NOW)
    assert tag is not None and bounce_tags.tag_sender(tag, NOW) is None
    assert bounce_tags.tag_sender("a" * 34 + "@inbox.lv", NOW) is not None
    assert bounce_tags.tag_sender("a" * 35 + "@inbox.lv", NOW) is None


async def ask_socketmap(*chunks: bytes) -> bytes:
    """Write to a served table as Postfix's cleanup does, in the given pieces; read until EOF
    or until no more answers come."""
    server = await policy_server.serve_sender_tags("127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)
        answer = b""
        try:
            async with asyncio.timeout(1):
                while data := await reader.read(4096):
                    answer += data
        except TimeoutError:
            pass
        writer.close()
        return answer
    finally:
        server.close()


def netstring(text: str) -> bytes:
    return b"%d:%s," % (len(text), text.encode())


def read_netstrings(data: bytes) -> list[str]:
    found = []
    while data:
        length, _, rest = data.partition(b":")
        found.append(rest[: int(length)].decode())
        assert rest[int(length) : int(length) + 1] == b","
        data = rest[int(length) + 1 :]
    return found


@pytest.mark.parametrize("piece", [None, 7])
def test_the_socketmap_answers_postfixs_lookups_on_one_connection(piece: int | None) -> None:
    requests = netstring("bounce-tag alice@inbox.lv") + netstring("bounce-tag postmaster")
    # Postfix's writes may arrive in pieces: only whole netstrings are answered.
    chunks = (
        [requests[i : i + piece] for i in range(0, len(requests), piece)] if piece else [requests]
    )

    tagged, not_found = read_netstrings(asyncio.run(ask_socketmap(*chunks)))

    assert tagged.startswith("OK prvs=") and tagged.endswith("=alice@inbox.lv")
    assert bounce_tags.verify(tagged[3:], now_ms()) is not None
    assert not_found == "NOTFOUND "


def test_the_socketmap_hangs_up_on_garbage() -> None:
    assert asyncio.run(ask_socketmap(b"GET / HTTP/1.1\r\n\r\n")) == b""
