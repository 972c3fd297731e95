"""Knobs for simulated latency and provider faults, for tests and benchmarks."""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ENV_VAR = "PROMPTLOOP_SIMULATION"


class FaultMix(BaseModel):
    """Relative weights of the fault kinds drawn when a call fails."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: float = Field(default=1.0, ge=0)
    timeout: float = Field(default=1.0, ge=0)
    server_error: float = Field(default=1.0, ge=0)
    malformed: float = Field(default=0.0, ge=0, description="judge only: a verdict that is not JSON")


class SimulationSettings(BaseModel):
    """Latency and faults; from the `simulation=` call parameter, else $PROMPTLOOP_SIMULATION (JSON)."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, description="mean real sleep per call")
    latency_jitter: float = Field(default=0.0, ge=0, le=1, description="uniform +/- share of latency_ms")
    error_rate: float = Field(default=0.0, ge=0, le=1)
    faults: FaultMix = Field(default_factory=FaultMix)
    retry_after_s: float = Field(default=0.05, ge=0, description="Retry-After sent with a rate limit")
    down: bool = Field(default=False, description="every call fails with a 503")
    fault_seed: int | None = Field(
        default=None, description="faults drawn from the request and this seed (no retry escapes them)"
    )
    attempt_seed: int | None = Field(
        default=None,
        description="faults drawn from the request, how often this process was sent it, and this seed: "
        "a retry can escape them, yet every run meets the same faults",
    )
    api_key_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="calls must carry the API key with this sha256 (hex), else a 401; the hash, never the key",
    )


def simulation_settings(call_parameters: dict[str, Any]) -> SimulationSettings:
    """Per-call settings win over the environment; default is an ideal provider."""
    given = call_parameters.get("simulation")
    if given is None and os.environ.get(ENV_VAR):
        given = json.loads(os.environ[ENV_VAR])
    return SimulationSettings.model_validate(given or {})
