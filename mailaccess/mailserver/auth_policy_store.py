"""The auth policy's Redis side: one round trip per request.

One write carries the mailbox's script (its cached state and every counter of it, under its
hash tag, so one Redis Cluster slot) and what concerns the client network (failed logins from
that address across all mailboxes: another slot, so a command of its own). On one Redis both
go in one round trip; on a cluster they go to two nodes at once.

Keys of a mailbox (``mp:{address}:...``):
- ``state``, ``gen``: the cached database state and its invalidation counter (``state.py``
  loads it from the database and invalidates it; its encoding is below);
- ``check:<protocol>:<program>``: a program's check bucket (tokens, when, current check); the
  program is ``auth_policy.check_program``'s, its burst the script's ARGV 7;
- ``conns``: successful IMAP/POP3 connections, a leaky bucket draining at the hourly limit;
- ``fails``: the distinct wrong passwords (Dovecot's truncated ``pwhash``), by when;
- ``nets``: networks that logged in successfully, by last time (the owner's usual places);
- ``used:<protocol>:<network>:<password>``: when the last use of that password was written to
  the database (per password: a phone and a laptop behind one home router are two devices).
And ``mp:{net:<network>}:fails``: the distinct (login, wrong password) pairs from a network.

Times come from the caller (seconds since the epoch): the policy processes' clocks are kept
by NTP, and a caller's clock makes the rules testable without sleeping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from redis.exceptions import NoScriptError

from mailaccess import counters
from mailaccess.mailserver.auth_policy import (
    CHECKING_PROTOCOLS,
    Counters,
    LoginLimits,
    LoginRequest,
    MailboxState,
    PasswordScope,
    check_program,
)
from mailaccess.mailserver.redis_pipeline import (
    RedisPipeline,
    join_command,
    pack_command,
    pack_parts,
)
from mailaccess.models import Protocol

FAILURES_LUA = """
-- Failures are a sorted set: member (a distinct wrong password), score (when it last came).
-- Each counts for the window after it came; past the limit, the lock ends when enough of
-- them have aged out. Kept to twice the limit, so a flood cannot grow it.
local function failures(key, now, limit, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count < limit then return count, 0 end
  local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  return count, math.ceil(tonumber(oldest[2]) + window - now)
end
local function fail(key, member, now, limit, window)
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYRANK', key, 0, -(2 * limit + 1))
  redis.call('EXPIRE', key, window)
end
"""

MAILBOX_SCRIPT = (
    FAILURES_LUA
    + """
-- KEYS: 1 state, 2 gen, 3 check, 4 fails, 5 nets, 6 conns, 7 used
-- ARGV: 1 mode (allow|success|failure), 2 now, 3 network or '', 4 failure member,
--       5 checking (1 for IMAP/POP3), 6 check interval, 7 burst (the program's or the
--       network's, see auth_policy.check_program), 8 check window,
--       9 connections per check, 10 faulty connections per hour, 11 mailbox failure limit,
--       12 failure window, 13 known-network seconds, 14 use record interval
local state = redis.call('HGETALL', KEYS[1])
if #state == 0 then
  return {'miss', redis.call('GET', KEYS[2]) or ''}
end
local fields = {}
for i = 1, #state, 2 do fields[state[i]] = state[i + 1] end
local mode, now, net = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local limit, failure_window = tonumber(ARGV[11]), tonumber(ARGV[12])
if fields['id'] == '0' then
  -- An unknown address collects wrong passwords and is locked like a mailbox: a lock that
  -- only existing mailboxes could get would tell a stranger which addresses exist.
  if mode == 'allow' then
    local fails, ttl = failures(KEYS[4], now, limit, failure_window)
    return {'state', state, 0, ARGV[7], fails, ttl, 0}
  end
  if mode == 'failure' then fail(KEYS[4], ARGV[4], now, limit, failure_window) end
  return {'state', state}
end

local checking = ARGV[5] == '1' and net ~= ''
local interval, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
local window, per_check = tonumber(ARGV[8]), tonumber(ARGV[9])

local tokens, start, conns = burst, 0, 0
if checking then
  local c = redis.call('HMGET', KEYS[3], 'tokens', 'ts', 'start', 'conns')
  if c[1] then
    tokens = math.min(burst, tonumber(c[1]) + (now - tonumber(c[2])) / interval)
    start, conns = tonumber(c[3]), tonumber(c[4])
  end
end
local open = conns > 0 and conns < per_check and (now - start) < window

if mode == 'allow' then
  local fails, ttl = failures(KEYS[4], now, limit, failure_window)
  local known = 0
  if net ~= '' then
    local seen = redis.call('ZSCORE', KEYS[5], net)
    if seen and tonumber(seen) >= now - tonumber(ARGV[13]) then known = 1 end
  end
  return {'state', state, open and 1 or 0, tostring(tokens), fails, ttl, known}
end

if mode == 'failure' then
  fail(KEYS[4], ARGV[4], now, limit, failure_window)
  return {'state', state}
end

-- success: only while access is on (a nologin user's report says success too)
if fields['on'] ~= '1' then return {'state', state, 0, 0} end
if net ~= '' then
  local known_seconds = tonumber(ARGV[13])
  redis.call('ZADD', KEYS[5], now, net)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - known_seconds)
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -21)
  redis.call('EXPIRE', KEYS[5], known_seconds)
end
local faulty = 0
if ARGV[5] == '1' then
  if checking then
    if open then
      conns = conns + 1
    else
      tokens, start, conns = math.max(0, tokens - 1), now, 1
    end
    redis.call('HSET', KEYS[3], 'tokens', tostring(tokens), 'ts', tostring(now),
               'start', tostring(start), 'conns', conns)
    redis.call('EXPIRE', KEYS[3], math.ceil(burst * interval + window))
  end
  local limit = tonumber(ARGV[10])
  local b = redis.call('HMGET', KEYS[6], 'level', 'ts')
  local level = 0
  if b[1] then
    level = math.max(0, tonumber(b[1]) - (now - tonumber(b[2])) * limit / 3600)
  end
  level = level + 1
  if level > limit then
    -- Reported once: the block that follows switches access off, and a later switch-on
    -- starts from an empty bucket.
    faulty, level = 1, 0
  end
  redis.call('HSET', KEYS[6], 'level', tostring(level), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[6], 3600)
end
local record, last = 0, redis.call('GET', KEYS[7])
if not last or now - tonumber(last) >= tonumber(ARGV[14]) then
  record = 1
  redis.call('SET', KEYS[7], tostring(now), 'EX', ARGV[14])
end
return {'state', state, record, faulty}
"""
)

NETWORK_SCRIPT = (
    FAILURES_LUA
    + """
-- KEYS: 1 the network's failures; ARGV: 1 mode, 2 member, 3 limit, 4 window, 5 now
local now, limit, window = tonumber(ARGV[5]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[1] == 'failure' then
  fail(KEYS[1], ARGV[2], now, limit, window)
  return {0, 0}
end
local count, wait = failures(KEYS[1], now, limit, window)
return {count, wait}
"""
)


# The cached state of a mailbox (``state.py`` loads it from the database).
STORE_SCRIPT = """
-- KEYS[1] state, KEYS[2] generation; ARGV[1] generation seen before the load, ARGV[2] TTL,
-- ARGV[3...] field, value, ...
local generation = redis.call('GET', KEYS[2]) or ''
if generation ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def encode_state(state: MailboxState | None) -> list[str]:
    """Hash fields; an unknown login is cached too (id 0), so a stranger costs no SQL."""
    if state is None:
        return ["id", "0"]
    return [
        "id",
        str(state.mailbox_id),
        "on",
        "1" if state.enabled else "0",
        "block",
        state.block_reason,
        "plan",
        state.plan,
        "lang",
        state.language,
        *[
            field
            for password in state.passwords
            for field in (
                f"pw:{password.id}",
                # key:protocols[:networks]: a key and protocols hold no colon, so the rest
                # (IPv6 ranges do) is the fence, space-separated.
                f"{password.key}:{','.join(sorted(p.value for p in password.protocols))}"
                + (f":{' '.join(password.networks)}" if password.networks else ""),
            )
        ],
    ]


def _decode_passwords(values: dict[str, str]) -> tuple[PasswordScope, ...]:
    scopes = []
    for name, value in values.items():
        if not name.startswith("pw:"):
            continue
        key, _sep, rest = value.partition(":")
        protocols, _sep, networks = rest.partition(":")
        scopes.append(
            PasswordScope(
                id=int(name[3:]),
                key=key,
                protocols=frozenset(Protocol(p) for p in protocols.split(",") if p),
                networks=tuple(networks.split()),
            )
        )
    return tuple(sorted(scopes, key=lambda scope: scope.id))


def decode_state(fields: list[str]) -> MailboxState | None:
    return _decode_state(tuple(fields))


# Every request decodes a mailbox's state, and a mailbox's state rarely changes: the cached
# (immutable) object saves building a dict and a dataclass per request.
@lru_cache(maxsize=65536)
def _decode_state(fields: tuple[str, ...]) -> MailboxState | None:
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    mailbox_id = int(values.get("id", "0") or 0)
    if not mailbox_id:
        return None
    return MailboxState(
        mailbox_id=mailbox_id,
        enabled=values.get("on") == "1",
        block_reason=values.get("block", ""),
        plan=values.get("plan", ""),
        language=values.get("lang", ""),
        passwords=_decode_passwords(values),
    )


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)


class Miss:
    """The state was not cached; ``generation`` is what the store must compare."""

    def __init__(self, generation: str) -> None:
        self.generation = generation


@dataclass(frozen=True)
class Reported:
    state: MailboxState | None
    record_use: bool = False
    faulty: bool = False


class PolicyStore:
    """Runs the scripts. One per process and event loop (it holds the connection pool)."""

    scripts = {
        "mailbox": MAILBOX_SCRIPT,
        "network": NETWORK_SCRIPT,
        "store": STORE_SCRIPT,
    }

    # Logins whose key names are kept (``_keys``): past this, the cache starts over.
    KEY_CACHE_SIZE = 10_000

    def __init__(self, client: RedisPipeline, limits: LoginLimits) -> None:
        self.client = client
        self.limits = limits
        self.sha = {name: _sha(text) for name, text in self.scripts.items()}
        # The parts of the hot path's commands that never change, encoded once: EVALSHA,
        # the script and its key count, and the limits the mailbox script is given.
        self._evalsha = {
            "mailbox": pack_parts("EVALSHA", self.sha["mailbox"], 7),
            "network": pack_parts("EVALSHA", self.sha["network"], 1),
        }
        # Two sets, by whether the check bucket is one program's or a network's (its burst):
        # picking one costs the hot path nothing, where another argument would cost encoding.
        self._mailbox_limits = {
            by_program: pack_parts(
                limits.check_interval,
                limits.program_check_burst if by_program else limits.check_burst,
                limits.check_window,
                limits.connections_per_check,
                limits.faulty_connections_per_hour,
                limits.mailbox_failures,
                limits.failure_window,
                limits.known_ip_days * 86400,
                limits.use_record_interval,
            )
            for by_program in (True, False)
        }
        self._key_cache: dict[str, tuple[str, str, str, str, str]] = {}

    async def load_scripts(self) -> None:
        for text in self.scripts.values():
            await self.client.script_load(text)

    async def _run(self, commands: list[bytes]) -> list[Any]:
        """Send the encoded commands in one write; replies in order, errors raised.

        After a Redis restart the scripts are gone: load them and go again.
        """
        for attempt in range(2):
            results = await self.client.send_commands(commands)
            if not any(isinstance(result, NoScriptError) for result in results) or attempt:
                break
            await self.load_scripts()
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)

    def _keys(self, login: str) -> tuple[str, str, str, str, str]:
        """A mailbox's fixed key names: state, gen, fails, nets, conns."""
        keys = self._key_cache.get(login)
        if keys is None:
            if len(self._key_cache) >= self.KEY_CACHE_SIZE:
                self._key_cache.clear()
            keys = (
                counters.state_key(login),
                counters.generation_key(login),
                counters.failures_key(login),
                counters.networks_key(login),
                counters.connections_key(login),
            )
            self._key_cache[login] = keys
        return keys

    def _mailbox_call(self, request: LoginRequest, mode: str, now: float) -> bytes:
        login = request.login
        protocol = request.protocol.value if request.protocol else request.service
        network = request.network or ""
        state, generation, fails, nets, conns = self._keys(login)
        password = request.app_password_id or request.password_key
        program, by_program = check_program(request)
        variable = pack_parts(
            # KEYS
            state,
            generation,
            counters.check_key(login, protocol, program),
            fails,
            nets,
            conns,
            counters.used_key(login, protocol, network, password),
            # ARGV 1-5; 6-14 are the limits
            mode,
            repr(now),
            network,
            request.pwhash or request.session_id or repr(now),
            "1" if request.protocol in CHECKING_PROTOCOLS else "0",
        )
        return join_command(
            24, self._evalsha["mailbox"], variable, self._mailbox_limits[by_program]
        )

    def _network_key(self, request: LoginRequest) -> str | None:
        return None if request.network is None else counters.network_failures_key(request.network)

    def _network_call(self, key: str, request: LoginRequest, mode: str, now: float) -> bytes:
        member = f"{request.login}\0{request.pwhash or request.session_id}"
        limits = self.limits
        arguments = pack_parts(
            key, mode, member, limits.ip_failures, limits.failure_window, repr(now)
        )
        return join_command(9, self._evalsha["network"], arguments)

    async def store_state(self, login: str, generation: str, state: MailboxState | None) -> bool:
        ttl = self.limits.state_ttl if state is not None else min(60, self.limits.state_ttl)
        keys = self._keys(login)[:2]
        args = [generation, ttl, *encode_state(state)]
        [stored] = await self._run([pack_command("EVALSHA", self.sha["store"], 2, *keys, *args)])
        return bool(stored)

    async def allow_after_load(
        self, request: LoginRequest, now: float, miss: Miss, loaded: MailboxState | None
    ) -> tuple[MailboxState | None, Counters]:
        """``allow`` again after a miss, the state just loaded from the database stored
        first; the network's counters were read by the first ``allow``."""
        await self.store_state(request.login, miss.generation, loaded)
        found, counters = await self.allow(request, now, with_network=False)
        if isinstance(found, Miss):
            # Invalidated again while loading: decide on what the database just said.
            return loaded, Counters()
        return found, counters

    async def report_after_load(
        self, request: LoginRequest, mode: str, now: float, miss: Miss, loaded: MailboxState | None
    ) -> Reported | Miss:
        """``report`` again after a miss, the state just loaded stored first."""
        await self.store_state(request.login, miss.generation, loaded)
        return await self.report(request, mode, now, with_network=False)

    async def allow(
        self, request: LoginRequest, now: float, *, with_network: bool = True
    ) -> tuple[MailboxState | Miss | None, Counters]:
        network = self._network_key(request) if with_network else None
        commands = [self._mailbox_call(request, "allow", now)]
        if network:
            # The network's failures: a plain ZCOUNT, cheaper for Redis than a script. Only
            # past the limit (a refusal) does the script run to say when the lock ends.
            since = repr(now - self.limits.failure_window)
            commands.append(pack_command("ZCOUNT", network, since, "+inf"))
        results = await self._run(commands)
        ip_failures, ip_wait = (int(results[1]) if network else 0), 0
        if network and ip_failures >= self.limits.ip_failures:
            [[ip_failures, ip_wait]] = await self._run(
                [self._network_call(network, request, "allow", now)]
            )
        reply = results[0]
        if reply[0] == "miss":
            return Miss(reply[1]), Counters(ip_failures=ip_failures, ip_lock_seconds=ip_wait)
        state = decode_state(reply[1])
        if state is None:
            # An unknown address: its wrong passwords count as a mailbox's do (the script).
            return None, Counters(
                mailbox_failures=int(reply[4]),
                mailbox_lock_seconds=max(0, int(reply[5])),
                ip_failures=int(ip_failures),
                ip_lock_seconds=max(0, int(ip_wait)),
            )
        return state, Counters(
            check_open=bool(reply[2]),
            check_tokens=float(reply[3]),
            mailbox_failures=int(reply[4]),
            mailbox_lock_seconds=max(0, int(reply[5])),
            ip_failures=int(ip_failures),
            ip_lock_seconds=max(0, int(ip_wait)),
            known_network=bool(reply[6]),
        )

    async def report(
        self, request: LoginRequest, mode: str, now: float, *, with_network: bool = True
    ) -> Reported | Miss:
        """Count a report; ``mode`` is "success" or "failure"."""
        commands = [self._mailbox_call(request, mode, now)]
        network = self._network_key(request) if with_network else None
        if network and mode == "failure":
            commands.append(self._network_call(network, request, mode, now))
        reply = (await self._run(commands))[0]
        if reply[0] == "miss":
            return Miss(reply[1])
        state = decode_state(reply[1])
        if mode != "success" or state is None:
            return Reported(state)
        return Reported(state, record_use=bool(reply[2]), faulty=bool(reply[3]))
