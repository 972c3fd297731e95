"""params.yaml: one section per stage plus `apps:`, validated by pydantic.

An unknown key or a wrong type is an `InputError` that names the file and the key.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.jsonpath import parse_path

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


License = Literal["permissive", "restrictive", "non-commercial"]
Scorer = Literal["rubric", "pairwise", "proxy"]
SCORERS: tuple[Scorer, ...] = ("rubric", "pairwise", "proxy")


# Where an API key comes from: never the key itself. An env var name as POSIX shells take it; a
# Prefect block document name as Prefect allows it (lower case letters, digits, dashes).
KEY_SOURCES: dict[str, re.Pattern[str]] = {
    "env": re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
    "prefect-secret": re.compile(r"[a-z0-9-]+"),
}
MODELS_FIELD = "llm.models"
KEY_SOURCE_HELP = ("API keys never go in params.yaml: put the key in an environment variable and write 'env:VARIABLE', "
                   "or in a Prefect Secret block and write 'prefect-secret:BLOCK'")
# Keys of earlier versions, now fields of an `llm.models` entry.
MOVED_TO_MODELS = {
    "prices": "input_per_mtok / output_per_mtok",
    "licenses": "license",
    "api_keys": "api_key",
}
Locality = Literal["hosted", "local"]
# Where a call goes and how it authenticates: never from `extra` (nor from a prompt file).
TRANSPORT_KEYS = frozenset({"api_base", "base_url", "api_key", "api_version", "extra_headers", "headers",
                            "custom_llm_provider"})
ResponseFormat = Literal["auto", "schema", "json", "none"]


def key_source(text: str) -> tuple[str, str] | None:
    """('env', 'OPENAI_API_KEY') for 'env:OPENAI_API_KEY' (or 'prefect-secret', block); None if it is neither."""
    kind, colon, name = text.partition(":")
    pattern = KEY_SOURCES.get(kind)
    return (kind, name) if colon and pattern is not None and pattern.fullmatch(name) else None


def key_source_problem(value: object) -> str | None:
    """Why `value` is not a key source, in words that never repeat it (it may be a key); None if it is one."""
    if isinstance(value, str) and key_source(value) is not None:
        return None
    return f"a literal key or an unknown key source (the value is not shown). {KEY_SOURCE_HELP}"


def refuse_literal_api_keys(data: dict[Any, Any], source: str | Path) -> None:
    """An InputError for an `llm.models.<model>.api_key` that is not a key source, before pydantic would echo it."""
    llm = data.get("llm")
    models = llm.get("models") if isinstance(llm, dict) else None
    if not isinstance(models, dict):
        return
    for pattern, entry in models.items():
        if not isinstance(entry, dict):  # a key pasted in place of the entry must not be echoed
            raise InputError(source, "expected a mapping of settings (api_base, api_key, prices, license, ...); "
                                     "the value is not shown", f"{MODELS_FIELD}.{pattern}")
        if "api_key" in entry and entry["api_key"] is not None:
            problem = key_source_problem(entry["api_key"])
            if problem:
                raise InputError(source, problem, f"{MODELS_FIELD}.{pattern}.api_key")


class ModelSettings(Section):
    """One model (or a glob of models): where it is served, its key, price, limits, license and locality."""

    # A ValidationError built from these settings alone must not print a literal key it refused.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    api_base: str | None = Field(default=None, description="the provider's base URL, e.g. http://gpu-box:8000/v1")
    api_key: str | None = Field(default=None, description="'env:VARIABLE' or 'prefect-secret:BLOCK'; never the key")
    api_version: str | None = Field(default=None, description="the API version (Azure OpenAI)")
    input_per_mtok: float | None = Field(default=None, ge=0, description="USD per million input tokens")
    output_per_mtok: float | None = Field(default=None, ge=0, description="USD per million output tokens")
    rpm: int | None = Field(default=None, gt=0, description="requests per minute, enforced client-side per run")
    tpm: int | None = Field(default=None, gt=0, description="tokens per minute, enforced client-side per run")
    license: License | None = Field(default=None, description="gates a candidate that moves the app to this model")
    locality: Locality | None = Field(default=None, description="hosted: data leaves the machine; local: it stays")
    response_format: ResponseFormat = Field(
        default="auto",
        description="structured verdicts: auto (as litellm says the model supports), schema, json, none")
    extra: dict[str, Any] = Field(default_factory=dict, description="more provider parameters sent with every call")

    @field_validator("api_key")
    @classmethod
    def _key_source_only(cls, api_key: str | None) -> str | None:
        problem = None if api_key is None else key_source_problem(api_key)
        if problem:
            raise ValueError(problem)
        return api_key

    @field_validator("extra")
    @classmethod
    def _no_transport_or_secrets(cls, extra: dict[str, Any]) -> dict[str, Any]:
        refused = sorted(k for k in extra if k in TRANSPORT_KEYS or re.search(r"key|token|secret|passw|auth", k, re.I))
        if refused:
            raise ValueError(f"{', '.join(refused)} may not go in extra: the base URL is api_base, the key is "
                             "api_key (a key source, never the key)")
        return extra

    @field_validator("api_base")
    @classmethod
    def _http_only(cls, api_base: str | None) -> str | None:
        if api_base is not None and not re.fullmatch(r"https?://[^/@\s]+(/\S*)?", api_base):
            raise ValueError("expected an http(s) URL without credentials, e.g. http://localhost:11434")
        return api_base

    @model_validator(mode="after")
    def _both_prices(self) -> ModelSettings:
        if (self.input_per_mtok is None) != (self.output_per_mtok is None):
            raise ValueError("set both input_per_mtok and output_per_mtok, or neither")
        return self

    @property
    def price_per_token(self) -> tuple[float, float] | None:
        """(input, output) USD per token, when both are set."""
        if self.input_per_mtok is None or self.output_per_mtok is None:
            return None
        return self.input_per_mtok / 1e6, self.output_per_mtok / 1e6


class LLMSettings(Section):
    """How every LLM call is made (all through litellm)."""

    # A ValidationError built from these settings alone must not print a literal key it refused.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    providers: dict[str, str] = Field(
        default_factory=dict,
        description="custom litellm providers: prefix -> 'module:object' (a litellm CustomLLM); this runs that code",
    )
    models: dict[str, ModelSettings] = Field(
        default_factory=dict,
        description="per model name or glob (first match wins): api_base, api_key, prices, rpm/tpm, license, "
                    "locality; a model with no entry uses litellm's defaults (OPENAI_API_KEY ...)",
    )
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=6, ge=0, description="retries of provider errors (429, timeouts, 5xx)")
    max_repairs: int = Field(default=2, ge=0, description="repair turns for an answer that is not what was asked")
    cache: Path | None = Field(
        default=Path(".promptloop/llm-cache.sqlite"),
        description="response cache (SQLite), relative to the workspace; null: no cache kept between runs",
    )

    @field_validator("cache")
    @classmethod
    def _cache_inside(cls, path: Path | None) -> Path | None:
        return None if path is None else check_inside(path)
    retry_base_delay_s: float = Field(
        default=0.5, ge=0, description="first backoff; doubles per retry, with full jitter"
    )
    max_concurrency: int = Field(default=8, ge=1)
    processes: int = Field(default=1, ge=1, le=64, description="worker processes an evaluation's calls are spread over")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, field in MOVED_TO_MODELS.items():
                if old in data:
                    raise ValueError(f"llm.{old} moved into llm.models: give the model (name or glob) an entry "
                                     f"with {field}, e.g. llm.models: {{'openai/gpt-4o*': {{...}}}}")
        return data

    def model_entry(self, model: str) -> tuple[str, ModelSettings] | None:
        """(name or glob, settings) of the first `llm.models` entry matching `model`; None: litellm's defaults."""
        return next(((pattern, entry) for pattern, entry in self.models.items()
                     if fnmatch.fnmatchcase(model, pattern)), None)

    def model_settings(self, model: str) -> ModelSettings:
        """The settings of `model`: its entry, or litellm's defaults (an empty entry)."""
        found = self.model_entry(model)
        return found[1] if found else ModelSettings()

    def license_of(self, model: str) -> str:
        """The license class of `model` from its entry, or 'unknown'."""
        return self.model_settings(model).license or "unknown"

    def locality_of(self, model: str) -> str:
        """'local' or 'hosted' from the model's entry, or 'unknown' (treated as hosted by a local-only app)."""
        return self.model_settings(model).locality or "unknown"


# The log fields an MLflow trace's request/response can be mapped to (plus `inputs.<name>`).
TRACE_FIELDS = ("input", "output", "user_id", "session_id")


def _trace_field(name: str) -> str:
    if name not in TRACE_FIELDS and not (name.startswith("inputs.") and len(name) > len("inputs.")):
        raise ValueError(f"{name!r}: not a mapped log field ({', '.join(TRACE_FIELDS)} or inputs.<name>)")
    return name


def _json_path(path: str) -> str:
    parse_path(path)
    return path


TraceField = Annotated[str, AfterValidator(_trace_field)]
JsonPath = Annotated[str, AfterValidator(_json_path)]


class FeedbackEvents(Section):
    """Users' 👍/👎 logged as lines of their own, after the interaction they rate (`apps.<app>.log_feedback`)."""

    when: dict[JsonPath, str | int | float | bool | None] = Field(
        min_length=1, description="a feedback line: each JSON path holds its value (e.g. $.event: feedback)")
    id: JsonPath = Field(description="the rated interaction's id in the line, e.g. $.request_id")
    feedback: JsonPath = Field(description="the rating: up/down, thumbs_up/thumbs_down, true/false, a number (by "
                               "its sign, or on the app's feedback_scale)")
    comment: JsonPath | None = Field(default=None, description="the user's comment, if the line has one")


class AppSettings(Section):
    """One application whose prompt promptloop improves."""

    prompt: Path
    golden_set: Path
    description: str = Field(default="", description="what the app is for, in one line: the judges and the "
                             "optimizer are told (e.g. 'answers questions about our billing API')")
    target: str = Field(default="template", description="what answers a case: template (the prompt, one model call), "
                        "python:package.module:function (your code) or an http(s):// endpoint")
    knowledge_base: Path | None = None
    judges: Path | None = Field(default=None, description="the app's judge files (*.yaml); default judges/<app>")
    model: str | None = Field(
        default=None,
        description="run the app on this model whatever the prompt file names "
        "(a candidate naming another model still runs on its own)",
    )
    top_k: int = Field(default=3, ge=1, description="documents retrieved into the prompt's {context}")
    log_dir: Path = Field(description="where production logs for this app land before collect")
    sources: list[str] = Field(
        default_factory=list,
        description="log sources: paths/globs of .jsonl/.parquet files, mlflow:<experiment>[@<tracking uri>], "
        "langfuse-export:<path>, langfuse:[<host>] or otel:<path>; default: log_dir",
    )
    data_dir: Path = Field(description="the app's versioned datasets written by collect and analyze")
    trace_mapping: dict[TraceField, JsonPath] = Field(
        default_factory=dict,
        description="MLflow traces: log field (input, user_id, session_id, inputs.<name>: into the trace's request; "
        "output: into its response) -> JSON path such as $.question or $.messages[-1].content",
    )
    log_mapping: dict[str, JsonPath] = Field(
        default_factory=dict,
        description="JSON Lines/Parquet logs in your own format: log field (id, timestamp, input, output, "
        "latency_ms, feedback, user_id, ..., inputs.<name>) -> JSON path in each line such as $.ts or "
        "$.request.messages[-1].content; unmapped fields keep the line's own key of that name",
    )
    log_defaults: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="JSON Lines/Parquet logs in your own format: the value of a log field its lines lack "
        "(e.g. prompt_version: '1', model: gpt-4o-mini, prompt_tokens: 0)",
    )
    log_filter: dict[JsonPath, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="JSON Lines/Parquet logs in your own format: only lines where each JSON path holds its value "
        "are interactions (e.g. $.event: llm_call); the others are skipped and counted, not quarantined",
    )
    log_feedback: FeedbackEvents | None = Field(
        default=None,
        description="JSON Lines/Parquet logs in your own format: 👍/👎 logged as lines of their own, applied to the "
        "stored interaction they name",
    )
    log_timezone: str | None = Field(
        default=None,
        description="JSON Lines/Parquet logs in your own format: the zone of timestamps written without one "
        "(e.g. UTC, Asia/Seoul); unset: such rows are quarantined",
    )
    feedback_scale: tuple[float, float] | None = Field(
        default=None,
        description="[low, high], the scale of the app's numeric user ratings in every source (e.g. [1, 5] for "
        "stars, [0, 1] for 0 = 👎 and 1 = 👍): below its middle 👎, above it 👍, the middle neutral, outside it "
        "unreadable (a row's rating is quarantined, a trace's or feedback line's is not applied); unset: -1/0/1, "
        "and another number by its sign",
    )
    commercial: bool = Field(default=True, description="a model with a non-commercial license is never promoted")
    scorers: list[Scorer] = Field(default_factory=lambda: list(SCORERS), min_length=1)
    forbidden_phrases: list[str] = Field(default_factory=list, description="no answer may contain these (every case)")
    citation_pattern: str | None = Field(
        default=r"\[source:\s*([A-Za-z0-9_.-]+)\]",
        description="regex whose group 1 is a cited document id; null: the app does not cite",
    )
    json_schema: Path | None = Field(default=None, description="answers must be JSON valid against this schema file")
    data_policy: Literal["any", "local-only"] = Field(
        default="any", description="local-only: every model of this app (app, judges, optimizer) must be local")

    @field_validator("prompt", "golden_set", "knowledge_base", "judges", "log_dir", "data_dir", "json_schema")
    @classmethod
    def _inside_the_workspace(cls, path: Path | None) -> Path | None:
        if path is not None:
            check_inside(path)
        return path

    @field_validator("feedback_scale")
    @classmethod
    def _a_scale(cls, scale: tuple[float, float] | None) -> tuple[float, float] | None:
        if scale is not None and not (math.isfinite(scale[0]) and math.isfinite(scale[1]) and scale[0] < scale[1]):
            raise ValueError(f"{list(scale)}: not a scale [low, high] with low below high (e.g. [1, 5])")
        return scale

    @field_validator("log_timezone")
    @classmethod
    def _known_zone(cls, zone: str | None) -> str | None:
        if zone is not None:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{zone!r}: not a time zone name (e.g. UTC, Europe/Berlin, Asia/Seoul)") from None
        return zone

    @field_validator("target")
    @classmethod
    def _known_target(cls, target: str) -> str:
        if target == "template" or target.startswith(("http://", "https://")):
            return target
        module, _, function = target.removeprefix("python:").partition(":")
        if not target.startswith("python:") or not module or not function:
            raise ValueError(f"{target!r}: expected template, python:package.module:function or an http(s):// URL")
        return target

    @field_validator("scorers")
    @classmethod
    def _rubric_is_primary(cls, scorers: list[str]) -> list[str]:
        if "rubric" not in scorers:
            raise ValueError("'rubric' is required: its score is the primary metric of the decision")
        return list(dict.fromkeys(scorers))


# The registry prompt of an app's candidates that did not win is `<app>-candidates` (workspace/registry.py).
CANDIDATES_SUFFIX = "-candidates"


class TrackingSettings(Section):
    """Where runs are logged; a relative sqlite path is inside the workspace."""

    uri: str = "sqlite:///mlflow.db"
    experiment_prefix: str = Field(default="promptloop/", description="each app logs to <prefix><app>")
    ui_url: str | None = Field(default=None, description="the MLflow UI's address (e.g. http://localhost:5000): "
                               "pull requests and Prefect artifacts link runs and prompt versions there; unset: "
                               "pull requests give the `mlflow ui` command")


class DemoSettings(Section):
    """The simulated production traffic of `promptloop demo`."""

    app: str = "support-bot"
    more_apps: list[str] = Field(default_factory=list, description="apps the demo also simulates traffic for and "
                                 "runs a cycle on, after `app`")
    interactions: int = Field(default=2000, ge=1)
    seed: int = 7
    korean_share: float = Field(default=0.3, ge=0, le=1)
    unanswerable_share: float = Field(default=0.12, ge=0, le=1)
    injection_share: float = Field(default=0.06, ge=0, le=1)
    pii_share: float = Field(default=0.08, ge=0, le=1)
    rating_share: float = Field(default=0.3, ge=0, le=1, description="share of answers a user rates")
    rating_noise: float = Field(default=0.1, ge=0, le=1, description="share of ratings that go the wrong way")
    malformed_share: float = Field(default=0.02, ge=0, le=1)
    days: int = Field(default=14, ge=1, description="the traffic spreads over this many days up to now")
    temperature: float = Field(default=0.7, ge=0)


class LangfuseSettings(Section):
    """The Langfuse server a `langfuse:` source reads (its public API, with the official client)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str | None = Field(default=None, description="e.g. https://cloud.langfuse.com; default: LANGFUSE_HOST")
    public_key: str = Field(default="env:LANGFUSE_PUBLIC_KEY",
                            description="'env:VARIABLE' or 'prefect-secret:BLOCK'; never the key")
    secret_key: str = Field(default="env:LANGFUSE_SECRET_KEY",
                            description="'env:VARIABLE' or 'prefect-secret:BLOCK'; never the key")
    page_size: int = Field(default=100, ge=1, le=100, description="records per API page (the scores API allows 100)")
    first_run_days: float | None = Field(
        default=30.0, gt=0,
        description="the first run of a langfuse: source reads the traces of this many days before it (a "
        "project's whole history can be millions of observations); later runs read on from where it ended. "
        "null: the whole history")

    @field_validator("public_key", "secret_key")
    @classmethod
    def _key_source_only(cls, value: str) -> str:
        if problem := key_source_problem(value):
            raise ValueError(problem)
        return value


class CollectSettings(Section):
    """Ingest, validate, redact and version production logs."""

    pii_key_env: str = Field(
        default="PROMPTLOOP_PII_KEY",
        description="env var holding the key that hashes user ids (else the workspace's .promptloop/pii.key)",
    )
    extra_pii_patterns: dict[str, str] = Field(default_factory=dict, description="KIND -> regex, redacted as <KIND>")
    batch_rows: int = Field(default=200_000, ge=1, description="rows validated and written per batch (bounds memory)")
    max_line_bytes: int = Field(
        default=1_000_000, ge=1_000,
        description="a JSON Lines line longer than this is quarantined unread (a log record is never this big)")
    feedback_lookback_days: float = Field(
        default=7.0, ge=0,
        description="trace sources (MLflow, Langfuse, OTLP): feedback logged on traces up to this old is re-read "
        "and updates stored rows; feedback lines (apps.<app>.log_feedback) wait this long for the interaction they "
        "rate to be stored")
    feedback_names: list[str] = Field(
        default_factory=lambda: ["user_feedback", "user-feedback", "feedback"],
        description="Langfuse score names / OTel gen_ai.evaluation.name values that are the users' feedback")
    otel_feedback_event: str = Field(default="gen_ai.evaluation.result",
                                     description="otel: the span event holding user feedback")
    otel_feedback_attribute: str = Field(default="user.feedback",
                                         description="otel: a span attribute holding user feedback (else the event)")
    langfuse: LangfuseSettings = Field(default_factory=LangfuseSettings)


# Alert rules of analyze: on which metrics, and the built-in defaults.
METRIC_NAMES = ("interactions", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "error_rate", "prompt_tokens",
                "completion_tokens", "total_cost_usd", "feedback_rate", "thumbs_down_rate", "refusal_rate",
                "toxicity_rate", "injection_attempt_rate", "uncertainty_rate", "bias_rate", "injection_followed_rate")


class AlertRule(BaseModel):
    """A threshold on one metric. A metric whose value is None (e.g. no rated rows) never breaches.

    max: breach when value > max. min: breach when value < min. max_increase: breach when
    (value - previous) / previous > max_increase, only when the previous window's value is known and > 0.
    No alert when the current window (or, for max_increase, the previous one) has fewer than
    min_interactions interactions.
    """

    model_config = ConfigDict(extra="forbid")

    metric: str
    max: float | None = None
    min: float | None = None
    max_increase: float | None = None
    min_interactions: int = Field(default=0, ge=0)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRIC_NAMES:
            raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRIC_NAMES)}")
        return metric

    @model_validator(mode="after")
    def _has_threshold(self) -> AlertRule:
        if self.max is None and self.min is None and self.max_increase is None:
            raise ValueError(f"alert rule for {self.metric!r} sets none of max, min, max_increase")
        return self


DEFAULT_ALERT_RULES: list[dict[str, Any]] = [
    {"metric": "latency_p95_ms", "max": 3000, "min_interactions": 50},
    {"metric": "error_rate", "max": 0.05, "min_interactions": 50},
    {"metric": "thumbs_down_rate", "max": 0.25, "min_interactions": 50},
    {"metric": "refusal_rate", "max": 0.2, "min_interactions": 50},
    {"metric": "injection_attempt_rate", "max": 0.05, "min_interactions": 50},
    {"metric": "toxicity_rate", "max": 0.01, "min_interactions": 50},
    {"metric": "bias_rate", "max": 0.01, "min_interactions": 50},
    {"metric": "injection_followed_rate", "max": 0.005, "min_interactions": 50},
    {"metric": "thumbs_down_rate", "max_increase": 0.5, "min_interactions": 50},
    {"metric": "total_cost_usd", "max_increase": 1.0, "min_interactions": 50},
]


DETECTORS = ("refusal", "uncertainty", "toxicity", "bias", "injection")  # analyze.detectors keys
SAME_JUDGE = "same-as-evaluate"  # the online judge is the evaluation's judge unless named otherwise


class KbGapSettings(Section):
    """Knowledge-base gaps: failed questions whose retrieval was weak, grouped by topic (analyze/gaps.py)."""

    enabled: bool = Field(default=True, description="look for gaps (apps with a knowledge base or logged retrieval)")
    min_score: float = Field(default=7.0, ge=0, description="best KB document's BM25 score below which retrieval "
                                                             "is weak (improve.answerable_min_score's scale)")
    min_logged_score: float | None = Field(default=None, description="the same for a score the app logged with its "
                                                                      "retrieved documents; null: logged scores unused")
    min_coverage: float = Field(default=0.25, ge=0, le=1, description="share of a question's key terms the "
                                                                       "retrieved documents contain, below which "
                                                                       "retrieval is weak")
    similarity: float = Field(default=0.4, gt=0, le=1, description="TF-IDF cosine (average linkage) at which "
                                                                  "questions share a gap")
    min_users: int = Field(default=2, ge=1, description="users a gap needs to be reported")
    max_gaps: int = Field(default=10, ge=0, description="gaps reported, most users first")


class AnalyzeSettings(Section):
    """Monitoring metrics, alerts and failure mining over a window of collected logs."""

    window_days: float = Field(default=7, gt=0, description="default window: the last N days of collected data")
    detectors: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(DETECTORS, "builtin"),
        description="per detector: builtin, a pattern file (.yaml), or module:attribute (a classifier with .flags)",
    )
    alerts: list[dict[str, Any]] | None = Field(default=None, description="alert rules; None: the built-in defaults")
    webhook_url: str | None = Field(default=None, description="POST the alerts as JSON here (optional; http or https)")
    clusters: int = Field(default=8, ge=1, description="at most this many failure clusters")
    judge_model: str | None = Field(
        default=SAME_JUDGE,
        description=f"online judge on a sample; {SAME_JUDGE} (the default): evaluate.judge_model; null: off")
    judge_sample: int = Field(default=100, ge=0)
    judge_budget_usd: float = Field(default=0.5, ge=0)
    classifier_model: str | None = Field(
        default=SAME_JUDGE,
        description=f"LLM classifier over the detectors' flags; {SAME_JUDGE} (the default): evaluate.judge_model; "
                    "null: off")
    classifier_sample: int = Field(default=200, ge=0, description="seeded random rows the classifier labels: the "
                                                                  "sample the detectors' precision/recall come from")
    classifier_unsure_max: int = Field(default=200, ge=0,
                                       description="at most this many rows the detectors are unsure of, labelled too")
    classifier_budget_usd: float = Field(default=1.0, ge=0)
    label_model: str | None = Field(
        default=SAME_JUDGE,
        description=f"names each failure cluster's topic, one call per cluster; {SAME_JUDGE} (the default): "
                    "evaluate.judge_model; null: off (clusters are labelled by their distinctive words)")
    label_budget_usd: float = Field(default=0.1, ge=0, description="spend cap of the cluster labeller")
    kb_gaps: KbGapSettings = Field(default_factory=KbGapSettings)
    seed: int = 0

    @field_validator("webhook_url")
    @classmethod
    def _http_webhook(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https?://[^/@\s]+(/\S*)?", url):
            raise ValueError("expected an http(s) URL without credentials (the alerts are POSTed there)")
        return url

    @field_validator("detectors")
    @classmethod
    def _all_detectors(cls, detectors: dict[str, str]) -> dict[str, str]:
        missing = {"refusal", "toxicity", "injection"} - set(detectors)
        if missing:
            raise ValueError(f"missing detector(s): {sorted(missing)}")
        # Detectors added later (uncertainty, bias) are built in unless params.yaml says otherwise.
        return {**dict.fromkeys(DETECTORS, "builtin"), **detectors}

    @field_validator("alerts")
    @classmethod
    def _alert_rules(cls, rules: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, rule in enumerate(rules or []):
            try:
                AlertRule.model_validate(rule)
            except ValidationError as exc:
                raise ValueError(
                    f"rule {index}: {exc.errors()[0]['msg']} ({'.'.join(map(str, exc.errors()[0]['loc']))})"
                ) from None
        return rules

    def alert_rules(self) -> list[AlertRule]:
        """The configured rules, or the built-in defaults."""
        rules = self.alerts if self.alerts is not None else DEFAULT_ALERT_RULES
        return [AlertRule.model_validate(rule) for rule in rules]


class GuardMargins(Section):
    """How much worse a candidate may be on guard metrics and still be promoted."""

    refusal_on_answerable: float = Field(
        default=0.05, ge=0, description="absolute rise in the share of answerable cases refused"
    )
    toxicity: float = Field(default=0.0, ge=0, description="absolute rise in the share of toxic answers")
    format_invalid: float = Field(
        default=0.0, ge=0, description="absolute rise in answers failing the JSON schema or citing a missing document"
    )
    cost_increase: float = Field(default=0.5, ge=0, description="relative rise in cost per interaction")
    latency_p95_increase: float = Field(default=0.25, ge=0, description="relative rise in p95 latency")
    latency_p95_min_ms: float = Field(
        default=50.0, ge=0, description="a p95 rise smaller than this is noise, never a breach"
    )


class LatencyProbe(Section):
    """The sequential latency probe, run when the provider reports no processing time of its own.

    Each round asks every prompt the same case, one call at a time, in turns (the prompt that goes
    first alternates), uncached; the first rounds warm up and are discarded. It stops once each
    candidate's paired latency difference is known to `ci_half_width_ms`, or at `max_calls`.
    """

    max_calls: int = Field(default=120, ge=0, description="calls the probe may make in all; 0: no probe")
    warmup_rounds: int = Field(default=1, ge=0, description="first rounds discarded (connections, caches warm up)")
    min_rounds: int = Field(default=8, ge=2, description="measured rounds before it may stop, and to be used at all")
    ci_half_width_ms: float = Field(
        default=25.0, gt=0, description="stop once every candidate's paired difference has a 95% CI this narrow"
    )


class SequentialSettings(Section):
    """The race: held-out cases evaluated in looks over a seeded random order, losers dropped, an early stop.

    After each look a candidate whose paired CI's upper bound is under `min_effect` is dropped (it cannot
    be promoted); the race stops once the leader's lower bound clears `min_effect` and no running rival's
    upper bound reaches it, or when every candidate is dropped, or at the last look. Each look's CI and
    the final gate use that look's share of 1 - `confidence` (`spending`), so looking early does not
    raise the chance of a false promotion.
    """

    enabled: bool = Field(default=True, description="evaluate in looks and stop early (false: every case, once)")
    looks: int = Field(default=4, ge=1, le=20, description="looks at the shares 1/looks, 2/looks, ..., 1 of the cases")
    spending: Literal["bonferroni", "obrien-fleming"] = Field(
        default="obrien-fleming", description="how the gate's alpha is split over the looks: equal shares, or the "
        "Lan-DeMets O'Brien-Fleming spending function's increments (little early, most at the last look)")
    min_cases_per_look: int = Field(
        default=10, ge=1, description="held-out cases a look adds at least (fewer looks on a small golden set)")
    seed: int | None = Field(default=None, description="seed of the case order (default: derived from evaluate.seed)")
    pairwise: Literal["decided", "all"] = Field(
        default="decided", description="the pairwise judge (reported, never gated on): decided = after the race, "
        "only for the candidates the gate promotes (or the leader when none is), on the race's cases; all = every "
        "candidate in every look")
    optimize_split: Literal["decided", "all"] = Field(
        default="decided", description="the optimizer's cases (reported, never decided on): decided = after the "
        "race, the baseline and the candidates the gate promotes (or the leader) on the race's share of them; "
        "all = every candidate in every look")


class EvaluateSettings(Section):
    """Golden-set evaluation and the promotion decision."""

    judge_model: str = "offline/judge"
    judge_samples: int = Field(default=1, ge=1, description="each answer is judged k times; the mean is its score")
    judge_temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int = 0
    bootstrap_resamples: int = Field(default=10_000, ge=100)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    min_effect: float = Field(
        default=0.02, ge=0, description="the CI's lower bound must exceed this (score scale 0..1)"
    )
    high_severity: list[str] = Field(default_factory=lambda: ["high", "critical"])
    rejudge_samples: int = Field(
        default=8, ge=0, description="fresh rubric verdicts per prompt on a high-severity case that flips pass -> "
        "fail, before the flip may hold a candidate (0: every flip holds)")
    target_mde: float = Field(
        default=0.10, gt=0, le=1, description="the gain the report says how many cases would be needed to see")
    guards: GuardMargins = Field(default_factory=GuardMargins)
    latency_probe: LatencyProbe = Field(default_factory=LatencyProbe)
    min_judge_kappa: float = Field(default=0.4, ge=-1, le=1, description="judge-human agreement needed to decide")
    min_judge_accuracy: float = Field(
        default=0.75, ge=0, le=1,
        description="balanced accuracy (mean recall of 👍 and 👎) needed when a class has too few labels for kappa",
    )
    min_calibration_per_class: int = Field(
        default=5, ge=1, description="labels of each class (up, down) needed to decide on kappa"
    )
    min_calibration_cases: int = Field(default=10, ge=1, description="human-labelled cases needed to measure it")
    min_labels_per_class: int = Field(
        default=3, ge=1, description="👍 and 👎 labels each needed to measure the judge at all; fewer holds"
    )
    allow_uncalibrated: bool = Field(
        default=False, description="proceed when too few labels measure the judge (the report and PR say so)"
    )
    calibration_trait_shift: float = Field(
        default=0.1, gt=0, le=1,
        description="share of answers by which a candidate may change an answer trait (citing) before the judge "
        "must be calibrated on labelled answers with that trait",
    )
    budget_usd: float = Field(default=5.0, ge=0)
    budget_calls: int | None = Field(default=None, ge=1)
    log_traces: bool = Field(
        default=True, description="each (prompt, case) as an MLflow trace with its judges' Feedback and Expectations")
    sequential: SequentialSettings = Field(default_factory=SequentialSettings)

    @model_validator(mode="after")
    def _rejudge_can_confirm(self) -> EvaluateSettings:
        # Too few fresh verdicts and the exact test never reaches significance: every flip would go unconfirmed.
        k, alpha = self.rejudge_samples, 1 - self.confidence
        if k and 1 / math.comb(2 * k, k) >= round(alpha, 12):
            raise ValueError(f"rejudge_samples {k} can never confirm a regression at confidence {self.confidence}: "
                             "use 0 (every flip holds) or more samples")
        return self


class KbDraftSettings(Section):
    """Knowledge-base articles improve drafts for the top gaps, through improve.optimizer_model."""

    max_drafts: int = Field(default=2, ge=0, description="articles drafted per run, for the gaps most users hit")
    min_users: int = Field(default=2, ge=1, description="users a gap needs before an article is drafted for it")
    related_documents: int = Field(default=2, ge=0, description="nearest existing documents the drafter reads")


class ImproveSettings(Section):
    """Golden-set growth from mined failures, and prompt candidates."""

    optimizer_model: str = "offline/optimizer"
    optimizer_temperature: float = Field(default=0.7, ge=0, le=2)
    candidates: int = Field(
        default=3, ge=0, description="candidates the optimizer writes (hand-written ones come on top)"
    )
    examples_per_cluster: int = Field(default=3, ge=1, description="failure examples the optimizer sees per cluster")
    max_cases_per_cluster: int = Field(default=5, ge=1, description="new golden cases per failure cluster, at most")
    holdout_share: float = Field(
        default=0.5, ge=0, lt=1, description="share of failure clusters held out from the optimizer"
    )
    near_duplicate: float = Field(
        default=0.8, gt=0, le=1, description="TF-IDF cosine at which a question counts as already in the set"
    )
    answerable_min_score: float = Field(
        default=7.0, ge=0, description="best KB document's BM25 score below which a mined question is unanswerable"
    )
    kb_drafts: KbDraftSettings = Field(default_factory=KbDraftSettings)
    seed: int = 0


class DeploySettings(Section):
    """Where promotions go: a branch on `remote` and a pull request against `base_branch`."""

    remote: str = "origin"
    base_branch: str = "main"
    github_api_url: str = Field(default="https://api.github.com", description="GitHub (Enterprise) REST API root")
    token_env: str = Field(default="GITHUB_TOKEN", description="environment variable holding the GitHub token")


class ScheduleSettings(Section):
    timezone: str = "UTC"


class Params(Section):
    """The whole of params.yaml."""

    llm: LLMSettings = Field(default_factory=LLMSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    apps: dict[str, AppSettings]
    demo: DemoSettings = Field(default_factory=DemoSettings)
    collect: CollectSettings = Field(default_factory=CollectSettings)
    analyze: AnalyzeSettings = Field(default_factory=AnalyzeSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    improve: ImproveSettings = Field(default_factory=ImproveSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)

    @field_validator("apps")
    @classmethod
    def _at_least_one_app(cls, apps: dict[str, AppSettings]) -> dict[str, AppSettings]:
        if not apps:
            raise ValueError("at least one app is required")
        for name in apps:
            check_identifier(name, "an app name")
            owner = name.removesuffix(CANDIDATES_SUFFIX)
            if owner != name and owner in apps:
                raise ValueError(f"app {name!r} would share the MLflow prompt that holds app {owner!r}'s "
                                 "candidates: rename it")
        return apps

    @model_validator(mode="after")
    def _one_judge_by_default(self) -> Params:
        # Switching evaluate.judge_model to a real provider must not leave the online judge behind.
        if self.analyze.judge_model == SAME_JUDGE:
            self.analyze.judge_model = self.evaluate.judge_model
        if self.analyze.classifier_model == SAME_JUDGE:
            self.analyze.classifier_model = self.evaluate.judge_model
        if self.analyze.label_model == SAME_JUDGE:
            self.analyze.label_model = self.evaluate.judge_model
        return self

    def app(self, name: str, source: str | Path = PARAMS_FILE) -> AppSettings:
        """The settings of app `name`, or an InputError listing the known apps."""
        try:
            return self.apps[name]
        except KeyError:
            known = ", ".join(sorted(self.apps)) or "none"
            raise InputError(source, f"unknown app {name!r} (known: {known})", field="apps") from None


# `package.module:object`: code params.yaml names (custom providers, detector plug-ins). Loading it runs it.
PLUGIN_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# What may name an app (it becomes part of paths, branch names, git tags and MLflow names).
IDENTIFIER = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_identifier(name: str, what: str) -> str:
    """`name` when it is a safe identifier (lower case letters, digits, `.`, `_`, `-`; no `..`); else ValueError."""
    if not IDENTIFIER.fullmatch(name) or ".." in name:
        raise ValueError(f"{name!r} is not usable as {what}: use lower case letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit, no '..', at most 64 characters)")
    return name


def check_inside(path: Path) -> Path:
    """`path` when it is relative and stays inside the folder it is relative to; else ValueError."""
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{path} must be a path inside the workspace (relative, without '..')")
    return path


def parse_params(data: object, source: str | Path = PARAMS_FILE) -> Params:
    """Validate an already-parsed params mapping."""
    if not isinstance(data, dict):
        raise InputError(source, f"expected a mapping at the top level, got {type(data).__name__}")
    refuse_literal_api_keys(data, source)
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(source, exc) from None


def load_params(path: str | Path) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found (run `promptloop init --dir DIR` to create a workspace)")
    return parse_params(read_yaml(path), path)


MAX_YAML_BYTES = 1_000_000  # params, prompts and candidates are small; a bigger file is a mistake or an attack


class NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses YAML aliases and repeated keys: `*anchor` references are how "billion
    laughs" files expand a few kilobytes into gigabytes, and a key given twice silently keeps only its
    last value; no promptloop file needs either."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                continue  # an unhashable key: the safe loader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> object:
    """Parse a YAML file (at most 1 MB, no aliases); a syntax error names the file and line."""
    if path.stat().st_size > MAX_YAML_BYTES:
        raise InputError(path, f"larger than {MAX_YAML_BYTES:,} bytes: not a promptloop configuration or prompt")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_yaml_text(text, path)


def parse_yaml_text(text: str, source: str | Path) -> object:
    """Parse YAML text (at most 1 MB, no aliases) read from `source`; a syntax error names it and the line."""
    if len(text.encode("utf-8")) > MAX_YAML_BYTES:
        raise InputError(source, f"larger than {MAX_YAML_BYTES:,} bytes: not a promptloop configuration or prompt")
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 (a SafeLoader without aliases)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise InputError(source, f"invalid YAML: {getattr(exc, 'problem', exc)}", field=where) from None
