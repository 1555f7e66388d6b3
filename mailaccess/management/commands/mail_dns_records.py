"""Print the DNS records a mail domain publishes so mail programs find their servers."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailaccess import autoconfig
from mailaccess.instructions import IMAP_PORT, POP3_PORT, SMTP_SSL_PORT, SMTP_STARTTLS_PORT


def srv_records(domain: autoconfig.MailDomain) -> list[tuple[str, int, int, int, str]]:
    """(service, priority, weight, port, target) per RFC 6186 and RFC 8314.

    Clients compare priorities across _imap/_imaps and _pop3/_pop3s, and across
    _submission/_submissions: implicit TLS and IMAP come first (RFC 8314 section 5.1,
    RFC 6186 section 3.4). Target "." says a service is deliberately not offered: we offer
    no plain-text IMAP or POP3, so clients must not try them.
    """
    target = domain.host.rstrip(".") + "."
    return [
        ("_imaps._tcp", 0, 1, IMAP_PORT, target),
        ("_pop3s._tcp", 10, 1, POP3_PORT, target),
        ("_submissions._tcp", 0, 1, SMTP_SSL_PORT, target),
        ("_submission._tcp", 10, 1, SMTP_STARTTLS_PORT, target),
        ("_imap._tcp", 0, 0, 0, "."),
        ("_pop3._tcp", 0, 0, 0, "."),
    ]


def portal_records(origin: str, portal_host: str, ttl: int) -> list[str]:
    """The autoconfig and autodiscover hosts, pointed at the host serving this site.

    A CNAME and an SRV target must name a host, never an address (RFC 1034 section 3.6.2,
    RFC 2782): when the site is reached by an address (PORTAL_URL of a test install, say),
    the two hosts get address records instead, and the SRV record names one of them.
    """
    try:
        address = ipaddress.ip_address(portal_host)
    except ValueError:
        portal = portal_host + "."
        return [
            f"autoconfig.{origin}\t{ttl}\tIN\tCNAME\t{portal}",
            f"autodiscover.{origin}\t{ttl}\tIN\tCNAME\t{portal}",
            f"_autodiscover._tcp.{origin}\t{ttl}\tIN\tSRV\t0 1 443 {portal}",
        ]
    kind = "A" if address.version == 4 else "AAAA"
    return [
        f"autoconfig.{origin}\t{ttl}\tIN\t{kind}\t{address}",
        f"autodiscover.{origin}\t{ttl}\tIN\t{kind}\t{address}",
        f"_autodiscover._tcp.{origin}\t{ttl}\tIN\tSRV\t0 1 443 autodiscover.{origin}",
    ]


class Command(BaseCommand):
    help = (
        "Print the SRV records (RFC 6186, RFC 8314) and the autoconfig/autodiscover host "
        "records a mail domain publishes, as zone-file lines."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("domain", help="a mail domain of MAIL_DOMAINS, e.g. inbox.lv")
        parser.add_argument(
            "--portal-host",
            default="",
            help="the host serving this site (default: the host of PORTAL_URL)",
        )
        parser.add_argument("--ttl", type=int, default=3600, help="TTL in seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        domain = autoconfig.mail_domain(options["domain"])
        if domain is None:
            known = ", ".join(sorted(settings.MAIL_DOMAINS))
            raise CommandError(f"{options['domain']} is not in MAIL_DOMAINS ({known}).")
        portal_host = options["portal_host"] or urlsplit(settings.PORTAL_URL).hostname
        if not portal_host:
            raise CommandError("Set PORTAL_URL or pass --portal-host: the host of this site.")
        ttl = options["ttl"]
        origin = domain.name + "."
        lines = [f"; Mail programs' settings for {domain.name} (RFC 6186, RFC 8314)"]
        for service, priority, weight, port, target in srv_records(domain):
            lines.append(f"{service}.{origin}\t{ttl}\tIN\tSRV\t{priority} {weight} {port} {target}")
        lines.append("; Thunderbird autoconfig and Outlook Autodiscover, answered by this site")
        lines += portal_records(origin, portal_host.rstrip("."), ttl)
        lines.append(
            "; Each host above needs an entry in ALLOWED_HOSTS and in the TLS certificate."
        )
        self.stdout.write("\n".join(lines))
