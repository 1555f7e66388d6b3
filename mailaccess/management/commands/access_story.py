"""``manage.py access_story <address>``: one mailbox's whole access story, for escalations.

Support's second line asks "why can't this person get mail?": the answer is spread over the
database (the switch, the passwords, the audit trail, the notices) and Redis (the policy's
cached state and its counters). This prints all of it in one read, in the order one reasons
about it. Never a secret: passwords are listed by label, protocols and use, never with a hash
or lookup key. Read-only: it changes nothing, not even the counters it reads.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    no_translations,
)
from django.utils import timezone

from accounts.models import Mailbox, normalize_address
from audit.models import AuditEvent
from common.redis_urls import REDIS_ERRORS, Client
from mailaccess import counters
from mailaccess.models import AppPassword, ExternalAccess, Notice, Protocol
from mailaccess.sending_limits import plan_limits


def when(moment: datetime | None) -> str:
    """Local time and how long ago: "2026-11-26 18:30 (3 min ago)"."""
    if moment is None:
        return "never"
    local = timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")
    seconds = int((timezone.now() - moment).total_seconds())
    if seconds < 0:
        return f"{local} (in the future)"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{local} ({seconds // size} {unit} ago)"
    return f"{local} ({seconds} s ago)"


def unix(value: str | float) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


class Command(BaseCommand):
    help = (
        "Print one mailbox's external-access story: its state, its mail-program passwords "
        "(never their hashes), last uses, the auth policy's counters in Redis, the audit "
        "trail, blocks and notices."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("address", help="the mailbox address, e.g. someone@inbox.lv")
        parser.add_argument(
            "--events", type=int, default=25, help="how many audit events to show (25)"
        )

    def line(self, label: str, value: Any = "") -> None:
        self.stdout.write(f"  {label:<26} {value}".rstrip())

    def section(self, title: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(title))

    @no_translations  # one language for ops: the labels' English originals
    def handle(self, *args: Any, **options: Any) -> None:
        address = normalize_address(options["address"])
        mailbox = Mailbox.objects.filter(address=address).first()
        if mailbox is None:
            raise CommandError(f"No mailbox {address}.")
        self.stdout.write(self.style.SUCCESS(f"Access story of {address}"))
        self.mailbox(mailbox)
        access = ExternalAccess.objects.filter(mailbox=mailbox).first()
        self.access(access)
        self.passwords(mailbox)
        self.counters(mailbox)
        self.audit(mailbox, options["events"])
        self.notices(mailbox)

    def mailbox(self, mailbox: Mailbox) -> None:
        self.section("Mailbox")
        self.line("plan", mailbox.get_plan_display())
        since = f" since {when(mailbox.status_changed_at)}" if mailbox.status_changed_at else ""
        self.line("status", f"{mailbox.get_status_display()}{since}")
        self.line("language", mailbox.language)
        self.line("last web sign-in", when(mailbox.last_login))
        self.line("web password changed", when(mailbox.password_changed_at))
        self.line("may sign in", "yes" if mailbox.is_active else "no")
        if mailbox.sending_limits_lift_at is not None:
            self.line("free sending limits until", when(mailbox.sending_limits_lift_at))

    def access(self, access: ExternalAccess | None) -> None:
        self.section("External access")
        if access is None:
            self.line("switch", "off (never switched on)")
            return
        self.line("switch", "ON" if access.enabled else "off")
        self.line("switched on", when(access.enabled_at))
        self.line("switched off", when(access.disabled_at))
        if access.block is not None:
            self.line("BLOCKED", f"{access.block.value}: {access.block.label}")
            self.line("blocked at", when(access.blocked_at))
        if access.requires_password_change:
            self.line("needs", "a web password change before switching on (compromised)")
        self.line("last activity", when(access.last_activity_at))
        self.line("expiry warning sent", when(access.expiry_warned_at))
        for protocol in Protocol:
            used = getattr(access, f"{protocol.value}_last_used_at")
            ip = getattr(access, f"{protocol.value}_last_ip")
            self.line(f"last {protocol.label}", f"{when(used)}" + (f" from {ip}" if ip else ""))

    def passwords(self, mailbox: Mailbox) -> None:
        self.section("Mail-program passwords (newest first; hashes are never shown)")
        rows = AppPassword.objects.filter(mailbox=mailbox).order_by("-created_at")[:20]
        if not rows:
            self.line("none")
        for password in rows:
            state = "LIVE" if password.is_live else f"ended {when(password.revoked_at)}"
            self.line(
                f"#{password.pk} {password.label or '(no label)'}",
                f"{state}; {', '.join(password.protocols())}; created {when(password.created_at)}",
            )
            if password.last_used_at:
                client = f", {password.last_used_client}" if password.last_used_client else ""
                self.line(
                    "",
                    f"last used {when(password.last_used_at)} by {password.last_used_protocol} "
                    f"from {password.last_used_ip}{client}",
                )

    def counters(self, mailbox: Mailbox) -> None:
        """What the policies decide on: cached state and counters in Redis, read only."""
        self.section("Auth policy and SMTP policy in Redis (what the next login is decided on)")
        try:
            self._counters(counters.sync_client(), mailbox.address)
            self._sending(counters.sync_client(), mailbox)
        except REDIS_ERRORS as error:
            self.line("Redis", f"not reachable ({type(error).__name__}): counters unknown")

    def _sending(self, client: Client, mailbox: Mailbox) -> None:
        now = timezone.now()
        limits = plan_limits()[mailbox.sending_plan(now)]
        now_ms = int(now.timestamp() * 1000)
        usage = counters.read_usage(mailbox.address, now_ms, client)
        if limits.unlimited:
            allowed = "no limit"
        else:
            allowed = f"limits {limits.per_minute}/min, {limits.per_hour}/h"
        self.line(
            "SMTP messages sent",
            f"{usage.last_minute} in the last minute, {usage.last_hour} in the last hour "
            f"({allowed})",
        )
        bounces = counters.bounces_last_hour(mailbox.address, now_ms, client)
        # Only bounces to the signed envelope senders of its own messages, each message once.
        self.line("messages bounced", f"{bounces} of the last hour")

    def _counters(self, client: Client, login: str) -> None:
        now = timezone.now().timestamp()
        # The client decodes replies (decode_responses=True); redis-py's types cannot know.
        cached = cast(dict[str, str], client.hgetall(counters.state_key(login)))
        if not cached:
            self.line("cached state", "none (the next login reads the database)")
        else:
            shown = ", ".join(f"{key}={value}" for key, value in sorted(cached.items()))
            ttl = client.ttl(counters.state_key(login))
            self.line("cached state", f"{shown} (expires in {ttl} s)")
        window = settings.AUTH_POLICY_FAILURE_WINDOW
        failures = client.zcount(counters.failures_key(login), now - window, "+inf")
        limit = settings.AUTH_POLICY_MAILBOX_FAILURES
        locked = " LOCKED for unknown networks" if failures >= limit else ""
        self.line(
            "failed logins",
            f"{failures} distinct in the last {window // 60} min (limit {limit}){locked}",
        )
        bucket = client.hmget(counters.connections_key(login), "level", "ts")
        if bucket[0]:
            per_hour = settings.AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR
            level = max(0.0, float(bucket[0]) - (now - float(bucket[1] or now)) * per_hour / 3600)
            self.line("connections this hour", f"about {level:.0f} (blocked past {per_hour})")
        networks = cast(
            list[tuple[str, float]],
            client.zrevrange(counters.networks_key(login), 0, 9, withscores=True),
        )
        for network, seen in networks:
            self.line(f"known network {network}", f"last success {when(unix(seen))}")
        if not networks:
            self.line(
                "known networks", f"none in the last {settings.AUTH_POLICY_KNOWN_IP_DAYS} days"
            )
        self._checks(client, login, now)

    def _checks(self, client: Client, login: str, now: float) -> None:
        """Each program's check bucket (auth_policy.check_program): by its password's key
        ("pw:9c4e|Thunderbird 115"), or by its network where the request named no password.
        A mailbox has a few: SCAN within its own keys is cheap."""
        prefix = counters.check_key(login, "", "")[:-1]
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        interval = settings.AUTH_POLICY_CHECK_INTERVAL
        for key in sorted(cast(list[str], list(client.scan_iter(match=pattern, count=1000)))):
            check = cast(list[str | None], client.hmget(key, "tokens", "ts"))
            if not check[0]:
                continue
            protocol, _sep, program = key[len(prefix) :].partition(":")
            burst = (
                settings.AUTH_POLICY_PROGRAM_CHECK_BURST
                if program.startswith("pw:")
                else settings.AUTH_POLICY_CHECK_BURST
            )
            tokens = min(burst, float(check[0]) + (now - float(check[1] or now)) / interval)
            label = Protocol(protocol).label if protocol in Protocol.values else protocol
            self.line(f"{label} checks left, {program}", f"{tokens:.1f} of {burst}")

    def audit(self, mailbox: Mailbox, limit: int) -> None:
        self.section(f"Audit trail (latest {limit}: switches, blocks, passwords, sign-ins)")
        events = AuditEvent.objects.filter(mailbox=mailbox).order_by("-created_at", "-id")[:limit]
        if not events:
            self.line("no events")
        for event in events:
            parts = [event.get_action_display()]
            if event.reason:
                parts.append(f"reason={event.reason}")
            parts.append(f"by {event.get_actor_kind_display()} {event.actor_label}".rstrip())
            if event.ip:
                parts.append(f"from {event.ip}")
            if event.justification:
                # Free text typed by staff: one line, so the story stays one event per line.
                parts.append(f"why: {' '.join(event.justification.split())}")
            if event.detail:
                parts.append(" ".join(f"{key}={value}" for key, value in event.detail.items()))
            self.line(when(event.created_at), "; ".join(parts))

    def notices(self, mailbox: Mailbox) -> None:
        self.section("Notices")
        notices = Notice.objects.filter(mailbox=mailbox).order_by("-created_at")[:20]
        if not notices:
            self.line("none")
        for notice in notices:
            self.line(
                when(notice.created_at),
                f"{notice.get_kind_display()} {notice.reason}; e-mailed {when(notice.emailed_at)};"
                f" read {when(notice.read_at)}",
            )
