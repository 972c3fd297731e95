"""What the CLI tells a user whose logs were all quarantined (a team's own log format fails every check)."""

from __future__ import annotations

from promptloop.cli import quarantine_hint
from promptloop.domain.results import CollectResult


def collected(valid: int, quarantined: int, duplicate: int = 0) -> CollectResult:
    return CollectResult(app="concierge", rows_in=valid + quarantined + duplicate, rows_valid=valid,
                         rows_quarantined=quarantined, rows_duplicate=duplicate, pii_redactions={},
                         failures={"id_missing": quarantined} if quarantined else {}, snapshot="data/hotel/logs",
                         quarantine="data/hotel/quarantine",
                         dvc_md5=None, git_commit=None, mlflow_run_id="r", sources=["files:incoming/concierge"],
                         run="x")


def test_no_row_stored_points_to_the_log_record_and_the_other_sources() -> None:
    hint = quarantine_hint(collected(0, 50))
    assert hint is not None and hint.startswith("50 row(s) quarantined in data/hotel/quarantine")
    assert "promptloop's log record (docs/concepts.md" in hint and "apps.concierge.sources" in hint
    assert "apps.concierge.log_mapping and log_defaults" in hint


def test_some_rows_quarantined_only_say_where() -> None:
    hint = quarantine_hint(collected(40, 2))
    assert hint is not None and "data/hotel/quarantine" in hint and "No row was stored" not in hint


def test_nothing_quarantined_says_nothing() -> None:
    assert quarantine_hint(collected(40, 0)) is None


def test_fields_every_quarantined_row_lacks_are_named_with_their_fix() -> None:
    result = collected(0, 50).model_copy(update={"failures": {
        "latency_missing": 50, "prompt_tokens_missing": 50, "timestamp_missing": 3, "feedback_type": 50}})
    hint = quarantine_hint(result)
    assert hint is not None
    assert "Every one of them lacks latency_ms, prompt_tokens: map each" in hint  # not timestamp: 3 of 50
    assert "apps.concierge.log_mapping" in hint and "log_mapping.end_timestamp" in hint
    tokens_only = quarantine_hint(result.model_copy(update={"failures": {"completion_tokens_missing": 50}}))
    assert tokens_only is not None and "lacks completion_tokens:" in tokens_only and "end_timestamp" not in tokens_only
