"""What the SMTP policy daemon answers Postfix: sending limits and hijack detection.

Submission (the mail programs' port 587/465, the sender signed in with SMTP AUTH):

- at DATA, a read-only check: over a limit, the client is refused before it sends the body
  (first one plain count of the last hour's messages; the script only when that count
  reaches a limit);
- at END-OF-MESSAGE, the same check and the count, in one atomic Lua script, so concurrent
  connections of one mailbox cannot overshoot. END-OF-MESSAGE is the authoritative check:
  it also sees messages sent with BDAT, which skips the DATA restrictions.

A message counts once, however many recipients it has: the published limit is "15 messages
(vēstules) an hour", which is what a user counts when writing to three colleagues at once.
The recipients of one message are bounded by Postfix's ``smtpd_recipient_limit`` on the
submission service (see ``deploy/postfix-policy.md``), and a spam run shows up as a flood of
bounces, which blocks the mailbox as compromised.

Inbound (port 25, mail arriving for our mailboxes, asked at END-OF-MESSAGE): a bounce (null
sender, MAILER-DAEMON) counts only when it is a whole message whose one recipient is a tagged
envelope sender that the mailbox's own authenticated submission minted (``bounce_tags``:
signed, at most an hour old, each tag once). A flood of them, 30 distinct messages of the
last hour, means the mailbox's password is being used for spam. Nothing a stranger sends on
port 25 counts: RCPTs without DATA are never asked about, bounces to the plain address or to
a tag whose HMAC does not verify are ignored, and a replayed tag counts once (the reasoning is
in ``bounce_tags`` and deploy/postfix-policy.md). Inbound mail is never refused here: the
owner should see the bounces.

Nothing here runs SQL per check: mailboxes and plan limits are cached in the process for a
minute (``SMTP_POLICY_CACHE_SECONDS``), so a change of plan or of the limits in the admin
reaches the daemon within that time. A plan change lifts the limits only days later anyway.

A blocked or switched-off mailbox is refused at DATA and at END-OF-MESSAGE, with its reason:
a session that authenticated before the block (or while the auth policy was down) must not
send another message. The cached mailbox carries its access state, so the common path pays
one attribute test and no Redis command. An access change must not wait for the cache to
expire: the access actions publish the addresses on ``ACCESS_CHANNEL`` after commit (in the
same Redis pipeline that invalidates the auth policy's state, ``state.invalidate_addresses``)
and every daemon process, subscribed (``follow_access_changes``), forgets those mailboxes at
once. While the subscription is down nothing is forgotten, so on (re)subscribing the whole
cache is dropped, and the cache's TTL bounds the rest.

A check whose mailbox and limits are cached (nearly every check) runs no coroutine: one
Redis command through the process's ``RedisPipeline`` (two for a DATA check that reaches a
limit), whose reply callback hands the answer to the server, or none while the mailbox is
deferred for its per-minute limit. Only a cache miss takes a task, which fills the cache and
checks again.

The decision itself (what a request asks, what a cached mailbox and the counters' reply mean)
is pure and lives in ``smtp_decision.py``; what a block means (the third hourly block of a day
is a compromised mailbox) is the access actions' rule (``actions.block_for_hourly_limit``).
This module does the I/O: the cache, Redis, and the actions in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Literal

from django.conf import settings
from django.db import close_old_connections
from redis import asyncio as aioredis

from accounts.models import Mailbox
from audit.models import Actor
from common import metrics
from common.logging import Throttle, log_event
from common.redis_urls import subscription_urls
from mailaccess import actions
from mailaccess.mailserver import bounce_tags, sending_counters
from mailaccess.mailserver.postfix_policy import PostfixRequest
from mailaccess.mailserver.redis_pipeline import RedisPipeline, Script
from mailaccess.mailserver.smtp_decision import (
    DUNNO,
    UNKNOWN_PLAN_LIMITS,
    Check,
    PlanLimits,
    Sender,
    bounce_flood,
    deferred_reply,
    fallback_action,
    over_limit,
    refusal,
    refusal_reason,
    what_to_check,
)
from mailaccess.mailserver.state import ACCESS_CHANNEL, changed_logins
from mailaccess.models import BlockReason
from mailaccess.sending_limits import Limits, plan_limits

log = logging.getLogger(__name__)

ACTOR_LABEL = "smtp-policy-daemon"


def now_ms() -> int:
    return int(time.time() * 1000)


def _load_sender(address: str) -> Sender | None:
    close_old_connections()
    row = (
        Mailbox.objects.filter(address=address)
        .values_list(
            "pk",
            "plan",
            "sending_limits_lift_at",
            "language",
            "external_access__enabled",
            "external_access__block_reason",
        )
        .first()
    )
    if row is None:
        return None
    pk, plan, lift_at, language, enabled, block_reason = row
    return Sender(
        pk,
        address,
        plan,
        int(lift_at.timestamp() * 1000) if lift_at else None,
        language,
        sending_counters.packed_send_keys(address),
        sending_counters.packed_hour_count_prefix(address),
        refused=refusal_reason(enabled, block_reason),
    )


def _load_limits() -> dict[str, PlanLimits]:
    close_old_connections()
    return {plan: PlanLimits.of(limits) for plan, limits in plan_limits().items()}


class SenderDirectory:
    """Mailboxes and plan limits, cached in the process so that a check runs no SQL.

    Loads run in a small thread pool (the ORM is synchronous); concurrent misses for one
    address share a single load.
    """

    MAX_ENTRIES = 200_000

    def __init__(self, executor: Executor, ttl: float) -> None:
        self._executor = executor
        self._ttl = ttl
        self._senders: dict[str, tuple[float, Sender | None]] = {}
        self._loading: dict[str, asyncio.Future[Sender | None]] = {}
        self._limits: tuple[float, dict[str, PlanLimits]] = (0.0, {})
        # Counts ``forget`` calls: a load that a forget overtook (it read the database before
        # the change committed) answers its check but is not kept, or the change it missed
        # would be cached for a whole TTL.
        self._forgotten = 0

    def cached_sender(self, address: str, now: float) -> Sender | Literal[False] | None:
        """The cached mailbox (None: no such mailbox), or False when it must be loaded."""
        cached = self._senders.get(address)
        if cached is not None and cached[0] > now:
            return cached[1]
        return False

    def forget(self, address: str) -> None:
        """An access change of this mailbox (``follow_access_changes``): load it again."""
        self._forgotten += 1
        self._senders.pop(address, None)
        # A load in flight may have read the old state: the next check starts a new one.
        self._loading.pop(address, None)

    def forget_all(self) -> None:
        self._forgotten += 1
        self._senders.clear()
        self._loading.clear()

    def cached_limits(self, plan: str, now: float) -> PlanLimits | None:
        """A plan's limits, or None when they must be loaded."""
        expires, table = self._limits
        if expires <= now:
            return None
        return table.get(plan, UNKNOWN_PLAN_LIMITS)

    async def sender(self, address: str) -> Sender | None:
        cached = self._senders.get(address)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        loading = self._loading.get(address)
        if loading is None:
            loading = asyncio.get_running_loop().run_in_executor(
                self._executor, _load_sender, address
            )
            self._loading[address] = loading
            # Cached and forgotten when the load ends, not when a check stops waiting for it
            # (MAILSERVER_DATABASE_WAIT): while the database hangs, the next checks of this
            # address wait on the same load instead of queueing one each.
            generation = self._forgotten
            loading.add_done_callback(lambda done: self._loaded(address, done, generation))
        return await asyncio.shield(loading)

    def _loaded(self, address: str, done: asyncio.Future[Sender | None], generation: int) -> None:
        if self._loading.get(address) is done:
            del self._loading[address]
        if done.cancelled() or done.exception() is not None:
            return
        # An access change was published while the load ran: what it read may be the state
        # before the change, so it is not kept (the next check loads again).
        if generation != self._forgotten:
            return
        if len(self._senders) >= self.MAX_ENTRIES:
            self._senders.clear()
        self._senders[address] = (time.monotonic() + self._ttl, done.result())

    async def limits(self, plan: str) -> PlanLimits:
        expires, table = self._limits
        if expires <= time.monotonic():
            table = await asyncio.get_running_loop().run_in_executor(self._executor, _load_limits)
            self._limits = (time.monotonic() + self._ttl, table)
        return table.get(plan, UNKNOWN_PLAN_LIMITS)


def _block_for_hourly_limit(mailbox_id: int, sent_last_hour: int) -> str:
    """The access action decides whether this block means compromised (``actions``)."""
    close_old_connections()
    mailbox = Mailbox.objects.get(pk=mailbox_id)
    reason = actions.block_for_hourly_limit(
        mailbox, sent_last_hour=sent_last_hour, actor=Actor.system(ACTOR_LABEL)
    )
    return reason.value


def _block_for_bounces(address: str, bounces_last_hour: int) -> str | None:
    close_old_connections()
    mailbox = Mailbox.objects.filter(address=address).first()
    if mailbox is None:
        return None
    actions.block_access(
        mailbox,
        BlockReason.COMPROMISED,
        actor=Actor.system(ACTOR_LABEL),
        detail={"bounces_last_hour": bounces_last_hour},
    )
    return BlockReason.COMPROMISED.value


Answer = Callable[[str], None]
SEND_SCRIPT = Script(sending_counters.SEND_SCRIPT)
BOUNCE_SCRIPT = Script(sending_counters.BOUNCE_SCRIPT)


class SmtpPolicy:
    """Decides the requests of every connection of a daemon process.

    ``check(request, answer)`` returns the action when it is known at once, or None and
    calls ``answer(action)`` exactly once later (after Redis replied, or failed).
    """

    # After Redis fails, answer without it for this long instead of making every request
    # wait for its own timeout.
    REDIS_RETRY_SECONDS = 1.0
    # Mailboxes remembered as deferred for the per-minute limit, at most.
    MAX_DEFERRED = 100_000
    LOG_EVERY_SECONDS = 10.0

    def __init__(
        self,
        redis_pipeline: RedisPipeline,
        executor: Executor,
        *,
        on_redis_error: str | None = None,
        bounce_limit: int | None = None,
        cache_seconds: float | None = None,
    ) -> None:
        self._redis = redis_pipeline
        self._executor = executor
        self._directory = SenderDirectory(
            executor,
            settings.SMTP_POLICY_CACHE_SECONDS if cache_seconds is None else cache_seconds,
        )
        self.on_redis_error = on_redis_error or settings.SMTP_POLICY_ON_REDIS_ERROR
        self.bounce_limit = bounce_limit or settings.SMTP_POLICY_BOUNCE_LIMIT
        # Address -> when (epoch ms) Redis said a retry helps, for mailboxes it has deferred
        # for the per-minute limit (see ``_deferred_reply``).
        self._deferred: dict[str, int] = {}
        self._redis_down_until = 0.0
        self._last_outage_log = 0.0
        self._fallbacks = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._lookups: set[asyncio.Task[str | None]] = set()
        self.database_wait = settings.MAILSERVER_DATABASE_WAIT
        self._lookup_failures_log = Throttle()
        # Where access changes are published (``follow_access_changes``); followed from the
        # first mailbox this process caches, so a daemon that only sees port 25 subscribes
        # to nothing.
        self.access_changes_url: str | None = None
        self._follower: asyncio.Task[None] | None = None

    # -- the decision -------------------------------------------------------------------

    def check(self, request: PostfixRequest, answer: Answer) -> str | None:
        asked = what_to_check(request)
        if asked is None:
            return DUNNO
        check, address = asked
        if check is Check.BOUNCE:
            return self._count_bounce(address, answer)
        return self._check_sender(address, check is Check.END_OF_MESSAGE, answer)

    def fallback_action(self) -> str:
        return fallback_action(self.on_redis_error)

    def _check_sender(self, address: str, count_it: bool, answer: Answer) -> str | None:
        moment = time.monotonic()
        sender = self._directory.cached_sender(address, moment)
        if sender is False:
            return self._load_then_check(address, count_it, answer)
        if sender is None:
            log.debug("no mailbox for sasl_username %s", address)
            return DUNNO
        now = now_ms()
        limits = self._directory.cached_limits(sender.sending_plan(now), moment)
        if limits is None:
            return self._load_then_check(address, count_it, answer)
        return self._ask_redis(sender, limits, count_it, answer, now)

    def _ask_redis(
        self,
        sender: Sender,
        plan: PlanLimits,
        count_it: bool,
        answer: Answer,
        now: int,
    ) -> str | None:
        if sender.refused:
            # Blocked or switched off since this session authenticated: no more mail.
            return refusal(sender.refused, sender.language)
        limits = plan.limits
        if self._deferred and (deferred := self._deferred_reply(sender, limits, now)):
            return deferred
        if self._redis_down_until > time.monotonic():
            return self._without_redis(None)
        if limits.unlimited:
            if not count_it:
                return DUNNO
            # Only the "sent recently" stamp that the bounce detector needs.
            self._redis.call(
                lambda reply: answer(self._without_redis(reply) if _failed(reply) else DUNNO),
                b"SET",
                sending_counters.last_sent_key(sender.address),
                now,
                b"PX",
                sending_counters.DAY_MS,
            )
            return None
        if count_it:
            self._run_send_script(sender, plan, True, answer, now)
            return None

        # DATA: first the cheapest question Redis answers, the messages of the last hour.
        # Fewer than any limit (as for nearly every mailbox) is a pass without the script,
        # which costs Redis three times as much; otherwise the script decides, as at
        # END-OF-MESSAGE. Nothing is counted at DATA, so the two steps need no atomicity.
        def counted(reply: Any) -> None:
            if isinstance(reply, Exception):
                answer(self._without_redis(reply))
            elif reply < plan.within_below:
                answer(DUNNO)
            else:
                self._run_send_script(sender, plan, False, answer, now)

        self._redis.call_packed(
            counted, sending_counters.packed_hour_count(sender.packed_hour_count, now)
        )
        return None

    def _run_send_script(
        self, sender: Sender, plan: PlanLimits, count_it: bool, answer: Answer, now: int
    ) -> None:
        def replied(reply: Any) -> None:
            if isinstance(reply, Exception):
                answer(self._without_redis(reply))
            elif reply == 0:
                answer(DUNNO)
            else:
                answer(self._over_limit(sender, plan.limits, reply, now))

        self._redis.evalsha_packed(
            replied,
            SEND_SCRIPT,
            sending_counters.SEND_PARTS,
            sending_counters.packed_send_tail(
                sender.packed_keys, count_it=count_it, now_ms=now, limits=plan.packed
            ),
        )

    def _over_limit(self, sender: Sender, limits: Limits, reply: Any, now: int) -> str:
        refused = over_limit(sender, limits, reply, now)
        if refused.deferred_until is not None:
            self._remember_deferral(sender.address, refused.deferred_until)
        if refused.block_sent_last_hour is not None:
            self._in_background(
                _block_for_hourly_limit, sender.mailbox_id, refused.block_sent_last_hour
            )
        return refused.action

    # -- deferred mailboxes ------------------------------------------------------------------
    #
    # A mail program over its per-minute limit retries at once, again and again (a hijacked
    # one as fast as it can): until the retry time Redis has given, its answer cannot change,
    # because nothing is counted for a mailbox while it is over a limit, so the process
    # answers those retries itself and Redis, shared by every daemon, does not hear them.
    # Only a per-minute deferral is remembered: it lasts at most a minute, and the hourly
    # verdicts have a block behind them, decided in Redis. The one way the answer could change
    # earlier is support changing the limits, which reaches the daemon within a minute anyway.

    def _deferred_reply(self, sender: Sender, limits: Limits, now: int) -> str | None:
        retry_at = self._deferred.get(sender.address)
        if retry_at is None:
            return None
        reply = deferred_reply(sender, limits, retry_at, now)
        if reply is None:
            del self._deferred[sender.address]
        return reply

    def _remember_deferral(self, address: str, retry_at: int) -> None:
        if len(self._deferred) >= self.MAX_DEFERRED:
            now = now_ms()
            self._deferred = {a: at for a, at in self._deferred.items() if at > now}
            if len(self._deferred) >= self.MAX_DEFERRED // 2:
                self._deferred.clear()
        self._deferred[address] = retry_at

    def _load_then_check(self, address: str, count_it: bool, answer: Answer) -> str | None:
        """A cache miss: load the mailbox and the limits in the thread pool, then check."""

        if self._follower is None and self.access_changes_url:
            self._follower = asyncio.get_running_loop().create_task(
                self.follow_access_changes(self.access_changes_url)
            )

        async def load() -> str | None:
            try:
                # Bounded (MAILSERVER_DATABASE_WAIT): the load goes on in its thread, bounded
                # by its connection's timeouts (database_threads.py), and fills the cache.
                async with asyncio.timeout(self.database_wait):
                    sender = await self._directory.sender(address)
                    if sender is None:
                        log.debug("no mailbox for sasl_username %s", address)
                        return DUNNO
                    now = now_ms()
                    limits = await self._directory.limits(sender.sending_plan(now))
            except Exception as error:
                # The database is down or slow: the same choice as for Redis.
                if (left_out := self._lookup_failures_log.due()) is not None:
                    log_event(
                        log,
                        "smtp_policy.lookup_failed",
                        logging.ERROR,
                        mailbox=address,
                        error=type(error).__name__,
                        left_out=left_out,
                    )
                return self.fallback_action()
            return self._ask_redis(sender, limits, count_it, answer, now)

        def loaded(task: asyncio.Task[str | None]) -> None:
            if task.cancelled():
                answer(self.fallback_action())
            elif (action := task.result()) is not None:
                answer(action)

        task = asyncio.get_running_loop().create_task(load())
        # The loop holds tasks only weakly: the set keeps this one until it has answered.
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)
        task.add_done_callback(loaded)
        return None

    def _count_bounce(self, recipient: str, answer: Answer) -> str | None:
        now = now_ms()
        verified = bounce_tags.verify(recipient, now)
        if verified is None:
            # Forged, stale or mangled: not a bounce of a message this mailbox sent.
            return DUNNO
        address, tag, sent_at = verified
        if self._redis_down_until > time.monotonic():
            return self._without_redis(None)

        def replied(reply: Any) -> None:
            if _failed(reply):
                answer(self._without_redis(reply))
                return
            if (bounces := bounce_flood(reply)) is not None:
                log_event(
                    log,
                    "smtp_policy.bounce_flood",
                    logging.WARNING,
                    mailbox=address,
                    bounces=bounces,
                )
                self._in_background(_block_for_bounces, address, bounces)
            answer(DUNNO)

        self._redis.evalsha(
            replied,
            BOUNCE_SCRIPT,
            sending_counters.bounce_keys(address),
            [now, now - sending_counters.HOUR_MS, tag, sent_at, self.bounce_limit],
        )
        return None

    # -- Redis failing soft ------------------------------------------------------------------

    def _without_redis(self, error: Exception | None) -> str:
        """The fallback answer; an error (rather than None: known down) starts an outage."""
        if error is not None:
            metrics.REDIS_ERRORS.labels(service="smtp_policy").inc()
            self._redis_down_until = time.monotonic() + self.REDIS_RETRY_SECONDS
        self._note_fallback(error)
        return self.fallback_action()

    def _note_fallback(self, error: Exception | None) -> None:
        """Log the outage at most every few seconds: Postfix asks thousands of times."""
        self._fallbacks += 1
        moment = time.monotonic()
        if moment - self._last_outage_log >= self.LOG_EVERY_SECONDS:
            self._last_outage_log = moment
            log_event(
                log,
                "smtp_policy.redis_unavailable",
                logging.ERROR,
                error=type(error).__name__ if error else "still down",
                error_text=str(error) if error else None,
                answering=self.fallback_action().split(" ", 1)[0],
                answers_without_redis=self._fallbacks,
            )

    def _in_background(self, function: Callable[..., str | None], *args: Any) -> None:
        """Run a blocking action after answering: Postfix must not wait on the database."""

        async def run() -> None:
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._executor, function, *args
                )
                log_event(
                    log,
                    "smtp_policy.background_action",
                    logging.WARNING,
                    action=function.__name__,
                    arguments=" ".join(map(str, args)),
                    result=result,
                )
            except Exception:
                log_event(
                    log,
                    "smtp_policy.background_action_failed",
                    logging.ERROR,
                    exc_info=True,
                    action=function.__name__,
                    arguments=" ".join(map(str, args)),
                )

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def follow_access_changes(self, url: str, *, retry_seconds: float = 1.0) -> None:
        """Forget a mailbox the moment its access changes (see the module's docstring).

        Runs until cancelled; a lost subscription is opened again after ``retry_seconds``.
        """
        failing = False
        # On a cluster, any node hears every PUBLISH: subscribe on one of the URL's nodes,
        # and on the next one when it is lost (its node down or failed over).
        urls = subscription_urls(url)
        attempt = 0
        while True:
            client = aioredis.Redis.from_url(urls[attempt % len(urls)], socket_connect_timeout=2)
            attempt += 1
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(ACCESS_CHANNEL)
                    # Changes made while nobody listened are unknown: forget them all.
                    self._directory.forget_all()
                    failing = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            for login in changed_logins(bytes(message["data"]).decode()):
                                self._directory.forget(login)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not failing:  # once per outage, not once a second
                    log_event(
                        log,
                        "smtp_policy.access_changes_lost",
                        logging.WARNING,
                        error=type(error).__name__,
                    )
                failing = True
            finally:
                await client.aclose()
            await asyncio.sleep(retry_seconds)

    async def stop_following(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def wait_for_background(self) -> None:
        """Let pending blocks finish (graceful shutdown, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _failed(reply: Any) -> bool:
    """An exception instead of a reply: Redis unreachable, late, or the command refused."""
    return isinstance(reply, Exception)
