"""Judge calibration judged against chance, in a real workspace: a constant judge and a judge that
rewards citing are both blocked, the offline judge still lets a better candidate through, too few
labels hold unless the app allows an uncalibrated judge.

The two bad judges are litellm custom providers (`llm.providers`) wrapping the offline judge: only
the LLM provider is replaced, everything else (runner, scorers, statistics, gate) is the real one.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.workspace import Workspace, open_workspace

CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"
CITATION = re.compile(r"\s*\[source:\s*[A-Za-z0-9_.-]+\]")

# A provider module written into the workspace: `biased/constant` fails every answer, `biased/cites`
# adds 2 to the offline judge's rubric score of any answer that cites a source.
BIASED_JUDGES = '''
import json
import re

from promptloop.demo.simulated.provider import OfflineProvider


def _answer(messages):
    found = re.search(r"<answer>(.*?)</answer>", messages[-1]["content"], re.DOTALL)
    return found.group(1) if found else ""


def _biased(model, messages, response):
    reply = json.loads(response.choices[0].message.content)
    if "score" not in reply:
        return response  # pairwise verdicts are left as they are
    if model == "constant":
        reply = {"score": 1, "passed": False, "reason": "fails everything"}
    elif "[source:" in _answer(messages):
        reply["score"] = min(5, int(reply["score"]) + 2)
        reply["passed"] = reply["score"] >= 4
    response.choices[0].message.content = json.dumps(reply)
    return response


class BiasedJudge(OfflineProvider):
    def completion(self, model, messages, model_response, optional_params, api_key=None, **kwargs):
        found = super().completion("judge", messages, model_response, optional_params, api_key, **kwargs)
        return _biased(model, messages, found)

    async def acompletion(self, model, messages, model_response, optional_params, api_key=None, **kwargs):
        found = await super().acompletion("judge", messages, model_response, optional_params, api_key, **kwargs)
        return _biased(model, messages, found)


judge = BiasedJudge()
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A fresh workspace whose sample golden set ships 👍 and 👎 labels, and the biased judges' provider."""
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("calibration") / "ws"
    init_workspace(root)
    (root / "biased_judges.py").write_text(BIASED_JUDGES, encoding="utf-8")
    sys.path.insert(0, str(root))  # where `llm.providers` imports the module from
    yield open_workspace(root)
    sys.path.remove(str(root))


def configured(workspace: Workspace, golden: Path | None = None, **evaluate_settings: Any) -> Workspace:
    """The workspace with the biased judges registered, evaluate settings and the golden set changed."""
    params = workspace.params
    apps = params.apps
    if golden is not None:
        app = params.apps["support-bot"].model_copy(update={"golden_set": golden.relative_to(workspace.root)})
        apps = {**params.apps, "support-bot": app}
    changed = params.model_copy(update={
        "llm": params.llm.model_copy(update={
            "providers": {**params.llm.providers, "biased": "biased_judges:judge"},
            "models": {**params.llm.models, "biased/*": params.llm.models["offline/judge"]},
        }),
        "evaluate": params.evaluate.model_copy(update=evaluate_settings),
        "apps": apps,
    })
    return Workspace(workspace.root, changed)


def relabelled(workspace: Workspace, name: str, change: Any) -> Path:
    """A copy of the support-bot golden set with every human label passed through `change` (None drops it)."""
    source = workspace.path(workspace.app_settings("support-bot").golden_set)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        if row.get("human_label"):
            label = change(row["human_label"])
            if label is None:
                del row["human_label"]
            else:
                row["human_label"] = label
    path = source.parent / f"golden-{name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def better(workspace: Workspace) -> EvaluationResult:
    return evaluate(workspace, "support-bot", [CANDIDATES / "better.yaml"])


def test_the_shipped_labels_hold_both_classes_and_the_offline_judge_agrees(workspace: Workspace) -> None:
    result = better(configured(workspace))
    cal = result.judge.calibration
    assert cal.up >= 3 and cal.down >= 3 and cal.applied and cal.problem is None
    assert cal.balanced_accuracy is not None and cal.balanced_accuracy >= 0.75
    assert set(cal.by_slice) == {"en", "ko", "pii"}
    assert result.candidates[0].decision == "promote"


def test_a_judge_that_fails_everything_is_blocked(workspace: Workspace) -> None:
    result = better(configured(workspace, judge_model="biased/constant"))
    cal = result.judge.calibration
    assert cal.balanced_accuracy == 0.5 and cal.applied
    assert any(r.startswith("judge not calibrated: balanced accuracy 0.50") for r in result.candidates[0].reasons)


def test_a_judge_that_rewards_citing_is_blocked_when_the_labels_cite(workspace: Workspace) -> None:
    # The shipped 👎 answers cite the right page and give half the answer: +2 lifts them to a pass.
    result = better(configured(workspace, judge_model="biased/cites"))
    assert result.judge.calibration.problem is not None
    assert result.candidates[0].decision == "hold"


def test_a_judge_that_rewards_citing_is_blocked_when_no_labelled_answer_cites(workspace: Workspace) -> None:
    uncited = relabelled(workspace, "uncited", lambda label: {**label, "answer": CITATION.sub("", label["answer"])})
    result = better(configured(workspace, uncited, judge_model="biased/cites"))
    cal = result.judge.calibration
    assert cal.applied and cal.problem is None  # on answers that never cite, the bias never shows
    candidate = result.candidates[0]
    assert candidate.decision == "hold"
    assert any(r.startswith("judge not calibrated on answers that cite sources") and "0 👍, 0 👎" in r
               for r in candidate.reasons)


def test_too_few_labels_hold_unless_the_app_allows_an_uncalibrated_judge(workspace: Workspace) -> None:
    only_up = relabelled(workspace, "only-up", lambda label: label if label["rating"] == "up" else None)
    held = better(configured(workspace, only_up))
    assert held.judge.calibration.problem == ("judge not calibrated: too few labels (8 👍, 0 👎; need 3 of each "
                                              "and 10 in all)")
    assert held.candidates[0].decision == "hold"
    allowed = better(configured(workspace, only_up, allow_uncalibrated=True))
    assert allowed.judge.calibration.uncalibrated and allowed.candidates[0].decision == "promote"
