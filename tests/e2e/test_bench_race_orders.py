"""`benchmarks/bench_race_orders.py` on a tiny setting: a real demo, a full evaluation per app, three case
orders; its report's counts add up and agree with the looks it says the races stopped at.

Not a check of the figures (docs/benchmarks.md has them): only that the benchmark runs and its fields
are consistent, so it cannot rot unseen.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORDERS = 3


@pytest.mark.slow  # ~1 min: a demo cycle of both apps and a full evaluation of each, in a fresh process
def test_race_orders_report_adds_up(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_race_orders.py"), "--orders", str(ORDERS),
                           "--interactions", "400", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "race_orders.json").read_text(encoding="utf-8"))
    report = (tmp_path / "race_orders.md").read_text(encoding="utf-8")
    assert result["orders"] == ORDERS and result["looks"] >= 2
    assert {row["app"] for row in result["apps"]} == {"support-bot", "triage-bot"}
    for row in result["apps"]:
        assert any(line.startswith(f"| {row['app']} | {row['held_out_cases']} (") for line in report.splitlines())
        sizes = row["look_sizes"]
        assert sizes == sorted(sizes) and sizes[-1] == row["held_out_cases"] and len(sizes) <= result["looks"]
        assert row["candidates"] and set(row["full_promoted"]) <= set(row["candidates"])
        assert set(row["full_gains"]) == set(row["candidates"])
        # Every race falls in exactly one outcome and stopped at exactly one look.
        outcomes = row["races_same"] + row["races_fewer"] + row["races_none"] + row["races_other"]
        assert outcomes == row["orders"] == ORDERS
        stops = {int(look): races for look, races in row["stopped_at_look"].items()}
        assert sum(stops.values()) == ORDERS and set(stops) <= set(range(1, len(sizes) + 1))
        # The shares are the stopping looks' cases: the mean, min and max follow from the stops.
        shares = [sizes[look - 1] / sizes[-1] for look, races in stops.items() for _ in range(races)]
        assert math.isclose(row["share_mean"], sum(shares) / ORDERS)
        assert (row["share_min"], row["share_max"]) == (min(shares), max(shares))
        assert 0 < row["share_min"] <= row["share_mean"] <= row["share_max"] <= 1
        # A wrong drop is a drop; a race with one has at least one.
        assert 0 <= row["wrong_drops"] <= row["dropped"]
        assert row["races_with_wrong_drop"] <= min(row["wrong_drops"], ORDERS)
        if not row["full_promoted"]:  # nothing to promote: any promotion is "other", and "fewer" is impossible
            assert row["races_fewer"] == 0 and row["wrong_drops"] == 0
