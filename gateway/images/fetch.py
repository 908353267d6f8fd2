"""Download an `http(s)` image without letting a client reach what it should not (SSRF).

One parser (`httpx.URL`) reads the URL for both the checks and the connection, so the two cannot
disagree about the host (CVE-2026-24779 bypassed vLLM's allowlist through two parsers). The host is
resolved once, every address it resolves to must be public, and the connection goes to the address
that was checked, with the real name in `Host` and in TLS SNI (so certificates still verify): a
second lookup that could answer differently (DNS rebinding) never happens. Redirects are refused
unless enabled, and then each hop is checked from scratch. The body is streamed and cut at the cap.
Messages are fixed texts: nothing of the upstream's body or of an exception reaches a client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from functools import cache

import httpx

from gateway.images.decode import ImageRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchPolicy:
    """How `http(s)` images may be fetched."""

    allow_http: bool = True
    """`http(s)` URLs at all (false: `data:` URLs only)."""
    allow_private_addresses: bool = False
    """The local-deployment switch: loopback, private and other non-public addresses allowed."""
    allowed_domains: tuple[str, ...] = ()
    """Empty: any public host; else `example.com` (that host) or `*.example.com` (subdomains)."""
    follow_redirects: bool = False
    max_redirects: int = 3
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    """Per read: a server that goes quiet this long is given up on."""
    total_timeout_s: float = 30.0
    """The whole fetch, redirects included: a server dripping bytes just inside the read timeout
    still stops here."""


async def fetch_image_bytes(url: str, policy: FetchPolicy, max_bytes: int) -> bytes:
    """The body of `url` (at most `max_bytes`), fetched under `policy`; raises `ImageRefused`."""
    if not policy.allow_http:
        raise ImageRefused("url_scheme", "Image URLs must be data: URLs here.")
    target = parse_image_url(url, policy)
    timeout = httpx.Timeout(
        connect=policy.connect_timeout_s,
        read=policy.read_timeout_s,
        write=policy.read_timeout_s,
        pool=policy.connect_timeout_s,
    )
    # One client per fetch: httpx pools connections by address, and two names on one address
    # must not share a connection made with the other's SNI. trust_env=False: a proxy from the
    # environment would dial for us and skip the address check.
    client = httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False, verify=_tls_context()
    )
    try:
        async with client, asyncio.timeout(policy.total_timeout_s):
            for hop in range(policy.max_redirects + 1):
                location = await _get(client, target, policy, max_bytes)
                if isinstance(location, bytes):
                    return location
                if not policy.follow_redirects:
                    raise ImageRefused("redirect", "The image URL redirects; redirects are off.")
                if hop == policy.max_redirects:
                    break
                target = _redirect_target(target, location, policy)
            raise ImageRefused("redirect", "The image URL redirects too many times.")
    except (TimeoutError, httpx.TimeoutException):
        raise ImageRefused("timeout", "The image URL did not answer in time.") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError):  # ssl.SSLError is an OSError
        raise ImageRefused("connect", "The image URL could not be fetched.") from None


def parse_image_url(url: str, policy: FetchPolicy) -> httpx.URL:
    """`url` parsed once, checked for scheme, user info, host and allowlist (not yet addresses)."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ImageRefused("url_scheme", "The image URL is not a valid URL.") from None
    if target.scheme not in ("http", "https"):
        raise ImageRefused("url_scheme", "Image URLs must be http(s) or data: URLs.")
    if target.userinfo:
        raise ImageRefused("url_scheme", "Image URLs may not carry a user name or password.")
    host = _host(target)
    if not host:
        raise ImageRefused("url_scheme", "The image URL has no host.")
    if policy.allowed_domains and not host_allowed(host, policy.allowed_domains):
        raise ImageRefused("not_allowed_host", "Images may not be fetched from this host.")
    return target


def host_allowed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    """Whether `host` is an entry of `allowed_domains` or a subdomain of a `*.` entry.

    Both sides compared lower-case, without a trailing dot, IDNA-encoded (`xn--`) as httpx
    dials them; `*.example.com` matches `a.example.com` but not `example.com` itself."""
    host = host.lower().rstrip(".")
    for entry in allowed_domains:
        entry = _ascii_host(entry.strip().lower().rstrip("."))
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif entry and host == entry:
            return True
    return False


def is_public_address(address: str | IPAddress) -> bool:
    """Whether an address is on the public internet, and so safe to fetch from.

    Refused: loopback, private (RFC 1918, IPv6 ULA), link-local (with the 169.254.169.254 cloud
    metadata address), CGNAT 100.64/10, multicast, reserved, unspecified, documentation and
    benchmarking ranges; IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible,
    6to4, NAT64) are judged by the address they carry."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # drop a %scope: the checks read the bits only
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
    if any(ip in network for network in _SPECIAL[ip.version]):
        return False
    # The standard library's flags as a second opinion (its tables differ between patch releases,
    # hence the explicit list above).
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


# --- helpers -------------------------------------------------------------------------------------

# IANA's special-purpose registries (not globally reachable), plus multicast and site-local.
_SPECIAL = {
    4: [
        ipaddress.IPv4Network(n)
        for n in (
            "0.0.0.0/8",  # this network
            "10.0.0.0/8",
            "100.64.0.0/10",  # CGNAT (Alibaba's metadata address is in it)
            "127.0.0.0/8",
            "169.254.0.0/16",  # link-local, the cloud metadata address 169.254.169.254
            "172.16.0.0/12",
            "192.0.0.0/24",  # IETF protocol assignments (Oracle's metadata 192.0.0.192)
            "192.0.2.0/24",
            "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
            "192.168.0.0/16",
            "198.18.0.0/15",  # benchmarking
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",  # multicast
            "240.0.0.0/4",  # reserved, and the broadcast address
        )
    ],
    6: [
        ipaddress.IPv6Network(n)
        for n in (
            "::/96",  # unspecified, loopback (IPv4-compatible forms are read as IPv4)
            "64:ff9b:1::/48",  # local-use NAT64
            "100::/64",  # discard
            "2001::/23",  # IETF protocol assignments, Teredo
            "2001:db8::/32",  # documentation
            "3fff::/20",  # documentation
            "5f00::/16",  # SRv6 SIDs
            "fc00::/7",  # unique local (AWS's metadata fd00:ec2::254)
            "fe80::/10",  # link-local
            "fec0::/10",  # site-local (deprecated)
            "ff00::/8",  # multicast
        )
    ],
}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_REDIRECTS = (301, 302, 303, 307, 308)


async def _get(
    client: httpx.AsyncClient, target: httpx.URL, policy: FetchPolicy, max_bytes: int
) -> bytes | str:
    """One hop: the body, or the redirect's `Location` for the caller to check."""
    host = _host(target)
    address = await _checked_address(target, policy)
    dial = target.copy_with(host=address)
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    # Identity only: a compressed body would be inflated in chunks far past the byte cap.
    headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    request = client.build_request("GET", dial, headers=headers, extensions=extensions)
    response = await client.send(request, stream=True)
    try:
        if 300 <= response.status_code < 400:
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                raise ImageRefused("http_status", "The image URL answered with an error status.")
            return location
        if not 200 <= response.status_code < 300:
            raise ImageRefused("http_status", "The image URL answered with an error status.")
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise ImageRefused("corrupt", "The image URL sent a compressed body.")
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise ImageRefused("too_many_bytes", f"The image is larger than {max_bytes} bytes.")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise ImageRefused("too_many_bytes", f"The image is larger than {max_bytes} bytes.")
        return bytes(body)
    finally:
        await response.aclose()


async def _checked_address(target: httpx.URL, policy: FetchPolicy) -> str:
    """The address to dial for `target`'s host: every address it resolves to is checked."""
    host = _host(target)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError):
            raise ImageRefused("connect", "The image URL's host could not be resolved.") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise ImageRefused("connect", "The image URL's host could not be resolved.")
    if not policy.allow_private_addresses and not all(map(is_public_address, addresses)):
        raise ImageRefused(
            "private_address", "Images may not be fetched from a private or local address."
        )
    return str(addresses[0])


def _redirect_target(current: httpx.URL, location: str, policy: FetchPolicy) -> httpx.URL:
    try:
        joined = current.join(location)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ImageRefused("redirect", "The image URL redirects to an invalid URL.") from None
    return parse_image_url(str(joined), policy)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _host(url: httpx.URL) -> str:
    """The host as dialled: IDNA-encoded, lower-case, no trailing dot, IPv6 without brackets."""
    return url.raw_host.decode("ascii").lower().rstrip(".")


def _ascii_host(host: str) -> str:
    """`host` IDNA-encoded the way httpx encodes it (the `*.` of a pattern kept)."""
    star, name = ("*.", host[2:]) if host.startswith("*.") else ("", host)
    try:
        return star + httpx.URL(f"http://{name}/").raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return host


@cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once (loading the CA bundle takes milliseconds)."""
    return httpx.create_ssl_context()
