"""How a long stage reports its progress (a progress bar in the CLI, nothing in a flow)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _ignore(units: int) -> None:
    """No one is watching."""


@dataclass(frozen=True)
class ProgressHooks:
    """`start(total)` once the amount of work is known, then `advance(done)` as units finish."""

    start: Callable[[int], None] = _ignore
    advance: Callable[[int], None] = _ignore


NO_PROGRESS = ProgressHooks()
