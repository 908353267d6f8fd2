"""Which Triton servers the gateway sends to: fixed `host:port` entries, and `dns:///name:port`
entries that stand for every address the name resolves to (a Kubernetes headless Service: one
address per ready pod), looked up again every `dns_interval_s`.

gRPC's own `dns:///` target would spread one channel's calls over the addresses, but the gateway
needs each server as an upstream of its own: its health, its shared streams, its in-flight count
and its metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("localmoe.triton")

DNS_PREFIX = "dns:///"

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) → the addresses as `ip:port` / `[ipv6]:port` strings; raises OSError."""


@dataclass(frozen=True)
class Targets:
    """The configured entries: fixed upstreams and names to resolve."""

    fixed: tuple[str, ...]
    names: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, urls: Sequence[str]) -> Targets:
        fixed: list[str] = []
        names: list[tuple[str, int]] = []
        for url in urls:
            if url.startswith(DNS_PREFIX):
                host, port = split_host_port(url.removeprefix(DNS_PREFIX))
                names.append((host, port))
            else:
                fixed.append(url)
        return cls(tuple(fixed), tuple(names))


def split_host_port(text: str) -> tuple[str, int]:
    """`name:8001` or `[::1]:8001` → (host, port); ValueError when the port is missing."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


async def resolve(host: str, port: int) -> list[str]:
    """Every address of `host` (A and AAAA), as upstream URLs, sorted."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = set()
    for family, _, _, _, sockaddr in infos:
        address = sockaddr[0]
        found.add(f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}")
    return sorted(found)


class Membership:
    """The current upstream URLs for `targets`; a failed lookup keeps a name's last answer."""

    def __init__(self, targets: Targets, resolver: Resolver = resolve) -> None:
        self.targets = targets
        self.resolver = resolver
        self._last: dict[tuple[str, int], list[str]] = {}

    async def current(self) -> list[str]:
        """Fixed entries first, then each name's addresses; without duplicates."""
        urls = list(self.targets.fixed)
        for name in self.targets.names:
            try:
                addresses = await self.resolver(*name)
            except OSError as exc:
                log.warning("cannot resolve %s:%d, keeping its last addresses: %s", *name, exc)
                addresses = self._last.get(name, [])
            else:
                if addresses != self._last.get(name):
                    log.info("%s:%d resolves to %s", *name, ", ".join(addresses) or "nothing")
                self._last[name] = addresses
            urls.extend(addresses)
        return list(dict.fromkeys(urls))
