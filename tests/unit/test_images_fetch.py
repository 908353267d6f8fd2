"""The fetch guards that need no network: the address classifier, the allowlist, URL parsing."""

from __future__ import annotations

import pytest

from gateway.images.decode import ImageRefused
from gateway.images.fetch import FetchPolicy, host_allowed, is_public_address, parse_image_url

NOT_PUBLIC = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "cloud metadata (link-local)",
    "169.254.0.1": "link-local",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "100.100.100.200": "Alibaba metadata (CGNAT)",
    "192.0.0.192": "Oracle metadata (IETF protocol assignments)",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "this network",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "192.0.2.1": "documentation",
    "198.51.100.7": "documentation",
    "203.0.113.9": "documentation",
    "198.18.0.1": "benchmarking",
    "::1": "IPv6 loopback",
    "::": "IPv6 unspecified",
    "fc00::1": "IPv6 unique local",
    "fd00:ec2::254": "AWS IPv6 metadata (unique local)",
    "fe80::1": "IPv6 link-local",
    "fe80::1%2": "IPv6 link-local with a scope",
    "fec0::1": "IPv6 site-local",
    "ff02::1": "IPv6 multicast",
    "::ffff:127.0.0.1": "IPv4-mapped loopback",
    "::ffff:169.254.169.254": "IPv4-mapped metadata",
    "::ffff:10.0.0.1": "IPv4-mapped private",
    "::127.0.0.1": "IPv4-compatible loopback",
    "::10.0.0.1": "IPv4-compatible private",
    "2002:7f00:1::": "6to4 of loopback",
    "2002:a9fe:a9fe::1": "6to4 of the metadata address",
    "2002:c0a8:101::": "6to4 of a private address",
    "64:ff9b::7f00:1": "NAT64 of loopback",
    "64:ff9b::a9fe:a9fe": "NAT64 of the metadata address",
    "64:ff9b:1::1": "local-use NAT64",
    "2001::1": "Teredo",
    "2001:db8::1": "IPv6 documentation",
    "100::1": "IPv6 discard",
}

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "172.32.0.1",  # just past 172.16/12
    "100.128.0.1",  # just past CGNAT
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize("address", sorted(NOT_PUBLIC))
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address), NOT_PUBLIC[address]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("example.com", ("example.com",), True),
        ("example.com", ("EXAMPLE.com.",), True),
        ("img.example.com", ("example.com",), False),
        ("img.example.com", ("*.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("badexample.com", ("*.example.com",), False),
        ("example.com.evil.net", ("example.com",), False),
        ("example.com.evil.net", ("*.example.com",), False),
        ("evil.net", ("example.com", "*.cdn.example.org"), False),
        ("x.cdn.example.org", ("example.com", "*.cdn.example.org"), True),
        ("xn--bcher-kva.de", ("bücher.de",), True),
        ("example.com", ("",), False),
    ],
)
def test_allowlist_matching(host: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(host, allowed) is expected


def test_the_allowlist_reads_the_host_the_dialer_reads() -> None:
    # CVE-2026-24779: a parser that saw `example.com` while the dialer went elsewhere.
    policy = FetchPolicy(allowed_domains=("example.com",))
    assert parse_image_url("https://EXAMPLE.com./a.png", policy)
    for url in [
        "https://example.com.evil.net/a.png",
        "https://evil.net/example.com/a.png",
        "https://evil.net/?u=https://example.com/",
        "https://evil.net#@example.com/",
    ]:
        with pytest.raises(ImageRefused) as caught:
            parse_image_url(url, policy)
        assert caught.value.reason == "not_allowed_host", url


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@example.com/a.png",
        "https://example.com@127.0.0.1/a.png",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "file:///etc/passwd",
        "http:///a.png",
        "http://[::1/a.png",
    ],
)
def test_bad_urls_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(ImageRefused) as caught:
        parse_image_url(url, FetchPolicy())
    assert caught.value.reason == "url_scheme"


def test_any_port_is_allowed() -> None:
    assert parse_image_url("https://example.com:8443/a.png", FetchPolicy()).port == 8443


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",  # 127.0.0.1 as one number: the resolver's reading is checked
        "http://0x7f.1/",
        "http://localhost:9/",
    ],
)
async def test_local_hosts_are_refused_without_connecting(url: str) -> None:
    from gateway.images.fetch import fetch_image_bytes

    with pytest.raises(ImageRefused) as caught:
        await fetch_image_bytes(url, FetchPolicy(), 1000)
    assert caught.value.reason == "private_address"
