"""The node agent's admission control: C streams at once, a bounded FIFO queue behind them.

One GPU serves one model with a fixed number of concurrent streams (the reference deployment's
rule: no contention, no out-of-memory). Requests beyond that wait in arrival order; once the queue
is full a request is refused at once, so a client learns to retry elsewhere instead of waiting
behind a queue that cannot drain in time.

The gate lives on one asyncio event loop and takes no locks. A waiter that is cancelled (its client
went away, its queue wait timed out) leaves the queue, and a slot handed to it at the same moment
is passed on, so a cancellation never leaks a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class GateFull(Exception):
    """The queue already holds ``max_queue`` waiters."""


class GateClosed(Exception):
    """The gate was closed (the agent is stopping) before a slot was free."""


class StreamGate:
    """At most ``capacity`` holders at once and at most ``max_queue`` waiters, served in arrival order.

    ``acquire()`` returns once the caller holds a slot; the caller must ``release()`` it exactly once.
    """

    def __init__(self, capacity: int, max_queue: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue cannot be negative")
        self.capacity = capacity
        self.max_queue = max_queue
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def active(self) -> int:
        """Holders of a slot (streams in flight)."""
        return self._active

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    async def acquire(self) -> None:
        """Wait for a slot in arrival order.

        Raises ``GateFull`` at once when the queue is full and ``GateClosed`` when the gate is (or
        gets) closed. Cancelling the caller removes it from the queue.
        """
        if self._closed:
            raise GateClosed
        if self._active < self.capacity and not self._waiters:
            self._active += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise GateFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The slot was handed over just as the caller was cancelled: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the longest waiter gets it."""
        if self._active <= 0:
            raise RuntimeError("release() without a held slot")
        self._active -= 1
        self._hand_over()

    def close(self) -> None:
        """Refuse every waiter and every later ``acquire()`` with ``GateClosed``; holders keep their slot."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(GateClosed())

    def _hand_over(self) -> None:
        while self._waiters and self._active < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._active += 1  # counted for the waiter before it wakes: no one can overtake it
                waiter.set_result(None)
