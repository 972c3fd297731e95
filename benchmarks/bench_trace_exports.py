"""Benchmark: reading N interactions from a Langfuse export and from OTLP JSON, against the same
interactions as JSON Lines log records (the peer, read in the same run).

Each source's `read` (parse and map, no validation or storage) runs `--repeats` times; the median
seconds of each and their ratio to the JSON Lines read are printed, then the time of a read with
nothing changed (the files' hashes only). A benchmark, not a test: timings on shared machines are noisy.

    PYTHONPATH=src:. .venv/bin/python benchmarks/bench_trace_exports.py [--interactions 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def timed(read: Any, repeats: int) -> tuple[float, int]:
    """Median seconds of `read()` and the rows its last call returned."""
    seconds, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = len(read().frame)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from promptloop.collect.langfuse import LangfuseExportSource
    from promptloop.collect.otel import OtelFileSource
    from promptloop.collect.sources import FileSource
    from tests.trace_formats import NOW, interactions, write_jsonl, write_langfuse_export, write_otlp

    work = Path(tempfile.mkdtemp(prefix="bench-trace-exports-"))
    try:
        items = interactions(args.interactions)
        write_jsonl(items, work / "logs" / "app.jsonl")
        write_langfuse_export(items, work / "langfuse")
        write_otlp(items, work / "otel.jsonl")
        now_ms = int(NOW.timestamp() * 1000)
        sources: dict[str, Any] = {
            "jsonl": FileSource("logs/app.jsonl", work),
            "langfuse-export": LangfuseExportSource(pattern="langfuse", root=work, now_ms=now_ms, app="support-bot"),
            "otel": OtelFileSource(pattern="otel.jsonl", root=work, now_ms=now_ms, app="support-bot"),
        }
        peer = None
        for name, source in sources.items():
            seconds, rows = timed(lambda s=source: s.read(None), args.repeats)
            peer = peer or seconds
            mark = source.read(None).watermark
            idle, again = timed(lambda s=source, m=mark: s.read(m), args.repeats)
            print(f"{name:16} {rows} rows: {seconds:.3f} s (x{seconds / peer:.1f} the JSON Lines read); "
                  f"nothing new: {idle:.4f} s, {again} rows")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
