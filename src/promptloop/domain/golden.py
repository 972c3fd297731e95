"""The golden set: one case per row (id, input, reference, expected facts, criteria, severity)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.jsonl import read_jsonl

Severity = Literal["low", "medium", "high", "critical"]
Behavior = Literal["answer", "abstain", "refuse_injection"]
Split = Literal["optimize", "holdout"]


class HumanLabel(BaseModel):
    """A person's verdict on one answer (e.g. the 👍/👎 of the logged answer a mined case came from)."""

    model_config = ConfigDict(extra="forbid")

    answer: str = Field(min_length=1)
    rating: Literal["up", "down"]
    comment: str = ""


class GoldenCase(BaseModel):
    """One evaluation case, promptfoo-style: what is asked and what a good answer does."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    description: str
    input: str = Field(min_length=1)
    reference: str
    expected_facts: list[str] = Field(default_factory=list)
    expected_sources: list[str] = Field(default_factory=list)
    expected_behavior: Behavior = "answer"
    criteria: list[str] = Field(default_factory=list)
    forbidden_phrases: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    slice: str
    severity: Severity = "medium"
    lang: Literal["en", "ko"] = "en"
    source: str = "seed"
    split: Split = Field(
        default="holdout", description="optimize: an optimizer may see it; holdout: decisions rest on these only")
    human_label: HumanLabel | None = Field(default=None, description="used to calibrate the judge")


def load_golden(path: Path) -> list[GoldenCase]:
    """Read and validate a golden set; ids must be unique."""
    cases: list[GoldenCase] = []
    seen: dict[str, int] = {}
    for number, row in read_jsonl(path):
        try:
            case = GoldenCase.model_validate(row)
        except ValidationError as exc:
            raise input_error_from_validation(path, exc, prefix=f"line {number}") from None
        if case.id in seen:
            raise InputError(
                path, f"duplicate id {case.id!r} (first on line {seen[case.id]})", field=f"line {number}.id"
            )
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise InputError(path, "golden set is empty")
    return cases
