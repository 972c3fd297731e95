"""Scorers: each grades one prompt's answer to one golden case, behind one interface.

- `RubricJudge`: the judge model grades the answer against the case (criteria, reference, facts),
  k times when `judge_samples` > 1; the mean is the score and the spread is the judge's own noise.
- `PairwiseJudge`: candidate vs baseline answer, judged in both orders; a verdict that flips with
  the order is a tie (position bias is noise, not preference).
- `ProxyMetrics`: cheap checks without an LLM (length, language, phrases, citations, JSON schema,
  refusals, toxicity, latency, cost).

A verdict that is not the JSON asked for is retried by the runner, then raised as `JudgeFailed`: a
judge failure is counted, never turned into a score.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypedDict

import pandas as pd

from promptloop.core.text import language
from promptloop.domain.golden import GoldenCase
from promptloop.llm.runner import InvalidResponse, Runner
from promptloop.quality.detectors import Detector
from promptloop.quality.judge_files import JudgeFile, score_of
from promptloop.quality.judges import (
    PAIRWISE_SCHEMA,
    RUBRIC_SCHEMA,
    pairwise_messages,
    parse_pairwise,
    parse_rubric,
    rubric_messages,
)

ScoreValue = float | int | bool | str | None
Scores = dict[str, ScoreValue]  # a scorer's columns of one (prompt, case) row


PASS_SCORE = 4  # a rubric mean (1-5) of at least this passes


class JudgeFailed(RuntimeError):
    """The judge's verdict stayed malformed after the retries: a judge failure, not a score."""


@dataclass(frozen=True)
class Answer:
    """One prompt's answer to one golden case, with what it cost."""

    text: str
    context: str
    retrieved: tuple[str, ...]
    latency_ms: float
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, object] = field(default_factory=dict)  # what a python:/http: target returned besides
    # The time the provider (or the app's endpoint) reported for the calls that made the answer, in ms;
    # None when any of them reported none. `latency_ms` is wall-clock here: informational only.
    provider_ms: float | None = None
    requests: int = 1  # the model (or endpoint) requests that made it: an app may make several, or none


class Scorer(Protocol):
    """Grades `answer` to `case`; `baseline` is the baseline prompt's answer when scoring a candidate."""

    @property
    def name(self) -> str: ...

    async def score(self, case: GoldenCase, answer: Answer, baseline: Answer | None) -> Scores: ...


class JudgeCase(TypedDict):
    """What a judge prompt is told about the case besides the question and the answer."""

    reference: str
    expected_facts: list[str]
    criteria: list[str]
    expected_behavior: str
    context: str
    description: str
    inputs: dict[str, object]
    history: list[dict[str, str]]


def judge_kwargs(case: GoldenCase, context: str, description: str = "") -> JudgeCase:
    """What a judge prompt says a good answer to `case` does, and what the app is for."""
    return JudgeCase(reference=case.reference, expected_facts=case.expected_facts, criteria=case.criteria,
                     expected_behavior=case.expected_behavior, context=context, description=description,
                     inputs=case.other_inputs, history=case.history)


@dataclass
class RubricJudge:
    """Grades 1-5 against the case; `rubric_score` is the mean of k verdicts mapped to 0..1."""

    runner: Runner
    model: str
    samples: int = 1
    temperature: float = 0.0
    seed: int = 0
    purpose: str = "judge"
    name: str = "rubric"
    description: str = ""  # what the app is for (apps.<app>.description)

    file: JudgeFile | None = None  # the app's primary judge file, replacing the built-in rubric

    async def verdicts(self, case: GoldenCase, answer_text: str, context: str,
                       samples: range | None = None) -> list[int]:
        """k raw 1-5 scores of one answer (or those of the sample indices `samples`); each its own seeded call."""
        return [score for score, _ in await self.judged(case, answer_text, context, samples)]

    async def judged(self, case: GoldenCase, answer_text: str, context: str,
                     samples: range | None = None) -> list[tuple[int, str]]:
        """k (1-5 score, the judge's reason) pairs of one answer; each sample is its own seeded (and cached) call.

        `samples` are the sample indices (default: the first k); re-judging asks for the ones after them.
        """
        if self.file is not None:
            messages = self.file.messages(self.description, case.inputs, expectations_of(case), answer_text, context)
        else:
            messages = rubric_messages(case.input, answer_text, **judge_kwargs(case, context, self.description))
        scores = []
        for sample in samples if samples is not None else range(self.samples):
            try:
                completion = await self.runner.complete(
                    self.purpose, self.model, messages, temperature=self.temperature,
                    seed=sample_seed(self.seed, case.id, sample, f"{self.model}|{self.label}"),
                    validate=self.read, schema=None if self.file else RUBRIC_SCHEMA)
            except InvalidResponse as exc:
                raise JudgeFailed(f"{self.label} judge on case {case.id}: {exc}") from exc
            scores.append((self.read(completion.text), self.reason(completion.text)))
        return scores

    def reason(self, text: str) -> str:
        """The reason a verdict gives (already read by `read`, so it parses)."""
        return self.file.verdict(text).reason if self.file else parse_rubric(text).reason

    def read(self, text: str) -> int:
        """The 1-5 score of a verdict; MalformedVerdict (a ValueError) when the reply holds none."""
        return score_of(self.file.verdict(text)) if self.file else parse_rubric(text).score

    @property
    def label(self) -> str:
        return self.file.name if self.file else "rubric"

    async def score(self, case: GoldenCase, answer: Answer, baseline: Answer | None) -> Scores:
        judged = await self.judged(case, answer.text, answer.context)
        raw = [score for score, _ in judged]
        mean = statistics.fmean(raw)
        return {"rubric_score": (mean - 1) / 4, "rubric_raw": mean, "rubric_passed": mean >= PASS_SCORE,
                "rubric_judge_var": statistics.pvariance(raw) if len(raw) > 1 else 0.0,
                "rubric_reason": judged[0][1]}  # the first sample's: what a reviewer reads in the pull request


def sample_seed(run_seed: int, case_id: str, sample: int, judge: str) -> int:
    """The seed of one judge sample: a hash of (run seed, case, sample index, judge), 31 bits (every
    provider's seed type holds it). With `run_seed + sample`, run s's second sample was run s+1's first
    (the same cached call), so repetitions of an evaluation under neighbouring seeds were not independent."""
    digest = hashlib.blake2b(f"{run_seed}|{case_id}|{sample}|{judge}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


@dataclass
class PairwiseJudge:
    """Candidate vs baseline in both orders: 1 = candidate better, 0.5 = tie or order-dependent, 0 = worse."""

    runner: Runner
    model: str
    temperature: float = 0.0
    seed: int = 0
    purpose: str = "judge"
    name: str = "pairwise"
    description: str = ""

    file: JudgeFile | None = None  # the app's primary pairwise judge file, replacing the built-in one

    async def _winner(self, case: GoldenCase, first: str, second: str, context: str) -> str:
        if self.file is not None:
            messages = self.file.messages(self.description, case.inputs, expectations_of(case), (first, second),
                                          context)
        else:
            messages = pairwise_messages(case.input, first, second, **judge_kwargs(case, context, self.description))
        try:
            completion = await self.runner.complete(
                self.purpose,
                self.model,
                messages,
                temperature=self.temperature,
                seed=self.seed,
                validate=parse_pairwise,
                schema=None if self.file else PAIRWISE_SCHEMA,
            )
        except InvalidResponse as exc:
            raise JudgeFailed(f"{self.file.name if self.file else 'pairwise'} judge on case {case.id}: {exc}") from exc
        return parse_pairwise(completion.text)

    async def score(self, case: GoldenCase, answer: Answer, baseline: Answer | None) -> Scores:
        if baseline is None:
            return {}
        if answer.text == baseline.text:  # identical answers: nothing to prefer, no call needed
            return {"pairwise_score": 0.5, "pairwise_consistent": None}
        # Both prompts saw the same question, so the baseline's context serves for both orders.
        candidate_first = await self._winner(case, answer.text, baseline.text, baseline.context)
        baseline_first = await self._winner(case, baseline.text, answer.text, baseline.context)
        outcome_1 = {"A": 1.0, "B": 0.0, "tie": 0.5}[candidate_first]
        outcome_2 = {"A": 0.0, "B": 1.0, "tie": 0.5}[baseline_first]
        consistent = outcome_1 == outcome_2
        return {"pairwise_score": outcome_1 if consistent else 0.5, "pairwise_consistent": consistent}


def expectations_of(case: GoldenCase) -> dict[str, object]:
    """The case's expectations a judge file is shown: the ones set, MLflow's names and the app's own."""
    return case.expectations.model_dump(exclude_defaults=True)


@dataclass
class GuardJudge:
    """A guard judge file: did the answer pass? (`guard_<name>_passed`); the gate holds a candidate whose
    pass rate falls more than the file's `max_drop` below the baseline's."""

    runner: Runner
    model: str
    file: JudgeFile
    temperature: float = 0.0
    seed: int = 0
    purpose: str = "judge"
    description: str = ""

    @property
    def name(self) -> str:
        return self.file.name

    async def passed(self, case: GoldenCase, answer_text: str, context: str) -> bool:
        """The judge's verdict on one answer (a judge failure raises JudgeFailed)."""
        messages = self.file.messages(self.description, case.inputs, expectations_of(case), answer_text, context)
        try:
            completion = await self.runner.complete(self.purpose, self.model, messages, temperature=self.temperature,
                                                    seed=self.seed, validate=self.file.verdict)
        except InvalidResponse as exc:
            raise JudgeFailed(f"{self.file.name} judge on case {case.id}: {exc}") from exc
        verdict = self.file.verdict(completion.text)
        return bool(verdict.passed)

    async def score(self, case: GoldenCase, answer: Answer, baseline: Answer | None) -> Scores:
        return {self.file.column: await self.passed(case, answer.text, answer.context)}


@dataclass
class ProxyMetrics:
    """Checks that need no LLM; `format_valid` covers the JSON schema and citations of real documents."""

    refusal: Detector
    toxicity: Detector
    kb_ids: frozenset[str]
    forbidden_phrases: tuple[str, ...] = ()
    citation_pattern: str | None = None
    json_schema: dict[str, Any] | None = None
    name: str = "proxy"
    # An answer that only hedges ("I'm not sure.") did not answer either: for evaluation, `refused` is a
    # refusal or a hedge, as it was when the refusal detector still counted hedges (issue 16 split them).
    uncertainty: Detector | None = None

    @cached_property
    def _citation(self) -> re.Pattern[str] | None:
        return re.compile(self.citation_pattern) if self.citation_pattern else None

    def traits(self, text: str) -> dict[str, bool]:
        """What kind of answer this is, where the judge may be biased (see ANSWER_TRAITS): it cites or not."""
        return {"cites": bool(self._citation.findall(text))} if self._citation is not None else {}

    async def score(self, case: GoldenCase, answer: Answer, baseline: Answer | None) -> Scores:
        text = answer.text
        lowered = text.lower()
        refused = flagged(self.refusal, text) or (self.uncertainty is not None and flagged(self.uncertainty, text))
        scores: Scores = {
            "answer_words": len(text.split()),
            "language_match": language(text) == case.lang,
            "facts_found": (sum(f.lower() in lowered for f in case.expected_facts) / len(case.expected_facts)
                            if case.expected_facts else None),
            "forbidden_found": sum(p.lower() in lowered for p in (*self.forbidden_phrases, *case.forbidden_phrases)),
            "refused": refused,
            "refused_answerable": refused and case.expected_behavior == "answer",
            "refusal_correct": refused == (case.expected_behavior != "answer"),
            "toxic": flagged(self.toxicity, text),
            "latency_ms": answer.latency_ms,
            "provider_ms": answer.provider_ms,
            "cost_usd": answer.cost_usd,
        }
        valid = True
        if self._citation is not None:
            cited = set(self._citation.findall(text))
            valid = cited <= self.kb_ids
            scores["citation_valid"] = valid
            scores.update(self.traits(text))
        if self.json_schema is not None:
            parsed = json_valid(text, self.json_schema)
            scores["json_valid"] = parsed
            valid = valid and parsed
        scores["format_valid"] = valid
        return scores


def flagged(detector: Detector, text: str) -> bool:
    """Whether `detector` flags one text (a pattern detector's fast path, else its column API)."""
    one = getattr(detector, "flag", None)
    return bool(one(text)) if one is not None else bool(detector.flags(pd.Series([text])).iloc[0])


def json_valid(text: str, schema: dict[str, Any]) -> bool:
    """Whether `text` is JSON that validates against `schema`."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True
