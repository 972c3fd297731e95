"""The calibration rule on its own: agreement judged against chance, too few labels, per slice, citing."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from promptloop.core.config import EvaluateSettings
from promptloop.evaluate.run import Calibrated
from promptloop.evaluate.stats import agreement
from promptloop.evaluate.summary import calibration, trait_problem

RULE = EvaluateSettings()


def records(humans: list[bool], judge: list[bool], slices: list[str] | None = None,
            cites: list[bool] | None = None) -> list[Calibrated]:
    return [Calibrated(f"c{i}", h, j, slice=(slices or ["en"] * len(humans))[i],
                       traits={"cites": (cites or [False] * len(humans))[i]})
            for i, (h, j) in enumerate(zip(humans, judge, strict=True))]


def test_a_judge_that_fails_everything_scores_high_accuracy_on_skewed_labels_and_is_still_blocked() -> None:
    humans = [False] * 19 + [True] * 3
    found = calibration(records(humans, [False] * 22), RULE)
    assert round(found.accuracy or 0, 2) == 0.86  # what used to pass
    assert found.balanced_accuracy == 0.5 and found.decided_by == "balanced_accuracy"
    assert found.problem is not None and found.problem.startswith("judge not calibrated: balanced accuracy 0.50")


def test_a_judge_that_passes_everything_is_blocked_by_kappa_with_enough_of_each_class() -> None:
    humans = [True] * 10 + [False] * 8
    found = calibration(records(humans, [True] * 18), RULE)
    assert found.decided_by == "kappa" and found.kappa == 0
    assert found.problem is not None and found.problem.startswith("judge not calibrated: kappa 0.00")


@settings(derandomize=True, max_examples=60)
@given(up=st.integers(RULE.min_labels_per_class, 30), down=st.integers(RULE.min_labels_per_class, 30),
       verdict=st.booleans())
def test_no_constant_judge_ever_passes(up: int, down: int, verdict: bool) -> None:
    humans = [True] * up + [False] * down
    assert calibration(records(humans, [verdict] * len(humans)), RULE).problem is not None


def test_a_good_judge_passes_with_one_small_class() -> None:
    humans = [False] * 19 + [True] * 3
    judge = [False] * 18 + [True] + [True] * 3  # one 👎 passed by mistake
    found = calibration(records(humans, judge), RULE)
    assert found.applied and found.problem is None and found.decided_by == "balanced_accuracy"


def test_too_few_labels_of_one_class_hold_unless_allowed() -> None:
    humans = [False] * 17 + [True] * 2
    found = calibration(records(humans, humans), RULE)
    assert found.problem == "judge not calibrated: too few labels (2 👍, 17 👎; need 3 of each and 10 in all)"
    assert not found.applied
    allowed = calibration(records(humans, humans), RULE.model_copy(update={"allow_uncalibrated": True}))
    assert allowed.problem is None and allowed.uncalibrated and not allowed.applied


def test_no_labels_at_all_hold() -> None:
    found = calibration([], RULE)
    assert found.problem is not None and "(0 👍, 0 👎" in found.problem


def test_agreement_is_reported_per_slice() -> None:
    humans = [True, True, False, False, True, False]
    judge = [True, True, False, False, False, True]
    found = calibration(records(humans, judge, slices=["en"] * 4 + ["ko"] * 2), RULE)
    assert found.by_slice["en"].accuracy == 1.0 and found.by_slice["ko"].accuracy == 0.0
    assert found.by_slice["ko"].up == 1 and found.by_slice["ko"].down == 1


def test_balanced_accuracy_is_the_mean_recall_of_both_classes() -> None:
    found = agreement([True, True, False, False, False, False], [True, False, False, False, False, True])
    assert found.balanced_accuracy == (0.5 + 0.75) / 2 and (found.up, found.down) == (2, 4)
    assert agreement([True, True], [True, False]).balanced_accuracy is None  # one class: undefined


def frames(base_cites: float, cand_cites: float, n: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    def frame(share: float) -> pd.DataFrame:
        return pd.DataFrame({"cites": [i < round(share * n) for i in range(n)]})
    return frame(base_cites), frame(cand_cites)


def test_a_candidate_that_starts_citing_needs_labels_on_citing_answers() -> None:
    humans = [True] * 6 + [False] * 6
    judge = calibration(records(humans, humans), RULE)  # agrees, on answers that never cite
    base, cand = frames(0.0, 0.9)
    problem = trait_problem(base, cand, judge, RULE)
    assert problem is not None and "90% of its answers cite sources (baseline 0%)" in problem
    assert "0 👍, 0 👎" in problem
    assert trait_problem(base, base, judge, RULE) is None  # the same share: nothing to cover


def test_a_judge_that_passes_every_citing_answer_is_caught_on_the_labelled_citing_answers() -> None:
    humans = [True] * 6 + [False] * 6
    cites = [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    judge_verdicts = [h or c for h, c in zip(humans, cites, strict=True)]  # a citing 👎 passes
    judge = calibration(records(humans, judge_verdicts, cites=cites), RULE)
    problem = trait_problem(*frames(0.0, 0.9), judge, RULE)
    assert problem is not None and "balanced accuracy is 0.50" in problem


def test_a_good_judge_with_citing_labels_is_trusted_on_a_citing_candidate() -> None:
    humans = [True] * 6 + [False] * 6
    cites = [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    judge = calibration(records(humans, humans, cites=cites), RULE)
    assert trait_problem(*frames(0.0, 0.9), judge, RULE) is None
