"""Fences: the networks a device password may be used from (issue 22, item 3).

Pure rules, no I/O: the panel's form and ``actions.create_app_password`` parse what the owner
typed with ``parse_networks``; the auth policy asks ``allows`` after the password was verified.
An empty fence means anywhere, as before fences existed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Enough for a home, an office and a phone operator's ranges; bounds the cached state's size.
MAX_NETWORKS = 20
_SEPARATORS = re.compile(r"[\s,;]+")


class FenceError(ValueError):
    """What the owner typed is not a list of networks: ``value`` is the first bad entry
    (empty when there are too many)."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value


def _network(entry: str) -> Network:
    network = ipaddress.ip_network(entry, strict=False)
    if isinstance(network, ipaddress.IPv6Network):
        # The policy compares IPv4 clients by their IPv4 address (auth_policy.client_network
        # unwraps ::ffff:a.b.c.d), so a mapped range is kept as the IPv4 range it means.
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_networks(text: str | Iterable[str]) -> tuple[str, ...]:
    """The normalized CIDR ranges (a lone address is its /32 or /128; host bits are cleared),
    without repeats, in the order given. Raises ``FenceError`` on the first bad entry."""
    entries = _SEPARATORS.split(text) if isinstance(text, str) else [str(e) for e in text]
    networks: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            network = str(_network(entry))
        except ValueError:
            raise FenceError(entry[:64]) from None
        if network not in networks:
            networks.append(network)
    if len(networks) > MAX_NETWORKS:
        raise FenceError("")
    return tuple(networks)


@lru_cache(maxsize=4096)
def networks_of(fence: tuple[str, ...]) -> tuple[Network, ...]:
    """The parsed ranges of a normalized fence (cached: every login of the password asks)."""
    return tuple(ipaddress.ip_network(entry) for entry in fence)


@lru_cache(maxsize=65536)
def allows(fence: tuple[str, ...], remote: str | None) -> bool:
    """Whether a client at ``remote`` (as ``auth_policy.client_network`` gave it) may use a
    password fenced to ``fence``. No fence: anywhere. A fence and no address: refused, as a
    fence the policy cannot check must not open."""
    if not fence:
        return True
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in networks_of(fence))
