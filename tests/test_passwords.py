import base64
import hashlib
import math
import re
import shutil
import subprocess

import pytest

from mailaccess import passwords


def independent_ssha512_check(password: str, stored: str) -> bool:
    """RFC 2307-style {SSHA512} verified from first principles, not with passwords.verify."""
    assert stored.startswith("{SSHA512}")
    raw = base64.b64decode(stored.removeprefix("{SSHA512}"))
    digest, salt = raw[:64], raw[64:]
    return hashlib.sha512(password.encode("utf-8") + salt).digest() == digest


def test_generated_password_is_grouped_and_has_no_look_alike_characters() -> None:
    text = passwords.generate()
    assert re.fullmatch(r"[a-z2-9]{5}(-[a-z2-9]{5}){3}", text)
    assert not set(text) & set("01lio")


def test_generated_passwords_carry_at_least_80_bits() -> None:
    assert passwords.entropy_bits() >= 80
    assert len({passwords.generate() for _ in range(1000)}) == 1000


def test_stored_hash_verifies_the_password_by_an_independent_implementation() -> None:
    text = passwords.generate()
    stored = passwords.dovecot_hash(text)
    assert independent_ssha512_check(text, stored)
    assert not independent_ssha512_check(text + "x", stored)


def test_hashes_are_salted() -> None:
    assert passwords.dovecot_hash("same") != passwords.dovecot_hash("same")


def test_verify_rejects_wrong_password_and_garbage() -> None:
    stored = passwords.dovecot_hash("right")
    assert passwords.verify("right", stored)
    assert not passwords.verify("wrong", stored)
    assert not passwords.verify("right", "{SSHA512}not base64!")
    assert not passwords.verify("right", "{PLAIN}right")


def test_lookup_key_is_what_dovecot_computes_as_sha256_of_the_password() -> None:
    assert passwords.lookup_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.e2e
def test_dovecot_itself_verifies_the_stored_hash() -> None:
    doveadm = shutil.which("doveadm", path="/usr/bin:/usr/sbin:/usr/local/bin")
    if doveadm is None:
        pytest.skip("doveadm (dovecot-core) is not installed")
    text = passwords.generate()
    stored = passwords.dovecot_hash(text)
    ok = subprocess.run([doveadm, "pw", "-t", stored, "-p", text], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([doveadm, "pw", "-t", stored, "-p", "wrong"], capture_output=True)
    assert bad.returncode != 0


def test_entropy_figure_matches_the_alphabet() -> None:
    assert math.isclose(passwords.entropy_bits(), 20 * math.log2(31))
