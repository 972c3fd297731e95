"""PII recall per kind and region on the planted corpus (tests/data/pii_planted.jsonl), plus redaction cost.

A planted value counts as found when it is gone from the redacted text and its kind was counted.
The cost part times the recognizers on the texts of the corpus that pass the prefilter (all do)
and the prefilter alone; it is a benchmark, not a test: timings on shared machines are noisy.

    .venv/bin/python benchmarks/bench_pii_recall.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

from promptloop.quality.pii_recognizers import could_hold_pii, find_pii
from promptloop.quality.redact import Redactor

CORPUS = Path(__file__).parents[1] / "tests" / "data" / "pii_planted.jsonl"


def recall_table(rows: list[dict[str, str]]) -> str:
    """A markdown table: kind, region group, planted, found, recall."""
    redactor = Redactor()
    planted: Counter[tuple[str, str]] = Counter()
    found: Counter[tuple[str, str]] = Counter()
    for row in rows:
        group = row["region"] if row["region"] in ("US", "KR") else "EU"
        planted[row["kind"], group] += 1
        out, counts = redactor.redact_text(row["text"])
        if row["value"] not in (out or "") and counts[row["kind"]]:
            found[row["kind"], group] += 1
    lines = ["| kind | formats | planted | found | recall |", "|---|---|---|---|---|"]
    for kind, group in sorted(planted):
        n, k = planted[kind, group], found[kind, group]
        lines.append(f"| {kind} | {group} | {n} | {k} | {k / n:.2f} |")
    total, hit = sum(planted.values()), sum(found.values())
    lines.append(f"| all | | {total} | {hit} | {hit / total:.2f} |")
    return "\n".join(lines)


def cost_per_text(texts: list[str], repeats: int = 3) -> tuple[float, float]:
    """Median microseconds per text: the recognizers (a prefilter pass), and the prefilter alone."""
    find_pii("warm up 010-1234-5678 a@example.com")  # imports Presidio and builds the recognizers
    full, gate = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for text in texts:
            find_pii(text)
        full.append((time.perf_counter() - started) / len(texts) * 1e6)
        started = time.perf_counter()
        for text in texts:
            could_hold_pii(text)
        gate.append((time.perf_counter() - started) / len(texts) * 1e6)
    return statistics.median(full), statistics.median(gate)


def main() -> None:
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    print(recall_table(rows))
    full, gate = cost_per_text([row["text"] for row in rows])
    print(f"\nrecognizers: {full:,.0f} us per text that passes the prefilter; prefilter: {gate:.1f} us per text")


if __name__ == "__main__":
    main()
