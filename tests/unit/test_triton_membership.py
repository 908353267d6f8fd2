"""Upstreams from `host:port` and `dns:///name:port` entries: a name stands for every address it
resolves to, re-resolved; vanished addresses stop taking requests and close once idle.

The resolver here is a stand-in for DNS (no Kubernetes cluster runs here); the system resolver is
exercised with `localhost`, and `tests/integration/test_gateway_upstreams.py` serves real
requests through a `dns:///` entry."""

from __future__ import annotations

import asyncio

import pytest

from gateway.settings import TritonSettings
from gateway.triton.membership import Membership, Targets, resolve, split_host_port
from gateway.triton.pool import TritonPool


class FakeDns:
    """Answers from a table that the test edits; a missing name fails like NXDOMAIN."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def __call__(self, host: str, port: int) -> list[str]:
        if host not in self.table:
            raise OSError(f"{host}: name or service not known")
        return [f"{address}:{port}" for address in self.table[host]]


def test_entries_split_into_fixed_upstreams_and_names() -> None:
    targets = Targets.parse(["a:8001", "dns:///triton-headless.ns:8001", "[::1]:9"])
    assert targets.fixed == ("a:8001", "[::1]:9")
    assert targets.names == (("triton-headless.ns", 8001),)
    assert split_host_port("[fd00::1]:8001") == ("fd00::1", 8001)
    with pytest.raises(ValueError):
        split_host_port("no-port")


async def test_localhost_resolves_through_the_system_resolver() -> None:
    addresses = await resolve("localhost", 8001)
    assert "127.0.0.1:8001" in addresses
    assert all(a.endswith(":8001") for a in addresses)


async def test_a_failed_lookup_keeps_the_last_answer() -> None:
    dns = FakeDns({"svc": ["10.0.0.1", "10.0.0.2"]})
    membership = Membership(Targets.parse(["fixed:1", "dns:///svc:8001"]), dns)
    assert await membership.current() == ["fixed:1", "10.0.0.1:8001", "10.0.0.2:8001"]
    del dns.table["svc"]
    assert await membership.current() == ["fixed:1", "10.0.0.1:8001", "10.0.0.2:8001"]
    dns.table["svc"] = []
    assert await membership.current() == ["fixed:1"]


async def test_pool_follows_dns_and_retires_what_left_once_idle() -> None:
    dns = FakeDns({"svc": ["127.0.0.2", "127.0.0.3"]})
    settings = TritonSettings(urls=["dns:///svc:1"], health_interval_s=60, dns_interval_s=60)
    pool = TritonPool(settings, resolver=dns)
    await pool.start()
    try:
        assert [u.url for u in pool.upstreams] == ["127.0.0.2:1", "127.0.0.3:1"]
        kept, leaving = pool.upstreams
        leaving.in_flight = 1  # as if a request were still on it
        dns.table["svc"] = ["127.0.0.2", "127.0.0.4"]
        await pool.refresh()
        assert [u.url for u in pool.upstreams] == ["127.0.0.2:1", "127.0.0.4:1"]
        assert pool.upstreams[0] is kept  # not reopened
        assert leaving in pool._retiring  # out of rotation, still open for its request
        await asyncio.sleep(0.1)
        assert leaving in pool._retiring
        leaving.in_flight = 0
        for _ in range(40):
            if leaving not in pool._retiring:
                break
            await asyncio.sleep(0.05)
        assert leaving not in pool._retiring
    finally:
        await pool.close()
