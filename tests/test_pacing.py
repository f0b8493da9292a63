"""The adaptive limiter on its own: slots, learning, pauses and cancellation (real asyncio, no server).
Against real servers it is exercised in test_real_servers.py."""
from __future__ import annotations

import asyncio
import time

import pytest

from actiongpt_plugin.pacing import SLOW_START, START, AdaptiveLimiter, Slot


def slot(limiter: AdaptiveLimiter, latency: float, in_flight: int = 2) -> Slot:
    """A slot that was sent ``latency`` seconds ago with ``in_flight`` requests out."""
    limiter.in_flight += 1
    return Slot(time.monotonic() - latency, in_flight, limiter._episode)


def test_fixed_mode_never_moves():
    limiter = AdaptiveLimiter(8, adaptive=False)
    assert limiter.window == 8
    limiter.release(slot(limiter, 5.0), "overload")
    limiter.release(slot(limiter, 0.1), "ok")
    assert limiter.window == 8 and limiter.decreases == 0


def test_grows_fast_near_the_base_latency_then_only_additively_after_congestion():
    limiter = AdaptiveLimiter(32)
    assert limiter.window == START
    limiter.release(slot(limiter, 0.2, in_flight=1), "ok")  # alone: proves nothing about concurrency
    assert limiter.window == pytest.approx(START + 1 / START)
    before = limiter.window
    limiter.release(slot(limiter, 0.2), "ok")
    assert limiter.window == pytest.approx(before * SLOW_START)
    limiter.release(slot(limiter, 0.9), "ok")  # 4.5 x the base with others in flight: queued
    assert limiter.decreases == 1 and not limiter.fast_growth
    after = limiter.window
    limiter.release(slot(limiter, 0.2), "ok")  # near the base again: additive now
    assert limiter.window == pytest.approx(after + 1 / after)


def test_the_first_reply_only_sets_the_base():
    """A one-at-a-time server answers its first request as fast as a scaling one: no growth on it."""
    limiter = AdaptiveLimiter(32)
    limiter.release(slot(limiter, 0.2, in_flight=4), "ok")
    assert limiter.window == pytest.approx(START + 1 / START) and limiter.base_latency == pytest.approx(0.2, abs=0.05)
    limiter.release(slot(limiter, 0.4, in_flight=4), "ok")  # twice the base: waited behind the first
    assert limiter.window < START * SLOW_START


def test_one_decrease_per_congestion_episode():
    limiter = AdaptiveLimiter(32, start=16)
    old = [slot(limiter, 1.0) for _ in range(5)]  # all sent before the congestion was noticed
    for s in old:
        limiter.release(s, "overload")
    assert limiter.decreases == 1 and limiter.window == 8
    limiter.release(slot(limiter, 1.0), "overload")  # sent after the decrease: new news
    assert limiter.decreases == 2 and limiter.window == 4


def test_near_the_timeout_counts_as_queueing_and_window_stays_at_least_one():
    limiter = AdaptiveLimiter(32, timeout=10.0, start=1)
    limiter.release(slot(limiter, 3.0), "ok")  # the first reply only sets the base: additive growth
    assert limiter.decreases == 0 and limiter.window == 2.0
    limiter.release(slot(limiter, 4.5), "ok")  # 1.5 x the base, but 45 % of the timeout with others in flight
    assert limiter.decreases == 1 and limiter.window == pytest.approx(2.0 * 0.75)
    for _ in range(5):
        limiter.release(slot(limiter, 20.0), "overload")
    assert limiter.window == 1.0  # never below one request


def test_slots_are_limited_and_handed_over_in_order():
    async def go():
        limiter = AdaptiveLimiter(2, start=2)
        order, gate = [], asyncio.Event()

        async def worker(i):
            s = await limiter.acquire()
            order.append(i)
            await gate.wait()
            limiter.release(s, "error")

        tasks = [asyncio.create_task(worker(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        seen = (list(order), limiter.in_flight)
        gate.set()
        await asyncio.gather(*tasks)
        return seen, order, limiter

    (first, in_flight), order, limiter = asyncio.run(go())
    assert first == [0, 1] and in_flight == 2
    assert order == [0, 1, 2, 3, 4] and limiter.in_flight == 0 and limiter.max_in_flight == 2


def test_pause_holds_back_new_attempts():
    async def go():
        limiter = AdaptiveLimiter(4)
        limiter.pause(0.3)
        start = time.monotonic()
        s = await limiter.acquire()
        waited = time.monotonic() - start
        limiter.release(s, "ok")
        return waited

    assert asyncio.run(go()) >= 0.29


def test_cancelled_waiter_leaves_no_slot_behind():
    async def go():
        limiter = AdaptiveLimiter(1, start=1)
        held = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        limiter.release(held, "ok")
        again = await asyncio.wait_for(limiter.acquire(), 1)
        limiter.release(again, "ok")
        return limiter.in_flight, len(limiter._waiters)

    assert asyncio.run(go()) == (0, 0)
