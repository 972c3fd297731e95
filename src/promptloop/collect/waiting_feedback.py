"""Feedback lines (`apps.<app>.log_feedback`) read before the interaction they rate is stored.

An app may log a 👎 in one file and the answer it rates in another, or rotate its log between the two:
the rating can then be read a run before its interaction. Such a rating waits in the collect state
(its id and comment redacted, as every stored text is) and rates the interaction in the run that
stores it; after `collect.feedback_lookback_days` without it, the rating is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from promptloop.collect.traces import Feedback
from promptloop.quality.redact import Redactor

STATE_KEY = "waiting_feedback"  # in the collect state: rated id -> {feedback, comment, since}


@dataclass
class Waiting:
    """The ratings still waiting after a run, and how many were dropped for waiting too long."""

    ratings: dict[str, dict[str, Any]] = field(default_factory=dict)
    expired: int = 0


def still_waiting(state: dict[str, Any], now: datetime, lookback_days: float) -> Waiting:
    """The ratings the previous runs left waiting, without those older than the lookback (counted)."""
    oldest = now - timedelta(days=lookback_days)
    waiting = Waiting()
    for rated, entry in (state.get(STATE_KEY) or {}).items():
        if datetime.fromisoformat(entry["since"]) < oldest:
            waiting.expired += 1
        else:
            waiting.ratings[rated] = entry
    return waiting


def as_changes(waiting: Waiting) -> dict[str, Feedback]:
    """Rated id -> (score, comment) of the waiting ratings."""
    return {rated: (entry["feedback"], entry["comment"]) for rated, entry in waiting.ratings.items()}


def left_waiting(changes: dict[str, Feedback], found: set[str], before: Waiting, now: datetime,
                 redactor: Redactor) -> Waiting:
    """The ratings of `changes` no stored row has yet, kept redacted with the time they first waited."""
    waiting = Waiting(expired=before.expired)
    for rated, (score, comment) in changes.items():
        if rated in found:
            continue
        key = str(redactor.redact_text(rated)[0])  # the state file is committed: no personal data in it
        since = before.ratings.get(key, {}).get("since", now.isoformat())
        waiting.ratings[key] = {"feedback": score, "comment": redactor.redact_text(comment)[0], "since": since}
    return waiting
