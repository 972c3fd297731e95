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
