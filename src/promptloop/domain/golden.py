"""The golden set: one case per row, in MLflow's evaluation-dataset terms.

A case holds `inputs` (what the app is given: `question`, any variable its prompt uses, and
`history`, the earlier turns of a conversation) and `expectations` (`expected_response`,
`expected_facts`, `guidelines`, `expected_behavior`, `expected_sources`, and any other key a judge
file reads), plus id, tags, slice, severity, split, a human label and `lang` (any BCP-47 code).
Files of the first form (`input`, `reference`, `criteria`, ...) keep loading: they are read as
`inputs.question`, `expectations.expected_response` and `expectations.guidelines`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.jsonl import read_jsonl

Severity = Literal["low", "medium", "high", "critical"]
Behavior = Literal["answer", "abstain", "refuse_injection"]
Split = Literal["optimize", "holdout"]
# A BCP-47 tag: a 2-3 letter language, then optional script/region/variant subtags (en, ja, pt-BR, zh-Hant).
BCP47 = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
# The first form's names -> where they live now.
_FIRST_FORM_EXPECTATIONS = {"reference": "expected_response", "expected_facts": "expected_facts",
                            "expected_sources": "expected_sources", "expected_behavior": "expected_behavior",
                            "criteria": "guidelines"}


class HumanLabel(BaseModel):
    """A person's verdict on one answer (e.g. the 👍/👎 of the logged answer a mined case came from)."""

    model_config = ConfigDict(extra="forbid")

    answer: str = Field(min_length=1)
    rating: Literal["up", "down"]
    comment: str = ""


class Turn(BaseModel):
    """One earlier turn of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str


class Expectations(BaseModel):
    """What a good answer does (MLflow's expectation names); other keys are kept for judge files."""

    model_config = ConfigDict(extra="allow")

    expected_response: str = ""
    expected_facts: list[str] = Field(default_factory=list)
    expected_sources: list[str] = Field(default_factory=list)
    guidelines: list[str] = Field(default_factory=list)
    expected_behavior: Behavior = "answer"


class GoldenCase(BaseModel):
    """One evaluation case: what the app is given and what a good answer does."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    description: str = ""
    inputs: dict[str, Any] = Field(min_length=1)
    expectations: Expectations = Field(default_factory=Expectations)
    forbidden_phrases: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    slice: str = "default"
    severity: Severity = "medium"
    lang: str = Field(default="en", pattern=BCP47)
    source: str = "seed"
    split: Split = Field(
        default="holdout", description="optimize: an optimizer may see it; holdout: decisions rest on these only")
    human_label: HumanLabel | None = Field(default=None, description="used to calibrate the judge")

    @model_validator(mode="before")
    @classmethod
    def _first_form(cls, data: Any) -> Any:
        """`input`, `reference`, `criteria`, ... of the first form, moved to `inputs` and `expectations`."""
        if not isinstance(data, dict) or not ({"input", *_FIRST_FORM_EXPECTATIONS} & set(data)):
            return data
        data = dict(data)
        if "input" in data:
            if "inputs" in data:
                raise ValueError("`input` (first form) and `inputs` both given: keep `inputs`")
            data["inputs"] = {"question": data.pop("input")}
        expectations = dict(data.get("expectations") or {})
        for old, new in _FIRST_FORM_EXPECTATIONS.items():
            if old in data:
                expectations[new] = data.pop(old)
        data["expectations"] = expectations
        return data

    @field_validator("inputs")
    @classmethod
    def _valid_history(cls, inputs: dict[str, Any]) -> dict[str, Any]:
        if "history" in inputs:
            turns = inputs["history"]
            if not isinstance(turns, list):
                raise ValueError("inputs.history is a list of {role, content} turns")
            inputs = {**inputs, "history": [Turn.model_validate(t).model_dump() for t in turns]}
        return inputs

    @property
    def input(self) -> str:
        """The case as one text: its question, else the last user turn, else its inputs as JSON."""
        question = self.inputs.get("question")
        if isinstance(question, str):
            return question
        turns = [t["content"] for t in self.inputs.get("history", []) if t["role"] == "user"]
        return turns[-1] if turns else json.dumps(self.inputs, ensure_ascii=False, sort_keys=True)

    @property
    def reference(self) -> str:
        return self.expectations.expected_response

    @property
    def expected_facts(self) -> list[str]:
        return self.expectations.expected_facts

    @property
    def expected_sources(self) -> list[str]:
        return self.expectations.expected_sources

    @property
    def criteria(self) -> list[str]:
        return self.expectations.guidelines

    @property
    def expected_behavior(self) -> Behavior:
        return self.expectations.expected_behavior

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation's earlier turns (empty for a single question)."""
        return list(self.inputs.get("history", []))

    @property
    def other_inputs(self) -> dict[str, Any]:
        """The inputs besides the question and the history (the prompt's other variables)."""
        return {k: v for k, v in self.inputs.items() if k not in ("question", "history")}


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
