"""Backpressure: places, a bounded queue ordered by priority, and 503 when it cannot wait."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.admission import Admission
from gateway.errors import ServerOverloaded
from gateway.settings import AdmissionSettings


async def test_unbounded_admits_everything_at_once() -> None:
    admission = Admission(AdmissionSettings())
    for _ in range(100):
        await admission.acquire()
    assert admission.in_flight == 100


async def test_a_full_queue_is_refused_at_once() -> None:
    admission = Admission(AdmissionSettings(max_in_flight=1, max_queue=1, queue_timeout_s=5))
    await admission.acquire()
    waiting = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    with pytest.raises(ServerOverloaded) as refused:
        await admission.acquire()
    assert refused.value.headers == {"Retry-After": "1"}
    admission.release()  # the place moves to the waiter
    await waiting
    assert admission.in_flight == 1


async def test_a_waiter_gives_up_after_the_queue_timeout() -> None:
    admission = Admission(AdmissionSettings(max_in_flight=1, max_queue=4, queue_timeout_s=0.05))
    await admission.acquire()
    with pytest.raises(ServerOverloaded):
        await admission.acquire()
    admission.release()
    assert admission.in_flight == 0  # nothing leaked to the one that gave up


async def test_higher_priority_waiters_go_first_then_in_order() -> None:
    admission = Admission(AdmissionSettings(max_in_flight=1, max_queue=8, queue_timeout_s=5))
    await admission.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await admission.acquire(priority)
        order.append(name)
        admission.release()

    tasks = [asyncio.create_task(wait(n, p)) for n, p in [("low1", 0), ("high", 5), ("low2", 0)]]
    await asyncio.sleep(0.01)
    admission.release()
    await asyncio.gather(*tasks)
    assert order == ["high", "low1", "low2"]
    assert admission.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = Admission(AdmissionSettings(max_in_flight=1, max_queue=1, queue_timeout_s=5))
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    other = asyncio.create_task(admission.acquire())  # the queue has room again
    await asyncio.sleep(0)
    admission.release()
    await other
    assert admission.in_flight == 1
