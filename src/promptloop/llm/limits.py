"""Client-side rate limits per model (`llm.models.<model>.rpm` / `tpm`).

A provider that allows 500 requests a minute answers the 501st with a 429; spacing the calls keeps
a run under the limit instead of spending its retries on it. Calls are spaced evenly (a generic
cell rate algorithm): each reserves its place in time before it waits, so concurrent calls of one
event loop never race. Worker processes of one run each take their share of the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    """At most `rpm` requests and `tpm` tokens a minute, spread evenly; None means no limit."""

    rpm: float | None = None
    tpm: float | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _requests_free_at: float = field(default=float("-inf"), init=False)
    _tokens_free_at: float = field(default=float("-inf"), init=False)

    def reserve(self, tokens: int) -> float:
        """Seconds to wait before a call of `tokens` tokens may start; its place is taken now."""
        now = self.clock()
        start = max(now, self._requests_free_at, self._tokens_free_at)
        if self.rpm:
            self._requests_free_at = start + 60.0 / self.rpm
        if self.tpm:
            self._tokens_free_at = start + 60.0 * tokens / self.tpm
        return start - now

    async def acquire(self, tokens: int) -> None:
        """Wait until a call of `tokens` tokens may start."""
        wait = self.reserve(tokens)
        if wait > 0:
            await self.sleep(wait)


def limiter_for(rpm: int | None, tpm: int | None, share: float,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> RateLimiter | None:
    """The limiter of one model in one process that runs `share` of a run's calls; None without limits."""
    if not rpm and not tpm:
        return None
    return RateLimiter(rpm * share if rpm else None, tpm * share if tpm else None, sleep=sleep)
