"""The Redis side of the SMTP sending limits: the rolling log of sent messages and bounces.

Every mailbox has a sorted set of the messages it sent through SMTP in the last hour (score:
the time in milliseconds). Counting "the last 60 minutes" from it is what users mean by "15
an hour"; a clock-hour counter would allow 30 messages across 10:59-11:01. Checking and
counting happen inside one Lua script, which Redis runs atomically: two connections of one
mailbox cannot both see "14 sent" and both send the 15th. (A DATA check counts nothing: it
asks for a plain count of the hour first, and runs the script only when that count reaches
a limit.)

Times come from the daemon (so every daemon process agrees, and tests can travel in time);
markers hold their own time and are compared with it, and their Redis expiry only cleans up.

The key names are public (``mailaccess/counters.py``, which the panel reads through); the
scripts and the packed commands of the daemon's hot path are here. Keys of one mailbox share a
hash tag, so the script may touch several of them on Redis Cluster too.
"""

from __future__ import annotations

import os
from itertools import count

from mailaccess.counters import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    bounce_reported_key,
    bounces_key,
    hourly_blocked_key,
    last_sent_key,
    sent_key,
)
from mailaccess.mailserver.redis_pipeline import join_command, pack_parts

__all__ = ["DAY_MS", "HOUR_MS", "MINUTE_MS", "bounces_key", "last_sent_key", "sent_key"]

# KEYS: sent log, "blocked in this window" marker, last-sent stamp.
# ARGV: count (1 at END-OF-MESSAGE, 0 at DATA), now, minute start, hour start, per minute,
# per hour (0: no limit), log member.
# Returns 0 when the message may pass; otherwise {verdict, ms until a retry helps}, and for
# 'hour_block' also the messages of the last hour.
#
# Every check runs this script, and Redis, one thread shared by every daemon, is what the
# checks of the whole provider queue for: the common answers take the fewest calls. A window
# is counted with ZCOUNT (no trimming before each check: the log is trimmed when a message
# is added), and the minute only when the hour holds as many messages as its limit (the
# minute's messages are among the hour's); only over a limit is the message that decides the
# retry time looked up (a limit of n is reached while the n-th newest message is inside its
# window, and a retry helps when it leaves it). A bare 0 for "pass" spares Redis building a
# reply table.
#
# Over the hourly limit the first message blocks access; the marker then lives as long as
# the window that caused it, so further messages of the same window (a mail program still
# connected, or the owner switching access on again at once) are deferred until the window
# has room, instead of blocking again for the same excess.
SEND_SCRIPT = """
local sent, blocked, last_sent = KEYS[1], KEYS[2], KEYS[3]
local per_minute = tonumber(ARGV[5])
local per_hour = tonumber(ARGV[6])
local in_hour = redis.call('ZCOUNT', sent, '(' .. ARGV[4], '+inf')
if per_hour > 0 and in_hour >= per_hour then
  local now = tonumber(ARGV[2])
  local nth = redis.call('ZRANGE', sent, per_hour - 1, per_hour - 1, 'REV', 'WITHSCORES')
  local retry = tonumber(nth[2]) + 3600000 - now
  local blocked_at = tonumber(redis.call('GET', blocked) or '0')
  if now - blocked_at >= 3600000 then
    redis.call('SET', blocked, ARGV[2], 'PX', 3600000)
    return {'hour_block', retry, in_hour}
  end
  return {'hour', retry}
end
if per_minute > 0 and in_hour >= per_minute
    and redis.call('ZCOUNT', sent, '(' .. ARGV[3], '+inf') >= per_minute then
  local nth = redis.call('ZRANGE', sent, per_minute - 1, per_minute - 1, 'REV', 'WITHSCORES')
  return {'minute', tonumber(nth[2]) + 60000 - tonumber(ARGV[2])}
end
if ARGV[1] == '1' then
  redis.call('ZADD', sent, ARGV[2], ARGV[7])
  redis.call('ZREMRANGEBYSCORE', sent, '-inf', ARGV[4])
  redis.call('PEXPIRE', sent, 3600000)
  redis.call('SET', last_sent, ARGV[2], 'PX', 86400000)
end
return 0
"""

# KEYS: bounce log, last-sent stamp, "reported" marker. ARGV: now, window start, tag, the
# minute the bounced message was sent (from its tag), limit.
# Only bounces of the mailbox's own messages reach this script: the daemon counts a null-sender
# message after DATA whose one recipient is a tagged envelope sender it verified
# (``bounce_tags``). The log's members are the tags, scored with the time their message was
# sent: a tag counts once (ZADD NX), and only while its message is less than an hour old
# (older tags are refused by ``bounce_tags.verify`` and trimmed here). So the log counts the
# distinct messages of the last hour that bounced, which nobody but the mailbox's own
# authenticated sender can raise. The log keeps at most `limit` entries, so a flood costs
# no memory; a trimmed tag added again is the lowest score and trimmed again at once.
# The last-sent stamp is implied by a valid tag; it stays as a cheap second check.
BOUNCE_SCRIPT = """
local bounces, last_sent, reported = KEYS[1], KEYS[2], KEYS[3]
local limit = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', bounces, '-inf', ARGV[2])
redis.call('ZADD', bounces, 'NX', ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYRANK', bounces, 0, -(limit + 1))
redis.call('PEXPIRE', bounces, 3720000)
local n = redis.call('ZCARD', bounces)
local now = tonumber(ARGV[1])
local sent_at = tonumber(redis.call('GET', last_sent) or '0')
local reported_at = tonumber(redis.call('GET', reported) or '0')
if n >= limit and now - sent_at < 86400000 and now - reported_at >= 3600000 then
  redis.call('SET', reported, ARGV[1], 'PX', 3600000)
  return {'block', n}
end
return {'ok', n}
"""


def send_keys(address: str) -> list[str]:
    return [sent_key(address), hourly_blocked_key(address), last_sent_key(address)]


def bounce_keys(address: str) -> list[str]:
    return [bounces_key(address), last_sent_key(address), bounce_reported_key(address)]


_sequence = count()
# The process id, read once per process (the daemon forks its server processes after import).
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def unique_member(now_ms: int) -> str:
    """A log entry name no other message of this or another daemon process can share."""
    return f"{now_ms}:{_pid[0]}:{next(_sequence)}"


def send_args(
    *, count_it: bool, now_ms: int, per_minute: int | None, per_hour: int | None
) -> list[str | int]:
    return [
        1 if count_it else 0,
        now_ms,
        now_ms - MINUTE_MS,
        now_ms - HOUR_MS,
        per_minute or 0,
        per_hour or 0,
        unique_member(now_ms),
    ]


def packed_send_keys(address: str) -> bytes:
    """``send_keys`` as the script's key count and keys in Redis's protocol: a mailbox's keys
    never change, so the daemon packs them once and keeps them with the cached mailbox."""
    keys = send_keys(address)
    return pack_parts(len(keys), *keys)


def packed_limits(per_minute: int | None, per_hour: int | None) -> bytes:
    return pack_parts(per_minute or 0, per_hour or 0)


# Parts of a send command after EVALSHA and the SHA: the key count, 3 keys, 7 arguments.
SEND_PARTS = 11


def packed_send_tail(packed_keys: bytes, *, count_it: bool, now_ms: int, limits: bytes) -> bytes:
    """``packed_send_keys`` and ``send_args`` in Redis's protocol, for ``RedisPipeline``: the
    constant parts (keys, limits) packed once, only the times and the member per check."""
    return b"%s%s%s%s" % (
        packed_keys,
        pack_parts(1 if count_it else 0, now_ms, now_ms - MINUTE_MS, now_ms - HOUR_MS),
        limits,
        pack_parts(b"%d:%d:%d" % (now_ms, _pid[0], next(_sequence))),
    )


def packed_hour_count_prefix(address: str) -> bytes:
    """The start of ``packed_hour_count``'s command, packed once per mailbox as its keys are."""
    return pack_parts("ZCOUNT", sent_key(address))


def packed_hour_count(prefix: bytes, now_ms: int) -> bytes:
    """ZCOUNT of the messages sent in the last hour, in Redis's protocol: the DATA check's
    first question (see ``smtp_policy``)."""
    return join_command(4, prefix, pack_parts(b"(%d" % (now_ms - HOUR_MS), b"+inf"))
