"""The log record: one production interaction, the input contract of `collect`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

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

    @model_validator(mode="after")
    def _output_or_error(self) -> LogRecord:
        if self.output is None and not self.error:
            raise ValueError("output is null but error is not set")
        return self


LOG_FIELDS: tuple[str, ...] = tuple(LogRecord.model_fields)


def iso(ts: datetime) -> str:
    """ISO-8601 with zone, millisecond precision."""
    return ts.isoformat(timespec="milliseconds")
