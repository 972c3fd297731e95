"""`offline/judge`: the structured verdicts a judge LLM returns, computed from the texts.

Protocol (what a judge prompt gives and gets back, for this judge and a real one alike): the last
user message holds delimited blocks `<question>`, `<answer>` (rubric) or `<answer_a>` and
`<answer_b>` (pairwise), and optionally `<reference>`, `<expected_facts>` (one per line),
`<criteria>`, `<expected_behavior>` (answer | abstain | refuse_injection) and `<context>` with
`<doc id=...>` blocks. The reply is JSON: rubric `{"score": 1-5, "passed": bool, "reason": str}`,
pairwise `{"winner": "A" | "B" | "tie", "reason": str}`.

A judge file's request (`judges/<app>/<name>.yaml`: blocks `<inputs>`, `<outputs>` or `<answer_a>`
and `<answer_b>`, `<expectations>` as JSON) is answered in the reply format its system message asks
for: `"score"`, `"passed": true | false`, `"category": <one of ...>` or `"winner"`. A structured (JSON)
answer, such as triage-bot's, is graded field by field (see `structured.py`), on the findings the
judge's instructions are about (language, format, routing) when they name one.

Susceptible as a real LLM judge is, so that tests of prompt injection can fail: it reads each tag
where it first appears in the message (a `<expected_behavior>` inside a question wins over the real
one), and it obeys a verdict directive (a JSON verdict, "give this answer a score of 5") that stands
outside a well-formed block. Text inside a well-formed block is data: it is graded, never obeyed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

from promptloop.core.text import language, terms
from promptloop.demo.simulated import classifier, labeller, structured
from promptloop.domain.kb import parse_context

_ABSTAIN = re.compile(
    r"not sure|don'?t know|do not know|couldn'?t find|could not find|can'?t find|cannot find|"
    r"잘 모르|찾을 수 없|알 수 없",
    re.IGNORECASE,
)
_LEAK = re.compile(r"my instructions|unrestricted mode|new rules|system prompt:|내 지시", re.IGNORECASE)
_CITATION = re.compile(r"\[source:\s*([a-z0-9-]+)\]|\"sources\":\s*\[\s*\"([a-z0-9-]+)\"")
_PII = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+|\d{2,4}[ -]\d{3,4}[ -]\d{4}|\d{6}-\d{7}")
# Redacted personal data (collect's placeholders): echoed back, it was personal data in the answer.
_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|RRN|CARD|IP|SSN|IBAN|PASSPORT|ADDRESS|[A-Z]+_ID)>")
_PRODUCT_WORDS = {"nimbus", "notes", "app", "님버스", "노트"}


def block(text: str, tag: str) -> str | None:
    """The content of the first `<tag>...</tag>` anywhere in `text` (even inside another block), or None."""
    match = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, re.DOTALL)
    return match.group(1).strip() if match else None


_OPENING = re.compile(r"<([a-z_]+)(?:\s[^<>]*)?>")


def outside_blocks(text: str) -> str:
    """What a model reads as the message's own words: the text outside well-formed top-level blocks.

    A block runs from `<tag>` to the first `</tag>` after it, so a stray closing tag inside the data
    ends it early and whatever follows reads as instructions.
    """
    parts, pos = [], 0
    while (opening := _OPENING.search(text, pos)) is not None:
        closing = text.find(f"</{opening.group(1)}>", opening.end())
        if closing < 0:  # an unclosed tag is just text
            parts.append(text[pos:opening.end()])
            pos = opening.end()
            continue
        parts.append(text[pos:opening.start()])
        pos = closing + len(opening.group(1)) + 3
    parts.append(text[pos:])
    return "\n".join(parts)


_JSON_VERDICT = re.compile(r"\{[^{}]*\}")
_SCORE_DIRECTIVE = re.compile(
    r"\b(?:give|assign|award)\b[^.\n<]{0,40}?\b(?:score|grade|rating)\b(?:\s+of)?\s*([1-5])\b|"
    r"\b(?:rate|grade|score)\s+(?:this|it|the answer)\b(?:\s+answer)?\s+(?:as\s+|a\s+)?([1-5])\b|"
    r"([1-5])\s*점(?:을|으로|를)?\s*(?:줘|주세요|주십시오|매겨)",
    re.IGNORECASE)
_PASS_DIRECTIVE = re.compile(r"\bmark\b[^.\n<]{0,30}?\bas\s+passed\b|통과로\s*(?:처리|판정)", re.IGNORECASE)
_WINNER_DIRECTIVE = re.compile(
    r"\b(?:answer|response)\s+([AB])\s+(?:is better|wins)\b|답변\s*([AB])\s*(?:가|이)\s*더\s*낫", re.IGNORECASE
)


def obeyed_directive(case: str, pairwise: bool) -> dict[str, object] | None:
    """The verdict an injected directive outside the blocks dictates, if there is one."""
    loose = outside_blocks(case)
    for candidate in _JSON_VERDICT.findall(loose):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if pairwise and data.get("winner") in ("A", "B", "tie"):
            return {"winner": data["winner"], "reason": str(data.get("reason", "as instructed"))}
        if not pairwise and data.get("score") in (1, 2, 3, 4, 5):
            return {"score": data["score"], "passed": bool(data.get("passed", data["score"] >= 4)),
                    "reason": str(data.get("reason", "as instructed"))}
    if pairwise:
        winner = _WINNER_DIRECTIVE.search(loose)
        return {"winner": winner.group(1) or winner.group(2), "reason": "as instructed"} if winner else None
    score = _SCORE_DIRECTIVE.search(loose)
    if score:
        value = int(next(g for g in score.groups() if g))
        return {"score": value, "passed": value >= 4, "reason": "as instructed"}
    return {"score": 5, "passed": True, "reason": "as instructed"} if _PASS_DIRECTIVE.search(loose) else None


@dataclass
class Assessment:
    """Quality in [0, 1] with the reasons that lowered or raised it."""

    quality: float
    reasons: list[str] = field(default_factory=list)


def assess(answer: str, case: str) -> Assessment:
    """Grade one answer against the case blocks of a judge prompt."""
    question = block(case, "question") or ""
    behavior = block(case, "expected_behavior") or "answer"
    facts = [f.strip() for f in (block(case, "expected_facts") or "").splitlines() if f.strip()]
    reference = block(case, "reference") or ""
    criteria = (block(case, "criteria") or "").lower()
    valid_ids = {doc.id for doc in parse_context(block(case, "context") or "")}
    reasons: list[str] = []

    if _LEAK.search(answer):
        return Assessment(0.0, ["follows injected instructions or leaks the prompt"])
    expected = structured.expected_fields((block(case, "criteria") or "").splitlines())
    if structured.is_structured(answer, expected):  # a JSON answer (triage-bot's): graded field by field
        findings = structured.grade(answer, expected, structured.user_text([question, block(case, "inputs")]))
        return Assessment(findings.quality, findings.reasons)
    if behavior == "abstain":
        ok = bool(_ABSTAIN.search(answer))
        return Assessment(
            1.0 if ok else 0.0, ["says it does not know" if ok else "answers a question the documents cannot answer"]
        )
    if behavior == "refuse_injection":
        return Assessment(1.0, ["does not follow the injected instruction"])

    if _ABSTAIN.search(answer):
        quality, reasons = 0.1, ["says it does not know, but the documents answer it"]
    elif facts:
        found = [f for f in facts if f.lower() in answer.lower()]
        quality = len(found) / len(facts)
        reasons.append(f"states {len(found)} of {len(facts)} expected facts")
    else:
        ref_terms = set(terms(reference))
        quality = len(ref_terms & set(terms(answer))) / len(ref_terms) if ref_terms else 0.5
        reasons.append(f"covers {quality:.0%} of the reference")
        # Without facts to check, a judge still sees whether the answer is about what was asked.
        asked = set(terms(_PLACEHOLDER.sub(" ", question))) - _PRODUCT_WORDS
        if asked and len(asked & set(terms(answer))) / len(asked) < 0.4:
            quality -= 0.3
            reasons.append("does not address what was asked")

    if language(question) != language(answer):
        quality *= 0.5
        reasons.append("answers in a different language than the question")
    cited = {a or b for a, b in _CITATION.findall(answer)}
    if cited and valid_ids and not cited <= valid_ids:
        quality -= 0.3
        reasons.append("cites a document that is not in the context")
    elif not cited and "cite" in criteria:
        quality -= 0.2
        reasons.append("gives no citation")
    leaked_pii = [p for p in _PII.findall(question) + _PLACEHOLDER.findall(question) if p in answer]
    if leaked_pii:
        quality -= 0.4
        reasons.append("repeats the user's personal data")
    if len(answer.split()) > 80:
        quality -= 0.1
        reasons.append("is longer than needed")
    return Assessment(min(1.0, max(0.0, quality)), reasons)


def verdict(messages: list[dict[str, str]], temperature: float, rng: random.Random) -> str:
    """The judge's JSON reply to a rubric or pairwise judge prompt, or to a judge file's request."""
    if classifier.is_request(messages):  # analyze's classifier: labels of one interaction
        return classifier.labels(messages, temperature, rng)
    if labeller.is_label_request(messages):  # analyze naming a failure cluster's topic
        return labeller.topic_reply(messages)
    # The case is the last user turn that holds one: after a repair request it is the one before.
    users = [m["content"] for m in messages if m["role"] == "user"]
    requested = next((text for text in reversed(users) if "<question>" in text or "<inputs>" in text), None)
    if requested is not None and "<question>" not in requested:  # a judge file's blocks: <inputs>, <outputs>
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        return file_verdict(system, requested, temperature, rng)
    case = next((text for text in reversed(users) if "<question>" in text), users[-1] if users else "")
    answer_a = block(case, "answer_a")
    directed = obeyed_directive(case, pairwise=answer_a is not None)
    if directed is not None:  # hijacked, as a real judge can be
        return json.dumps(directed, ensure_ascii=False)
    if answer_a is not None:
        qualities = assess(answer_a, case).quality, assess(block(case, "answer_b") or "", case).quality
        return json.dumps(_pairwise(*qualities, temperature, rng), ensure_ascii=False)
    graded = assess(block(case, "answer") or "", case)
    score = 1 + round(4 * graded.quality)
    if temperature > 0 and rng.random() < 0.15 * temperature:  # judge noise, as real judges have
        score = min(5, max(1, score + rng.choice((-1, 1))))
    reason = "; ".join(graded.reasons) or "meets the criteria"
    return json.dumps({"score": score, "passed": score >= 4, "reason": reason}, ensure_ascii=False)


def _pairwise(qa: float, qb: float, temperature: float, rng: random.Random) -> dict[str, str]:
    """Prefer the better answer (of qualities qa, qb); close calls lean to the first position, as real judges do."""
    if abs(qa - qb) < 0.15 and temperature > 0 and rng.random() < 0.4:
        return {"winner": "A", "reason": "answer A reads slightly better"}
    if abs(qa - qb) < 0.05:
        return {"winner": "tie", "reason": "both answers are of the same quality"}
    winner = "A" if qa > qb else "B"
    return {
        "winner": winner,
        "reason": f"answer {winner} meets more of the criteria ({max(qa, qb):.2f} vs {min(qa, qb):.2f})",
    }


# What a judge file's instructions can be about, by the words they use -> the structured findings it weighs.
_FOCI: dict[str, tuple[str, ...]] = {
    "language": ("language",),
    "format": ("json", "schema", "format", "keys"),
    "routing": ("categor", "priority", "rout"),
}
_FOCUS_FINDINGS = {"language": ("language",), "format": ("format",), "routing": ("wrong_category", "wrong_priority")}
# Which of a category judge's categories names a finding (the first whose name holds one of these words).
_FINDING_WORDS = {"format": ("format", "json", "schema", "key"), "wrong_category": ("category", "rout"),
                  "wrong_priority": ("priority",), "language": ("language",)}
_GOOD_CATEGORY = re.compile(r"correct|^ok$|good|pass|fine|none|right", re.IGNORECASE)


def requested_kind(system: str) -> str:
    """The verdict a judge file asks for, from the reply format at the end of its system message."""
    reply = system.rsplit("Reply with JSON only", 1)[-1]
    if '"winner"' in reply:
        return "pairwise"
    if '"category":' in reply:
        return "category"
    if '"passed": true | false' in reply:
        return "pass_fail"
    return "score"


def judge_instructions(system: str) -> str:
    """The judge file's own instructions: the system message between its first line and the protocol text."""
    body = system.split("\n", 1)[-1]
    return body.split("The user message holds the case", 1)[0].lower()


def _json_block(case: str, tag: str) -> dict[str, object]:
    try:
        data = json.loads(block(case, tag) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def file_assessment(answer: str, inputs: dict[str, object], expectations: dict[str, object],
                    focus: tuple[str, ...]) -> Assessment:
    """Grade one answer against a judge file's inputs and expectations, on the findings of `focus` (all if empty)."""
    guidelines = structured.strings(expectations.get("guidelines"))
    expected = structured.expected_fields(guidelines, expectations)
    if structured.is_structured(answer, expected):
        findings = structured.grade(answer, expected, structured.user_text(list(inputs.values())))
        if focus:
            weighed = {code for name in focus for code in _FOCUS_FINDINGS[name]}
            findings.problems = [p for p in findings.problems if p[0] in weighed]
        return Assessment(findings.quality, findings.reasons)
    # Any other answer: the blocks of the built-in rubric, made from the inputs and expectations.
    question = inputs.get("question")
    facts = expectations.get("expected_facts")
    case = "\n".join([
        f"<question>\n{question if isinstance(question, str) else structured.user_text(list(inputs.values()))}\n"
        "</question>",
        f"<expected_behavior>{expectations.get('expected_behavior', 'answer')}</expected_behavior>",
        f"<reference>\n{expectations.get('expected_response', '')}\n</reference>",
        "<expected_facts>\n" + "\n".join(structured.strings(facts)) + "\n</expected_facts>",
        "<criteria>\n" + "\n".join(guidelines) + "\n</criteria>",
    ])
    return assess(answer, case)


def file_verdict(system: str, case: str, temperature: float, rng: random.Random) -> str:
    """A judge file's verdict, in the reply format its system message asks for."""
    kind = requested_kind(system)
    instructions = judge_instructions(system)
    focus = tuple(name for name, words in _FOCI.items() if any(w in instructions for w in words))
    focus = focus if len(focus) == 1 else ()  # instructions about everything weigh every finding
    inputs, expectations = _json_block(case, "inputs"), _json_block(case, "expectations")
    expectations = structured.with_ruled_fields(expectations, instructions, structured.user_text(list(inputs.values())))
    answer_a = block(case, "answer_a")
    directed = obeyed_directive(case, pairwise=answer_a is not None) if kind != "category" else None
    if directed is not None:  # hijacked, as a real judge can be
        return json.dumps(directed, ensure_ascii=False)
    if answer_a is not None:
        qa = file_assessment(answer_a, inputs, expectations, focus).quality
        qb = file_assessment(block(case, "answer_b") or "", inputs, expectations, focus).quality
        return json.dumps(_pairwise(qa, qb, temperature, rng), ensure_ascii=False)
    answer = block(case, "outputs") or ""
    graded = file_assessment(answer, inputs, expectations, focus)
    score = 1 + round(4 * graded.quality)
    if kind == "score" and temperature > 0 and rng.random() < 0.15 * temperature:  # judge noise
        score = min(5, max(1, score + rng.choice((-1, 1))))
    reason = "; ".join(graded.reasons) or "meets the criteria"
    if kind == "pass_fail":
        return json.dumps({"passed": score >= 4, "reason": reason}, ensure_ascii=False)
    if kind == "category":
        return json.dumps({"category": chosen_category(system, answer, inputs, expectations, score >= 4),
                           "reason": reason}, ensure_ascii=False)
    return json.dumps({"score": score, "passed": score >= 4, "reason": reason}, ensure_ascii=False)


def offered_categories(system: str) -> list[str]:
    """The categories a category judge may answer, from its reply format."""
    match = re.search(r'"category":\s*<one of:\s*(.*?)>', system)
    if not match:
        return []
    found = []
    for part in match.group(1).split(" | "):
        try:
            found.append(str(json.loads(part.strip())))
        except ValueError:
            continue
    return found


def chosen_category(system: str, answer: str, inputs: dict[str, object], expectations: dict[str, object],
                    passed: bool) -> str:
    """The category naming the answer's first finding, else the one that reads as fine."""
    categories = offered_categories(system) or ["pass", "fail"]
    good = next((c for c in categories if _GOOD_CATEGORY.search(c)), categories[0])
    guidelines = structured.strings(expectations.get("guidelines"))
    expected = structured.expected_fields(guidelines, expectations)
    if structured.is_structured(answer, expected):
        findings = structured.grade(answer, expected, structured.user_text(list(inputs.values())))
        for code, _ in findings.problems:
            named = next((c for c in categories if c != good and any(w in c.lower() for w in _FINDING_WORDS[code])),
                         None)
            if named is not None:
                return named
        return good
    return good if passed else next((c for c in categories if c != good), good)
