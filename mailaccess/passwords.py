"""Mail-program (app) passwords: generation and the hash format Dovecot verifies.

Why ``{SSHA512}`` (salted SHA-512) and not a slow KDF such as bcrypt or Argon2: a slow KDF
protects *people's* passwords, which are guessable, by making each guess expensive. These
passwords are not chosen by people: 20 symbols drawn by ``secrets`` from a 31-symbol alphabet
carry 20 * log2(31) = 99 bits of entropy, so an attacker holding the hashes would need about
2**98 SHA-512 evaluations on average, far beyond any offline attack, fast hash or not. The
salt stops one precomputed table from serving every row. Meanwhile Dovecot verifies the hash
on every IMAP, POP3 and SMTP login, thousands a second: SSHA512 costs about a microsecond
there, ``{BLF-CRYPT}`` at cost 10 about 70 ms and ``{ARGON2ID}`` about 110 ms (Dovecot 2.3.19
of Debian 12 verifying each scheme's hash, as measured when this was chosen).
"""

import base64
import hashlib
import hmac
import secrets

# Lower-case letters and digits without the look-alikes 0/o, 1/l/i: easy to read aloud and
# to type on a phone keyboard.
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
GROUPS = 4
GROUP_LENGTH = 5
SEPARATOR = "-"
SALT_BYTES = 16
SCHEME = "{SSHA512}"


def generate() -> str:
    """A new password in groups for reading, e.g. ``k7m2q-...``; the dashes are part of it."""
    return SEPARATOR.join(
        "".join(secrets.choice(ALPHABET) for _ in range(GROUP_LENGTH)) for _ in range(GROUPS)
    )


def entropy_bits() -> float:
    import math

    return GROUPS * GROUP_LENGTH * math.log2(len(ALPHABET))


def dovecot_hash(password: str, salt: bytes | None = None) -> str:
    """``{SSHA512}`` + base64(sha512(password + salt) + salt), as Dovecot 2.3 stores it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.sha512(password.encode() + salt).digest()
    return SCHEME + base64.b64encode(digest + salt).decode("ascii")


def verify(password: str, stored: str) -> bool:
    if not stored.startswith(SCHEME):
        return False
    try:
        raw = base64.b64decode(stored[len(SCHEME) :], validate=True)
    except ValueError:
        return False
    digest, salt = raw[:64], raw[64:]
    candidate = hashlib.sha512(password.encode() + salt).digest()
    return hmac.compare_digest(candidate, digest)


def lookup_key(password: str) -> str:
    """Hex SHA-256 of the password, the same as Dovecot's ``%{sha256:password}``.

    It lets the passdb query pick the one matching row among a mailbox's passwords. For a
    99-bit random password an unsalted SHA-256 reveals nothing that can be guessed back.
    """
    return hashlib.sha256(password.encode()).hexdigest()


# Hex digits of the lookup key that Dovecot's auth policy sends before the password is checked
# (``%0.4{sha256:password}`` in deploy/dovecot/dovecot.conf): see
# mailaccess/mailserver/auth_policy.py for why so few, and why they must differ between the
# live passwords of one mailbox.
POLICY_KEY_HEX = 4


def policy_key(password: str) -> str:
    return lookup_key(password)[:POLICY_KEY_HEX]
