"""How many requests to keep in flight to one server: adaptive, like TCP congestion control.

A server that answers one request at a time (llama.cpp's server, Ollama on a laptop) queues the
rest: at a fixed 32 in flight the last ones time out while the server still computes them, and
their retries queue again. A server that scales (OpenAI, vLLM) wants all 32 at once. The limiter
learns which it faces from what every attempt tells it:

- base latency: the fastest reply seen (a request that did not wait in the server's queue);
- a reply near the base although others were in flight: the server has room; until the first sign
  of congestion the window grows fast (x SLOW_START per such reply, so a scaling server reaches the
  ceiling within the first round trip's replies), as TCP's slow start. The very first reply only
  sets the base: a server that answers one at a time also answers its first request fast, and its
  second reply (twice the base) is what tells the two apart;
- a reply much slower than the base, or one that took a good part of the client's timeout, while
  several were in flight: the server queues; the window shrinks (x LATENCY_BACKOFF) before the
  queue grows long enough for requests to time out;
- a timeout, 429 or 503: overload; the window halves;
- otherwise, and after the first sign of congestion: additive increase (+1 per round trip).

At most one decrease per congestion episode: replies to requests sent before the last decrease
carry old news and cannot shrink the window again. A request waits for a slot before every
attempt, so retries after a timeout queue in the reduced window instead of storming; a backoff
sleep holds no slot. ``pause(seconds)`` (a server's Retry-After) holds back every new attempt.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

START = 4  # first window: moderate, safe for a server that queues, and grows fast when it does not
SLOW_START = 2.0  # window factor per reply near the base latency, until the first congestion
NEAR_BASE = 1.5  # a reply within this factor of the base latency did not wait in a queue
QUEUED = 3.0  # a reply this many times the base latency (with others in flight) waited in a queue
NEAR_TIMEOUT = 0.4  # ... and so did one that took this share of the client's timeout
LATENCY_BACKOFF = 0.75
OVERLOAD_BACKOFF = 0.5


@dataclass
class Slot:
    started: float
    in_flight: int  # requests in flight when this one was sent, itself included
    episode: int  # the congestion episode it was sent in


class AdaptiveLimiter:
    """A congestion window between 1 and ``ceiling``; fixed at ``ceiling`` when not ``adaptive``."""

    def __init__(self, ceiling: int, adaptive: bool = True, start: int = START, timeout: float | None = None):
        self.ceiling = max(1, int(ceiling))
        self.timeout = timeout  # the client's, per request: replies near it mean a queue about to overflow
        self.adaptive = adaptive
        self.window = float(min(start, self.ceiling) if adaptive else self.ceiling)
        self.base_latency: float | None = None
        self.fast_growth = adaptive  # slow start: off from the first sign of congestion on
        self.in_flight = 0
        self.max_in_flight = 0
        self.decreases = 0
        self._episode = 0
        self._paused_until = 0.0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    # -- slots ---------------------------------------------------------------------------------
    def _free(self) -> bool:
        return self.in_flight < max(1, int(self.window)) and time.monotonic() >= self._paused_until

    def _take(self) -> Slot:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return Slot(time.monotonic(), self.in_flight, self._episode)

    async def acquire(self) -> Slot:
        if self._free() and not self._waiters:
            return self._take()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake()  # arms the pause timer if paused
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.in_flight -= 1  # handed a slot just as we were cancelled: give it back
                self._wake()
            else:
                self._waiters.remove(future)
            raise
        slot = future.result()
        slot.started = time.monotonic()
        return slot

    def release(self, slot: Slot, outcome: str) -> None:
        """``outcome``: "ok" (a usable reply), "overload" (timeout, 429, 503) or "error" (anything else)."""
        self.in_flight -= 1
        if self.adaptive:
            self._learn(slot, outcome, time.monotonic() - slot.started)
        self._wake()

    def pause(self, seconds: float) -> None:
        """Hold back every new attempt for ``seconds`` (the server asked everyone to wait)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def _wake(self) -> None:
        while self._waiters and self._free():
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(self._take())
        if self._waiters and self._timer is None and time.monotonic() < self._paused_until:
            def resume():
                self._timer = None
                self._wake()

            loop = self._waiters[0].get_loop()
            self._timer = loop.call_later(self._paused_until - time.monotonic(), resume)

    # -- learning ------------------------------------------------------------------------------
    def _learn(self, slot: Slot, outcome: str, latency: float) -> None:
        if outcome == "overload":
            self._decrease(slot, OVERLOAD_BACKOFF)
            return
        if outcome != "ok":
            return  # a refused or malformed request says nothing about the server's capacity
        first = self.base_latency is None
        if first or latency < self.base_latency:
            self.base_latency = latency
        ratio = latency / max(self.base_latency, 1e-6)
        near_timeout = self.timeout is not None and latency >= NEAR_TIMEOUT * self.timeout
        if (ratio >= QUEUED or near_timeout) and slot.in_flight > 1:
            self._decrease(slot, LATENCY_BACKOFF)
        elif ratio <= NEAR_BASE and self.fast_growth and slot.in_flight > 1 and not first:
            self.window = min(self.ceiling, self.window * SLOW_START)
        else:
            self.window = min(self.ceiling, self.window + 1.0 / self.window)

    def _decrease(self, slot: Slot, factor: float) -> None:
        if slot.episode < self._episode:
            return  # sent before the last decrease: this congestion was already answered
        self._episode += 1
        self.decreases += 1
        self.fast_growth = False
        self.window = max(1.0, self.window * factor)

    def state(self) -> dict:
        return {"window": round(self.window, 2), "ceiling": self.ceiling, "base_latency_s": self.base_latency,
                "max_in_flight": self.max_in_flight, "decreases": self.decreases}
