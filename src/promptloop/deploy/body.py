"""The pull request's text: what a person needs to decide, in the order they read it.

One-line summary, links, the prompt diff, the decision table, then the evidence: the most important
fixed cases and every broken case with the question and both answers, the golden set's growth,
the guards and how far the judge agrees with people. The full evaluation report is a file on the
branch. Every text that came from a log, a case or an LLM (questions, answers, judge reasons, the
changelog) is redacted, cut and escaped: it can neither hide the report (`<!--`), mention people,
load images nor break the markdown around it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from promptloop.domain.evaluation import CandidateResult, EvaluationResult
from promptloop.domain.golden import GoldenCase
from promptloop.domain.results import KbDraftResult
from promptloop.evaluate.report import decision_table

CaseRow = Mapping[str, Any]  # one (prompt, case) row of the evaluation's `eval_cases.json` table
MAX_TEXT = 400  # characters of a question or answer shown; the rest is on the MLflow run
TOP_FIXED = 5
CASES_BUDGET = 45_000  # characters of case blocks; the rest of the body stays well under GitHub's 65,536
SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
ZWJ = "\u200d"
# CommonMark lets any ASCII punctuation be backslash-escaped. These start markup anywhere in a line
# (`![` is no image once `[` is escaped) ...
_MARKUP = re.compile(r"([\\`*_\[\]<|~])")
# ... and these (headings, quotes, lists, setext underlines) only at its start.
_LINE_START = re.compile(r"^(\s*)([#>\-+=])", re.MULTILINE)


@dataclass(frozen=True)
class Links:
    """Where a reviewer opens the evaluation run and the proposed prompt version."""

    run: str
    prompt: str


@dataclass
class BodyInput:
    """Everything the body is built from; nothing here runs or re-evaluates anything."""

    app: str
    evaluation: EvaluationResult
    candidate: CandidateResult
    changelog: str
    version: int
    prompt_path: str
    diff: str
    links: Links
    golden_added: int
    golden_split: tuple[int, int]  # (to the optimisation split, held out)
    golden_md5: str | None
    new_cases: list[GoldenCase] = field(default_factory=list)
    rows: dict[tuple[str, str], CaseRow] = field(default_factory=dict)  # (prompt name, case id) -> row
    min_per_class: int = 5
    redact: Callable[[str], str] = str
    kb_drafts: list[KbDraftResult] = field(default_factory=list)


def escape_text(text: str) -> str:
    """Plain text that renders as itself: markup characters backslash-escaped, @mentions broken
    with a zero-width joiner (GitHub ignores a backslash before @)."""
    escaped = _LINE_START.sub(r"\1\\\2", _MARKUP.sub(r"\\\1", text))
    return escaped.replace("@", "@" + ZWJ)


def code(text: str) -> str:
    """An inline code span of one line of text (an id): no escaping inside, so the fence outgrows any backticks."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def escape_inline(text: str) -> str:
    """One line of escaped text (a changelog in the summary sentence)."""
    return escape_text(" ".join(text.split()))


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """At most `limit` characters, saying so when the text was cut."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()} … [cut: {len(text):,} characters in all]"


def quoted(text: str, redact: Callable[[str], str]) -> list[str]:
    """A block quote of redacted, cut, escaped text; its line breaks kept."""
    shown = cut(redact(text)) or "(empty)"
    return ["> " + escape_text(line) if line.strip() else ">" for line in shown.splitlines()]


def fenced(text: str, info: str = "") -> list[str]:
    """A code block whose fence is longer than any run of backticks inside, so it always closes."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, *text.rstrip("\n").splitlines(), fence]


def score_change(rows: Mapping[tuple[str, str], CaseRow], candidate: str, baseline: str, case_id: str) -> float:
    """The candidate's rubric score minus the baseline's on one case (0 when either is missing)."""
    new, old = rows.get((candidate, case_id), {}), rows.get((baseline, case_id), {})
    try:
        return float(new.get("rubric_score") or 0.0) - float(old.get("rubric_score") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def most_important(case_ids: list[str], body: BodyInput) -> list[str]:
    """Highest severity first, then the largest score change, then the id."""
    name, base = body.candidate.name, body.evaluation.baseline.name

    def key(case_id: str) -> tuple[int, float, str]:
        row = body.rows.get((name, case_id)) or body.rows.get((base, case_id)) or {}
        change = abs(score_change(body.rows, name, base, case_id))
        return SEVERITY_RANK.get(str(row.get("severity")), len(SEVERITY_RANK)), -change, case_id

    return sorted(case_ids, key=key)


def case_block(case_id: str, body: BodyInput) -> list[str]:
    """One case: its question, both answers and the judge's reasons."""
    name, base = body.candidate.name, body.evaluation.baseline.name
    old, new = body.rows.get((base, case_id)), body.rows.get((name, case_id))
    if old is None or new is None:
        return [f"### {code(case_id)}", "", "Its answers are not in the evaluation run's table.", ""]
    change = score_change(body.rows, name, base, case_id)
    lines = [f"### {code(case_id)} · severity {escape_text(str(new.get('severity')))} · "
             f"score {change:+.2f}", "", "**Question**", "", *quoted(str(new.get("input") or ""), body.redact), ""]
    for label, row in (("Baseline", old), ("Candidate", new)):
        verdict = "pass" if row.get("rubric_passed") else "fail"
        lines += [f"**{label} answer** ({verdict})", "", *quoted(str(row.get("answer") or ""), body.redact), ""]
        reason = str(row.get("rubric_reason") or row.get("judge_failure") or "").strip()
        if reason:
            lines += [f"*Judge on the {label.lower()}:* " + escape_inline(cut(body.redact(reason), 200)), ""]
    return lines


def cases_section(body: BodyInput) -> list[str]:
    """The 5 most important fixed cases and every broken one."""
    fixed = most_important(body.candidate.flips.fixed, body)
    broken = most_important(body.candidate.flips.broken, body)
    shown = f"the {min(TOP_FIXED, len(fixed))} most important" if len(fixed) > TOP_FIXED else "all"
    lines = ["## Cases fixed", "", f"{len(fixed)} case(s) the baseline failed and the candidate passes; {shown} "
             "shown (highest severity, then largest score change).", ""]
    for case_id in fixed[:TOP_FIXED]:
        lines += case_block(case_id, body)
    lines += ["## Cases broken", "", f"{len(broken)} case(s) the baseline passed and the candidate fails"
              + (", most important first." if broken else "."), ""]
    for shown_count, case_id in enumerate(broken):
        if sum(len(line) + 1 for line in lines) > CASES_BUDGET:  # GitHub refuses a body over 65,536 characters
            rest = broken[shown_count:]
            lines += [f"{len(rest)} more broken case(s), left out for GitHub's size limit (they are in the "
                      f"evaluation run's table): {', '.join(code(c) for c in rest)}", ""]
            break
        lines += case_block(case_id, body)
    return lines


def golden_section(body: BodyInput) -> list[str]:
    """How the golden set grew, with a few of the new cases."""
    optimize, holdout = body.golden_split
    lines = ["## Golden set", "", f"{body.golden_added} mined case(s) added ({optimize} to the optimisation split, "
             f"{holdout} held out); DVC md5 `{body.golden_md5 or 'unchanged'}`.", ""]
    examples = sorted(body.new_cases, key=lambda case: SEVERITY_RANK.get(case.severity, len(SEVERITY_RANK)))
    for case in examples[:3]:  # the most severe first; growth order among equals
        lines += [f"- {code(case.id)} (severity {case.severity}): " + escape_inline(cut(body.redact(case.input), 200)),
                  "  — expected: " + escape_inline(expected_behaviour(case))]
    return lines + ([""] if body.new_cases else [])


def expected_behaviour(case: GoldenCase) -> str:
    """What a good answer does, in the case's words: its guidelines, else its behaviour's name."""
    expected = case.expectations
    return "; ".join(expected.guidelines) or expected.expected_behavior.replace("_", " ")


def guards_section(candidate: CandidateResult) -> list[str]:
    """Each guard metric against its limit."""
    if not candidate.guards:
        return ["## Guards", "", "No guard metric applies to this app.", ""]
    lines = ["## Guards", "", "| guard | baseline | candidate | limit | ok |", "|---|---|---|---|---|"]
    lines += [f"| {g.metric} | {g.baseline:.4g} | {g.candidate:.4g} | {g.limit:.4g} | {'yes' if g.ok else '**no**'} |"
              for g in candidate.guards]
    return lines + [""]


def calibration_words(body: BodyInput) -> str:
    """Judge-human agreement in plain words, with why the gate uses balanced accuracy or kappa, per judge."""
    cal = body.evaluation.judge.calibration
    if not cal.labelled:
        text = "No case in the golden set has a person's 👍/👎, so the judge's agreement with people is not measured"
        if cal.uncalibrated:
            text += "; the app allows an uncalibrated judge (`evaluate.allow_uncalibrated: true`), so it decided anyway"
        return text + "."
    balanced = "n/a" if cal.balanced_accuracy is None else f"{cal.balanced_accuracy:.2f}"
    accuracy = "n/a" if cal.accuracy is None else f"{cal.accuracy:.2f}"
    text = (f"Judge agreement with people: balanced accuracy {balanced} (plain accuracy {accuracy}) on "
            f"{cal.judged} labelled case(s), {cal.up} 👍 and {cal.down} 👎")
    if cal.uncalibrated:
        text += ("; **too few labels to measure the judge, and the app allows an uncalibrated judge "
                 "(`evaluate.allow_uncalibrated: true`): this decision rests on a judge nobody checked**")
    elif cal.decided_by == "kappa" and cal.kappa is not None:
        text += (f", Cohen's kappa {cal.kappa:.2f}; the gate uses kappa because both 👍 and 👎 have "
                 f"at least `evaluate.min_calibration_per_class` ({body.min_per_class}) labels")
    else:
        smaller, sign = (cal.up, "👍") if cal.up <= cal.down else (cal.down, "👎")
        text += (f"; the gate uses balanced accuracy (the mean of the judge's recall on 👍 and on 👎), not kappa, "
                 f"because only {smaller} of them are {sign} — fewer than "
                 f"`evaluate.min_calibration_per_class` ({body.min_per_class})")
    if len(cal.by_slice) > 1:
        text += ". Per slice: " + "; ".join(
            f"{escape_inline(name)} {part.up} 👍/{part.down} 👎, accuracy {part.accuracy or 0:.2f}"
            for name, part in sorted(cal.by_slice.items()))
    guards = [f"`{escape_inline(name)}` balanced accuracy "
              f"{'n/a' if g.balanced_accuracy is None else format(g.balanced_accuracy, '.2f')}"
              for name, g in sorted(body.evaluation.judge.guard_agreement.items())]
    if guards:
        text += ". Guard judges (reported, not gated): " + "; ".join(guards)
    return text + "."


def summary_line(body: BodyInput) -> str:
    """What is proposed and why, in one line."""
    c = body.candidate
    ci_low = "n/a" if c.ci_low is None else f"{c.ci_low:+.3f}"
    diff = "n/a" if c.diff is None else f"{c.diff:+.3f}"
    why = f" ({escape_inline(body.changelog)})" if body.changelog.strip() else ""
    return (f"promptloop proposes **{escape_text(c.name)}**{why} as `{body.app}` prompt v{body.version}: score "
            f"{diff} over the baseline on {body.evaluation.cases_decided} held-out cases (CI lower bound {ci_low}), "
            f"{len(c.flips.fixed)} fixed, {len(c.flips.broken)} broken.")


KB_DRAFTS_HEADING = "## Knowledge-base drafts (need a person)"


def kb_drafts_section(body: BodyInput) -> list[str]:
    """The drafted articles: each one's file, the gap it is for, who hit it, and the cases it would change."""
    if not body.kb_drafts:
        return []
    lines = [KB_DRAFTS_HEADING, "",
             f"{len(body.kb_drafts)} article(s) drafted for questions users asked that the knowledge base does not "
             "answer (a prompt change cannot fix those). **Drafts, not facts**: written only from the users' "
             "questions and the existing documents, every fact they could not give left as a `[[TODO: confirm ...]]` "
             "placeholder. Each file has `draft: true`, so the app does not retrieve it. To publish one: fill every "
             "placeholder, check every sentence, remove `draft: true`; or delete the file.", ""]
    for draft in body.kb_drafts:
        lines += [f"### {code(draft.path)} (draft)", "",
                  f"Gap {draft.gap}: {escape_inline(cut(body.redact(draft.topic), 200))} · {draft.users} user(s), "
                  f"{draft.questions} question(s) · {draft.placeholders} placeholder(s) to fill", "",
                  "Asked, for example:", ""]
        lines += ["- " + escape_inline(cut(body.redact(e), 200)) for e in draft.examples] + [""]
        if draft.cases_to_relabel:
            lines += [f"Golden cases that expect `abstain` and would be answerable once this article is merged "
                      f"(re-label them to `answer` by hand; promptloop does not): "
                      f"{', '.join(code(c) for c in draft.cases_to_relabel)}", ""]
        else:
            lines += ["No golden case expecting `abstain` would change when this article is merged.", ""]
    return lines


def pull_request_body(body: BodyInput) -> str:
    """The whole text, valid GitHub-flavoured markdown with headings at ## and ### only."""
    c = body.candidate
    lines = [summary_line(body), "",
             f"Merge to promote, then run `promptloop release --app {body.app}`.", "",
             "## Links", "",
             f"- MLflow evaluation run: {body.links.run}",
             f"- Proposed prompt version: {body.links.prompt}",
             f"- Candidate: `{body.prompt_path}` on this branch (prompt hash `{c.prompt_hash[:12]}`)",
             f"- Full evaluation report: `reports/{body.app}/v{body.version}.md` on this branch", "",
             "## Prompt diff", "", *fenced(body.diff or "(templates unchanged)", "diff"), "",
             "## Decision", "", *decision_table(body.evaluation), ""]
    lines += [f"- {escape_inline(reason)}" for reason in c.reasons] or ["- every condition of the gate holds"]
    lines += [""] + cases_section(body) + golden_section(body) + kb_drafts_section(body) + guards_section(c)
    lines += ["## Judge calibration", "", calibration_words(body), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
