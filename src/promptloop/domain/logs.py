"""The log record: one production interaction, the input contract of `collect`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class LogRecord(BaseModel):
    """One interaction of the app with a user, as the app logs it (JSON Lines or Parquet row)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    timestamp: AwareDatetime
    app: str
    prompt_version: str
    model: str
    input: str
    output: str | None
    latency_ms: float = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cost_usd: float | None = Field(default=None, ge=0)
    error: str | None = None
    feedback: Literal[-1, 0, 1] | None = None
    feedback_comment: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] | None = None
    # What the app's prompt was filled with: its variables and `history` (the conversation so far).
    # A failure mined from this row becomes a golden case with these inputs.
    inputs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _output_or_error(self) -> LogRecord:
        if self.output is None and not self.error:
            raise ValueError("output is null but error is not set")
        return self


LOG_FIELDS: tuple[str, ...] = tuple(LogRecord.model_fields)

# The collected log dataset's columns, as collect stores them (redacted, user ids hashed, mappings as JSON).
# Explicit: a part whose column happens to be all null must still read with the others.
STORED_LOG_SCHEMA = pa.schema([
    ("id", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")), ("app", pa.string()),
    ("prompt_version", pa.string()), ("model", pa.string()), ("input", pa.string()), ("output", pa.string()),
    ("latency_ms", pa.float64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()), ("cost_source", pa.string()), ("error", pa.string()), ("feedback", pa.int8()),
    ("feedback_comment", pa.string()), ("user_hash", pa.string()), ("metadata", pa.string()),
    ("source", pa.string()), ("collect_run", pa.string()), ("inputs", pa.string()),
])


def iso(ts: datetime) -> str:
    """ISO-8601 with zone, millisecond precision."""
    return ts.isoformat(timespec="milliseconds")
