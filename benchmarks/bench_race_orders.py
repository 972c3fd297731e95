"""Benchmark: the sequential race over many seeded case orders of the demo's own scores, against the full
evaluation. A seeded sweep, not a timing: its numbers do not depend on the machine.

A fresh `promptloop demo` (init, simulated traffic, collect, analyze, improve with its race, deploy) leaves
each app's optimizer candidates in `.promptloop/improve/<app>.json`. Each app's baseline and those
candidates are then evaluated in full (`evaluate.sequential.enabled: false`, through
`promptloop.evaluate.stage.evaluate`, what `promptloop evaluate` runs), and the per-case rubric scores are
read back from that evaluation's MLflow run (its `eval_cases.json` table, as deploy reads it). On the
held-out cases only (the decision's cases when the app has an optimizer split), for each of `--orders`
seeds 0, 1, ...: the cases in `sequential.case_order(ids, seed)` order, the race as the evaluation runs it
(`sequential.simulate_race` with the workspace's looks, min_cases_per_look, spending, confidence,
min_effect, bootstrap_resamples and seed), then the final gate's score conditions at the stopping look's
level (CI lower bound above min_effect, Holm-adjusted p under that level; `bench_sequential_null.promoted`).
`--looks` and `--min-cases-per-look` sweep other looks than the workspace's. As a check that the simulation
is the race, it is also run once in the case order of the demo's own race (`sequential.order_seed`, the
configured looks) and set beside what that race did (its look, drops and promotions, saved by improve).

Per app: the held-out cases, which candidates the full evaluation promotes (its decisions: every gate
rule), the share of the held-out cases the races used, how many races promote exactly the same
candidates / only some of them / none / a candidate the full evaluation holds, and the wrong drops (a
candidate the race dropped that the full evaluation promotes). The share counts the held-out cases up to
the stopping look (not the high-severity cases a race evaluates past it for the regression rule alone).
Only the gate's score conditions are simulated, not its guards, calibration or high-severity rule.

    .venv/bin/python benchmarks/bench_race_orders.py [--orders 100] [--interactions 2000] [--looks N]
        [--min-cases-per-look N] [--demo DIR] [--results DIR]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_sequential_null import promoted
from common import benchmark_parser, machine, promptloop, write_result

from promptloop.core.config import EvaluateSettings
from promptloop.core.runtime import prepare_environment
from promptloop.deploy.evidence import evaluation_rows
from promptloop.domain.evaluation import EvaluationResult
from promptloop.domain.golden import load_golden
from promptloop.evaluate.plan import BASELINE
from promptloop.evaluate.sequential import Race, case_order, look_alphas, look_sizes, order_seed, simulate_race
from promptloop.evaluate.stage import evaluate
from promptloop.evaluate.summary import decision_split
from promptloop.workspace.workspace import Workspace, open_workspace


@dataclass(frozen=True)
class FullRun:
    """One app's full evaluation: its held-out rubric scores (golden-set order) and its decisions."""

    app: str
    case_ids: list[str]
    baseline: np.ndarray
    scores: dict[str, np.ndarray]  # candidate -> scores on case_ids
    promoted: list[str]  # the candidates the full evaluation promotes (every rule of the gate)
    gains: dict[str, tuple[float | None, float | None]]  # candidate -> (mean gain, CI lower bound), full run


@dataclass
class Tally:
    """What the races of one app did, summed over the case orders."""

    orders: int = 0
    shares: list[float] = field(default_factory=list)  # held-out cases raced / held-out cases, per race
    same: int = 0  # races promoting exactly the candidates the full evaluation promotes
    fewer: int = 0  # some of them, not all, and nothing else
    none: int = 0  # nothing
    other: int = 0  # a candidate the full evaluation holds
    dropped: int = 0  # candidates dropped, over all races
    wrong_drops: int = 0  # of those, candidates the full evaluation promotes
    races_with_wrong_drop: int = 0
    stopped_at: Counter[int] = field(default_factory=Counter)  # stopping look -> races


def demo_folder(work: Path, interactions: int, existing: Path | None) -> Path:
    """A finished demo: a copy of `existing`, else a fresh `promptloop demo` in `work`."""
    root = work / "demo"
    if existing is not None:
        shutil.copytree(existing, root, symlinks=True)
    else:
        promptloop("demo", "--dir", str(root), "--interactions", str(interactions))
    return root


def improve_outcomes(root: Path) -> dict[str, dict[str, Any]]:
    """app -> its improve stage's evaluation as saved in `.promptloop/improve/<app>.json` (the candidate files
    it evaluated, and its race)."""
    found = {}
    for outcome in sorted((root / ".promptloop" / "improve").glob("*.json")):
        saved = json.loads(outcome.read_text(encoding="utf-8"))
        found[saved["app"]] = saved["evaluation"]
    if not found:
        raise SystemExit(f"no improve outcome under {root}/.promptloop/improve: not a finished demo")
    return found


def without_race(workspace: Workspace) -> Workspace:
    """The workspace with evaluate.sequential.enabled false: every held-out case for every candidate."""
    params = workspace.params
    settings = params.evaluate.model_copy(
        update={"sequential": params.evaluate.sequential.model_copy(update={"enabled": False})})
    return Workspace(workspace.root, params.model_copy(update={"evaluate": settings}))


def full_run(workspace: Workspace, app: str, candidates: list[Path]) -> FullRun:
    """Evaluate `candidates` in full and read the per-case scores back from the evaluation's MLflow run."""
    result: EvaluationResult = evaluate(without_race(workspace), app, candidates)
    if result.sequential is not None or not result.complete:
        raise SystemExit(f"{app}: the full evaluation raced or did not complete: {result.stopped}")
    rows, _ = evaluation_rows(workspace.tracking_uri, result.mlflow_run_id)
    if not rows:
        raise SystemExit(f"{app}: no eval_cases.json table in MLflow run {result.mlflow_run_id}")
    golden = load_golden(workspace.path(workspace.app_settings(app).golden_set))
    held_out = [c.id for c in decision_split(golden)[0]]  # the cases the decision (and a race) rests on
    names = [c.name for c in result.candidates]

    def scored(case_id: str) -> bool:  # a judge failure leaves no score: the race skips such a case too
        return all((rows.get((name, case_id)) or {}).get("rubric_score") is not None for name in [BASELINE, *names])

    ids = [case_id for case_id in held_out if scored(case_id)]
    by_prompt = {name: np.array([float(rows[name, case_id]["rubric_score"]) for case_id in ids])
                 for name in [BASELINE, *names]}
    return FullRun(app, ids, by_prompt[BASELINE], {name: by_prompt[name] for name in names},
                   [c.name for c in result.candidates if c.decision == "promote"],
                   {c.name: (c.diff, c.ci_low) for c in result.candidates})


def swept_settings(configured: EvaluateSettings, looks: int | None, min_cases_per_look: int | None) -> EvaluateSettings:
    """The workspace's evaluate settings, with the looks of the sweep changed where given (the own-order check
    keeps the configured ones: those the demo's race ran with)."""
    changes = {key: value for key, value in (("looks", looks), ("min_cases_per_look", min_cases_per_look))
               if value is not None}
    return configured.model_copy(update={"sequential": configured.sequential.model_copy(update=changes)})


def race_in_order(full: FullRun, settings: EvaluateSettings, seed: int) -> tuple[Race, list[str]]:
    """The race on the full run's held-out scores in `case_order(ids, seed)` order, and the candidates its
    final gate's score conditions pass at the stopping look's level."""
    sequential = settings.sequential
    sizes = look_sizes(len(full.case_ids), sequential.looks, sequential.min_cases_per_look)
    alphas = look_alphas(1 - settings.confidence, sizes, sequential.spending)
    position = {case_id: i for i, case_id in enumerate(full.case_ids)}
    order = [position[case_id] for case_id in case_order(full.case_ids, seed)]
    scores = {name: values[order] for name, values in full.scores.items()}
    baseline = full.baseline[order]
    race = simulate_race(scores, baseline, sizes, alphas, settings.min_effect, settings.bootstrap_resamples,
                         settings.seed)
    return race, promoted(race, scores, baseline, settings.min_effect, settings.bootstrap_resamples, settings.seed)


def own_order(full: FullRun, settings: EvaluateSettings, saved: dict[str, Any]) -> dict[str, object]:
    """The simulation in the case order the demo's own evaluation raced in (`sequential.order_seed`), beside
    what that race did (its saved look, drops and promotions): the check that the simulation is the race."""
    race, passed = race_in_order(full, settings, order_seed(settings.seed, settings.sequential.seed))
    ran = saved.get("sequential") or {}
    return {"stopped_at_look": race.stopped_at, "dropped": sorted(race.dropped), "promoted": sorted(passed),
            "demo_stopped_at_look": ran.get("stopped_at_look"), "demo_dropped": sorted(ran.get("dropped") or {}),
            "demo_promoted": sorted(c["name"] for c in saved["candidates"] if c["decision"] == "promote")}


def race_orders(full: FullRun, settings: EvaluateSettings, orders: int) -> Tally:
    """The race and its final gate on `orders` seeded orders (seeds 0..orders-1) of the full run's scores."""
    expected = set(full.promoted)
    tally = Tally()
    for seed in range(orders):
        race, found = race_in_order(full, settings, seed)
        passed = set(found)
        tally.orders += 1
        tally.shares.append(race.cases_evaluated[BASELINE] / len(full.case_ids))
        tally.stopped_at[race.stopped_at] += 1
        if passed == expected:
            tally.same += 1
        elif not passed:
            tally.none += 1
        elif passed < expected:
            tally.fewer += 1
        else:
            tally.other += 1
        wrong = expected & set(race.dropped)
        tally.dropped += len(race.dropped)
        tally.wrong_drops += len(wrong)
        tally.races_with_wrong_drop += bool(wrong)
    return tally


def app_row(full: FullRun, settings: EvaluateSettings, tally: Tally, own: dict[str, object]) -> dict[str, object]:
    """One app's figures, as the JSON result keeps them."""
    sequential = settings.sequential
    return {
        "app": full.app, "held_out_cases": len(full.case_ids),
        "look_sizes": look_sizes(len(full.case_ids), sequential.looks, sequential.min_cases_per_look),
        "candidates": list(full.scores), "full_promoted": full.promoted,
        "full_gains": {name: {"diff": diff, "ci_low": low} for name, (diff, low) in full.gains.items()},
        "orders": tally.orders, "share_mean": statistics.fmean(tally.shares), "share_min": min(tally.shares),
        "share_max": max(tally.shares), "races_same": tally.same, "races_fewer": tally.fewer,
        "races_none": tally.none, "races_other": tally.other, "dropped": tally.dropped,
        "wrong_drops": tally.wrong_drops, "races_with_wrong_drop": tally.races_with_wrong_drop,
        "stopped_at_look": {str(k): v for k, v in sorted(tally.stopped_at.items())}, "own_order": own,
    }


def table(rows: list[dict]) -> str:
    """One line per app."""
    lines = ["| app | held-out cases (looks) | full evaluation promotes | races | share of cases: mean (min-max) "
             "| same candidates promoted | only some of them | none | a candidate the full run holds "
             "| candidates dropped | wrong drops (races) | stopping look: races |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        promoted_names = ", ".join(r["full_promoted"]) or "none"
        looks = ", ".join(map(str, r["look_sizes"]))
        stops = ", ".join(f"{k}: {v}" for k, v in r["stopped_at_look"].items())
        lines.append(
            f"| {r['app']} | {r['held_out_cases']} ({looks}) | {len(r['full_promoted'])} of "
            f"{len(r['candidates'])} ({promoted_names}) | {r['orders']} | {r['share_mean']:.0%} "
            f"({r['share_min']:.0%}-{r['share_max']:.0%}) | {r['races_same']}/{r['orders']} "
            f"| {r['races_fewer']}/{r['orders']} | {r['races_none']}/{r['orders']} | {r['races_other']}/{r['orders']} "
            f"| {r['dropped']} | {r['wrong_drops']} ({r['races_with_wrong_drop']}) | {stops} |")
    lines += ["", "In the case order of the demo's own race (`sequential.order_seed` of evaluate.seed):", "",
              "| app | simulated: stopping look; dropped; promoted | the demo's race: the same | identical |",
              "|---|---|---|---|"]
    for r in rows:
        own = r["own_order"]
        simulated = outcome(own["stopped_at_look"], own["dropped"], own["promoted"])
        ran = outcome(own["demo_stopped_at_look"], own["demo_dropped"], own["demo_promoted"])
        lines.append(f"| {r['app']} | {simulated} | {ran} | {'yes' if simulated == ran else 'no'} |")
    return "\n".join(lines) + "\n"


def outcome(look: int, dropped: list[str], promoted_names: list[str]) -> str:
    """A race's end in a table cell."""
    return f"look {look}; dropped {', '.join(dropped) or 'none'}; promoted {', '.join(promoted_names) or 'none'}"


def main() -> None:
    parser = benchmark_parser(__doc__ or "")
    parser.add_argument("--orders", type=int, default=100, help="seeded case orders per app (seeds 0..N-1)")
    parser.add_argument("--interactions", type=int, default=2000, help="the demo's simulated interactions")
    parser.add_argument("--looks", type=int, help="evaluate.sequential.looks of the sweep [default: the workspace's]")
    parser.add_argument("--min-cases-per-look", type=int,
                        help="evaluate.sequential.min_cases_per_look of the sweep [default: the workspace's]")
    parser.add_argument("--demo", type=Path, help="a finished `promptloop demo` folder to copy instead of a new demo")
    args = parser.parse_args()
    prepare_environment()
    with tempfile.TemporaryDirectory(prefix="bench-race-orders-") as work:
        root = demo_folder(Path(work), args.interactions, args.demo)
        workspace = open_workspace(root)
        configured = workspace.params.evaluate
        settings = swept_settings(configured, args.looks, args.min_cases_per_look)
        rows = []
        for app, saved in improve_outcomes(root).items():
            full = full_run(workspace, app, [Path(c["source"]) for c in saved["candidates"]])
            tally = race_orders(full, settings, args.orders)
            rows.append(app_row(full, settings, tally, own_order(full, configured, saved)))
            print(f"{app}: {args.orders} orders raced", file=sys.stderr)
    sequential = settings.sequential
    row = {**machine(), "orders": args.orders, "interactions": args.interactions, "looks": sequential.looks,
           "min_cases_per_look": sequential.min_cases_per_look, "spending": sequential.spending,
           "confidence": settings.confidence, "min_effect": settings.min_effect,
           "resamples": settings.bootstrap_resamples, "seed": settings.seed, "apps": rows}
    write_result(args.results, "race_orders", row, table(rows))


if __name__ == "__main__":
    main()
