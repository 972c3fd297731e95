"""How the simulated judge grades a structured (JSON) answer, such as triage-bot's.

A JSON answer is checked field by field against what the case expects (`"category is billing"` in
its guidelines, or `category: billing` in a judge file's expectations), for the keys a triage answer
must hold, and for the language of its free-text field against the language of the user's text.
Each problem is a finding with a short reason; the reasons are what a judge (and an agent rating
the answer in the ticket tool) would say.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from promptloop.core.text import language
from promptloop.demo.simulated import triage

# The keys a triage answer must hold (the second sample app's JSON schema).
TRIAGE_KEYS = ("category", "priority", "reply")
# Guideline lines that name a field's expected value: "category is billing", "priority is high".
_FIELD_GUIDELINE = re.compile(r"^\s*(category|priority)\s+is\s+([a-z_]+)\s*$", re.IGNORECASE)
LANGUAGE_NAMES = {"en": "English", "ko": "Korean", "ja": "Japanese"}
# Each finding loses this much of the quality: one problem fails the answer (score 3 of 5), three make it useless.
PENALTY = 0.4


@dataclass
class Findings:
    """What is wrong with a structured answer: (code, reason) pairs, worst first, and the resulting quality."""

    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def quality(self) -> float:
        if any(code == "format" and "not a JSON object" in reason for code, reason in self.problems):
            return 0.0
        return max(0.0, 1.0 - PENALTY * len(self.problems))

    @property
    def reasons(self) -> list[str]:
        return [reason for _, reason in self.problems] or ["correct fields, complete and in the customer's language"]

    def has(self, code: str) -> bool:
        return any(c == code for c, _ in self.problems)


def json_object(text: str) -> dict[str, object] | None:
    """The answer as a JSON object, or None when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def expected_fields(guidelines: list[str], expectations: dict[str, object] | None = None) -> dict[str, str]:
    """The field values a case expects, from its expectations' keys or from guideline lines."""
    found = {k: str(v) for k, v in (expectations or {}).items() if k in TRIAGE_KEYS[:2] and isinstance(v, str)}
    for line in guidelines:
        match = _FIELD_GUIDELINE.match(line)
        if match:
            found.setdefault(match.group(1).lower(), match.group(2).lower())
    return found


def with_ruled_fields(expectations: dict[str, object], instructions: str, user: str) -> dict[str, object]:
    """The expectations, plus the fields the judge's own instructions fix for this ticket where the case
    names none: told "outages are priority high", an outage's priority is high; told "charges ... are
    billing", a ticket about money is billing. A real judge applies the rules it is given to every
    case, also to a case mined from the logs that carries no expected category or priority."""
    named = expected_fields(strings(expectations.get("guidelines")), expectations)
    rules = triage.read_features(" ".join(instructions.split()))  # a rule may wrap across the file's lines
    ruled = {}
    if rules.money_is_billing and triage.is_about_money(user):
        ruled["category"] = "billing"
    if rules.outages_high and triage.is_outage(user):
        ruled["priority"] = "high"
    return {**expectations, **{k: v for k, v in ruled.items() if k not in named}}


def strings(value: object) -> list[str]:
    """The strings of a JSON list (nothing for anything else)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def is_structured(answer: str, expected: dict[str, str]) -> bool:
    """Whether the answer is graded as a structured one: the case expects fields, or the answer is triage JSON."""
    data = json_object(answer)
    return bool(expected) or (data is not None and "category" in data)


def user_text(values: list[object]) -> str:
    """The user's own words among a case's inputs: the longest text (a JSON object given as text is opened)."""
    texts: list[str] = []
    for value in values:
        opened = json_object(value) if isinstance(value, str) else value if isinstance(value, dict) else None
        if opened is not None:
            texts.extend(v for v in opened.values() if isinstance(v, str))
        elif isinstance(value, str):
            texts.append(value)
    return max(texts, key=len, default="")


def grade(answer: str, expected: dict[str, str], user: str) -> Findings:
    """The findings on one structured answer: format, then each expected field, then the reply's language."""
    findings = Findings()
    data = json_object(answer)
    if data is None:
        findings.problems.append(("format", "the answer is not a JSON object"))
        return findings
    missing = [key for key in TRIAGE_KEYS if key not in data]
    if missing:
        findings.problems.append(("format", f"missing key: {', '.join(missing)}"))
    for key, value in expected.items():
        given = data.get(key)
        if given is not None and str(given).lower() != value:
            findings.problems.append((f"wrong_{key}", f"wrong {key}: {given} instead of {value}"))
    reply = data.get("reply")
    if isinstance(reply, str) and user:
        wanted, written = language(user), language(reply)
        if wanted != written:
            findings.problems.append(("language", f"reply not in the customer's language "
                                                  f"({LANGUAGE_NAMES[written]} instead of {LANGUAGE_NAMES[wanted]})"))
    return findings
