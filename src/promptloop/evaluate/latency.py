"""The latency the gate may use: the provider's own timing, else a dedicated sequential probe.

Wall-clock time measured around the evaluation's calls says more about the machine than the prompt: eight
calls are in flight at once, cached answers replay old times, and the prompts evaluated first pay the cold
start. So the latency guard reads the processing time the provider reports for each call (the
`openai-processing-ms` header, which the simulated models send as well). When some call reports none, a
probe measures each prompt on its own: one call at a time, the prompts taking turns on the same case (the
one that goes first alternates), uncached, the warm-up rounds discarded, until each candidate's paired
difference is narrow enough or the probe's calls run out.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from promptloop.core.config import LatencyProbe
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate.plan import BASELINE, Contender
from promptloop.evaluate.scorers import Answer
from promptloop.evaluate.stats import scipy_stats
from promptloop.evaluate.targets import Request, Target
from promptloop.llm.client import Completion
from promptloop.llm.runner import BudgetExceeded, CallFailed, ResponseCache, Runner

PROBE_PURPOSE = "latency-probe"


class NoCache(ResponseCache):
    """A response cache that never answers and keeps nothing: every probe call is paid and timed."""

    def __init__(self) -> None:  # no database: nothing is kept
        pass

    def get(self, key: str) -> Completion | None:
        return None

    def put(self, key: str, completion: Completion) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class ProbeResult:
    """Per prompt name, the measured latency of each round (aligned: round i is the same case for all)."""

    rounds: dict[str, list[float]] = field(default_factory=dict)
    calls: int = 0
    stopped: str | None = None  # why it ended before it could measure enough rounds

    @property
    def measured(self) -> int:
        return min((len(v) for v in self.rounds.values()), default=0)


def needs_probe(rows: Sequence[Mapping[str, object]]) -> bool:
    """True when some answer of the run has no provider-reported time."""
    return any(row.get("provider_ms") is None for row in rows)


def round_order(contenders: list[Contender], round_index: int) -> list[Contender]:
    """The order the prompts are asked in a round: rotated each round (ABAB.., then BA..), so no prompt
    always goes first and pays a connection's or a server's warm-up."""
    shift = round_index % len(contenders)
    return contenders[shift:] + contenders[:shift]


def timed_ms(answer: Answer) -> float:
    """The answer's time: the provider's when it reported one, else the call's own (sequential) wall time."""
    return answer.provider_ms if answer.provider_ms is not None else answer.latency_ms


def diff_half_width(baseline: list[float], candidate: list[float], confidence: float = 0.95) -> float:
    """Half the width of the t confidence interval of the mean paired difference (inf with < 2 rounds)."""
    diffs = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    if len(diffs) < 2:
        return math.inf
    sd = float(diffs.std(ddof=1))
    return float(scipy_stats().t.ppf(0.5 + confidence / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs)))


def narrow_enough(rounds: dict[str, list[float]], settings: LatencyProbe) -> bool:
    """Every candidate's paired difference with the baseline is known to `ci_half_width_ms`."""
    base = rounds[BASELINE]
    return len(base) >= settings.min_rounds and all(
        diff_half_width(base, values) <= settings.ci_half_width_ms
        for name, values in rounds.items() if name != BASELINE)


async def probe_latency(runner: Runner, target: Target, contenders: list[Contender], cases: list[GoldenCase],
                        settings: LatencyProbe, seed: int) -> ProbeResult:
    """Measure each prompt's latency in sequential, interleaved rounds (see the module's docstring).

    `runner` must not cache (`NoCache`) and its concurrency does not matter: one call is awaited at a time.
    """
    result = ProbeResult({c.name: [] for c in contenders})
    if not cases or not contenders:
        return result
    round_index = 0
    while result.calls + len(contenders) <= settings.max_calls:
        case = cases[round_index % len(cases)]
        timings: dict[str, float] = {}
        try:
            for contender in round_order(contenders, round_index):
                request = Request(PROBE_PURPOSE, contender.prompt, contender.model, case, seed)
                timings[contender.name] = timed_ms(await target.answer(runner, request))
                result.calls += 1
        except (CallFailed, BudgetExceeded) as error:
            result.stopped = str(error)
            break
        if round_index >= settings.warmup_rounds:
            for name, ms in timings.items():
                result.rounds[name].append(ms)
        round_index += 1
        if narrow_enough(result.rounds, settings):
            break
    return result


def run_probe(runner: Runner, target: Target, contenders: list[Contender], cases: list[GoldenCase],
              settings: LatencyProbe, seed: int) -> ProbeResult:
    """`probe_latency` on an event loop of its own (an app's connections kept alive from round to round)."""
    return asyncio.run(runner.pooled(probe_latency(runner, target, contenders, cases, settings, seed)))


def usable(result: ProbeResult, settings: LatencyProbe) -> bool:
    """Enough measured rounds to stand for the prompts' latency."""
    return result.measured >= settings.min_rounds
