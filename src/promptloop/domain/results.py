"""What each stage returns: typed results, one per command.

`--json` prints a result's `model_dump(mode="json")`. Stages hand these to each other (improve's
outcome is saved for deploy; the cycle gathers them all), so a wrong key is a type error, not a
KeyError at run time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from promptloop.domain.evaluation import Decision, EvaluationResult, Record

MetricValue = float | int | None
Metrics = dict[str, MetricValue]
DailyMetrics = dict[str, MetricValue | str]  # a day's metrics and its `day` (YYYY-MM-DD)
CycleDecision = Literal["promote", "hold", "incomplete", "skipped"]


class CollectResult(Record):
    """A collect run: rows_in = rows_valid + rows_quarantined + rows_duplicate, always."""

    app: str
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    rows_duplicate: int
    feedback_updated: int = Field(default=0, description="stored rows whose user feedback arrived or changed later")
    lines_skipped: int = Field(default=0, description="log lines that are not interactions: other events "
                               "(apps.<app>.log_filter) and feedback lines (not rows: outside rows_in)")
    feedback_waiting: int = Field(default=0, description="feedback lines (apps.<app>.log_feedback) whose interaction "
                                  "is not stored yet: kept, and applied by the run that stores it")
    feedback_expired: int = Field(default=0, description="feedback lines dropped this run after waiting "
                                  "collect.feedback_lookback_days for their interaction")
    feedback_unreadable: int = Field(default=0, description="feedback lines (apps.<app>.log_feedback) without a "
                                     "rated id or with a rating that could not be read (a word it does not know, a "
                                     "number off feedback_scale): not applied")
    pii_redactions: dict[str, int]
    failures: dict[str, int] = Field(description="quarantine reasons and how many rows each")
    snapshot: str | None = Field(description="the log dataset folder, relative to the workspace")
    quarantine: str = Field(description="where quarantined rows are written, relative to the workspace")
    dvc_md5: str | None
    git_commit: str | None
    mlflow_run_id: str
    sources: list[str]
    run: str


class Window(Record):
    """The analysed time window (ISO-8601, end exclusive)."""

    start: str
    end: str
    days: float


class AlertResult(Record):
    """A breached alert rule."""

    metric: str
    value: float
    threshold: float
    rule: Literal["max", "min", "max_increase"]
    previous: float | None
    message: str


class OnlineJudgeResult(Record):
    """What the online judge did on a sample of production answers."""

    model: str
    judged: int
    failures: int
    calls: int
    cache_hits: int
    cost_usd: float
    stopped_by_budget: bool
    low_scores: int


class FlagQuality(Record):
    """How well one fast detector did on this traffic, as an LLM classifier judged a random sample of it.

    precision = P(LLM positive | fast positive), recall = P(fast positive | LLM positive), each with its
    Wilson 95% interval and the rows behind it; None when that denominator is 0.
    """

    flag: str
    metric: str
    sample: int = Field(description="random-sample rows the classifier labelled that this flag applies to")
    fast_positive: int
    llm_positive: int
    both_positive: int
    precision: float | None
    precision_ci: tuple[float, float] | None
    recall: float | None
    recall_ci: tuple[float, float] | None
    llm_rate: float | None = Field(description="the LLM-positive share of the sample: an estimate of the rate")
    llm_rate_ci: tuple[float, float] | None


class DetectorQualityResult(Record):
    """What the LLM classifier did: rows labelled (random sample, unsure rows), failures, spend, estimates."""

    model: str
    sample_rows: int = Field(description="rows drawn for the random sample")
    sample_labelled: int
    unsure_rows: int = Field(description="rows outside the sample some detector was unsure of")
    unsure_labelled: int
    failures: int = Field(description="rows whose call failed or never gave a readable verdict: no label")
    not_labelled_budget: int = Field(description="rows left unlabelled because the budget ran out")
    calls: int
    cache_hits: int
    cost_usd: float
    stopped_by_budget: bool
    flags: list[FlagQuality]


class ClusterResult(Record):
    """A group of similar failures, ranked by impact."""

    id: int
    label: str
    kinds: list[str]
    size: int
    impact: float
    thumbs_down_share: float
    mean_severity: float
    example_ids: list[str]
    topic: str | None = Field(default=None, description="what its users asked about (the label after the kinds)")
    labelled_by: Literal["llm", "terms"] = Field(
        default="terms", description="llm: topic named by analyze.label_model; terms: its distinctive words")
    examples: list[str] = Field(default_factory=list, description="2 of its questions, highest severity first")


class ClusterLabelsResult(Record):
    """What the cluster labeller (analyze.label_model) did; a fallback is a cluster labelled by its terms."""

    model: str
    labelled: int
    fallbacks: int
    calls: int
    cache_hits: int
    cost_usd: float
    stopped_by_budget: bool


class KbGapResult(Record):
    """Knowledge the app's documents lack: questions it abstained on, refused or failed (👎, low judge score) while
    retrieval was weak."""

    id: int
    topic: str = Field(description="the words that set its questions apart")
    questions: int = Field(description="logged interactions that hit it")
    users: int = Field(description="distinct users who hit it (interactions, where no user was logged)")
    kinds: dict[str, int] = Field(description="how its interactions failed: abstained, refused, thumbs_down, "
                                                "low_judge_score")
    examples: list[str] = Field(description="its most asked questions, most asked first")
    asked: list[str] = Field(default_factory=list, description="its distinct questions (at most 50), most asked first")
    best_document: str | None = Field(description="the existing document nearest to its questions")
    best_score: float | None = Field(description="that document's retrieval score (BM25, or the logged one)")
    key_term_coverage: float | None = Field(description="mean share of its questions' key terms the retrieved "
                                                        "documents contain")
    source: Literal["kb", "logged"] = Field(description="kb: retrieval re-run on the app's knowledge base; "
                                                        "logged: the retrieval metadata the app logged")


class WebhookResult(Record):
    """Whether the alerts reached the configured webhook."""

    sent: bool
    status: int | None = None
    error: str | None = None


class AnalyzeResult(Record):
    """An analyze run: the window's metrics, alerts, failures and their clusters."""

    app: str
    window: Window
    metrics: Metrics
    previous_metrics: Metrics | None
    by_prompt_version: dict[str, Metrics]
    by_model: dict[str, Metrics]
    daily: list[DailyMetrics] = Field(description="one entry per UTC day: its `day` and metrics")
    alerts: list[AlertResult]
    online_judge: OnlineJudgeResult | None
    detector_quality: DetectorQualityResult | None = None
    failures: int
    clusters: list[ClusterResult]
    cluster_labels: ClusterLabelsResult | None = None
    kb_gaps: list[KbGapResult] = Field(default_factory=list, description="knowledge-base gaps, most users first")
    failures_snapshot: str | None = None
    dvc_md5: str | None = None
    git_commit: str | None = None
    webhook: WebhookResult | None = None
    mlflow_run_id: str | None = None


class GrowthResult(Record):
    """What happened to the mined failures on their way into the golden set."""

    added: int
    duplicates: int
    near_duplicates: int
    capped: int
    unclustered: int
    pii_redacted: int
    optimize: int = Field(description="added cases the optimizer may see")
    holdout: int = Field(description="added cases held out for the decision")
    golden_set: str
    dvc_md5: str | None = None
    git_commit: str | None = None


class RejectedRevision(Record):
    """An optimizer revision that did not become a candidate, and why."""

    seed: int
    reason: str


class OptimizerUsage(Record):
    """The optimizer's calls."""

    calls: int
    cache_hits: int
    cost_usd: float


class CandidatesResult(Record):
    """The candidates an improve run evaluated."""

    generated: int
    hand_written: int
    rejected: list[RejectedRevision]
    optimizer: OptimizerUsage | None = Field(description="None when the optimizer was not asked")


class BestCandidate(Record):
    """The promoted candidate: the promotable one with the highest CI lower bound."""

    name: str
    prompt_hash: str
    ci_low: float | None
    diff: float | None
    prompt: str | None = Field(description="its prompt file, as YAML")


IMPROVE_OUTCOME_SCHEMA: Literal[1] = 1


class KbDraftResult(Record):
    """A knowledge-base article drafted for a gap: a file for a person to check, fill in and un-draft."""

    id: str
    path: str = Field(description="where it goes in the workspace: the app's knowledge-base folder")
    gap: int
    topic: str
    users: int
    questions: int
    examples: list[str]
    placeholders: int = Field(description="[[TODO: ...]] facts left for a person")
    text: str = Field(description="the file: front matter with `draft: true`, then the article")
    cases_to_relabel: list[str] = Field(description="golden cases expecting `abstain` the article would let the app "
                                                    "answer once merged (a person re-labels them)")


class KbDraftsResult(Record):
    """The drafts of an improve run, and what drafting cost."""

    drafts: list[KbDraftResult] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list, description="gaps with no usable draft, and why")
    optimizer: OptimizerUsage | None = None


class ImproveOutcome(Record):
    """An improve run's decision, saved for deploy (`.promptloop/improve/<app>.json`)."""

    schema_version: Literal[1] = IMPROVE_OUTCOME_SCHEMA
    app: str
    decision: Decision
    reasons: list[str]
    golden: GrowthResult
    candidates: CandidatesResult
    best: BestCandidate | None
    evaluation: EvaluationResult
    kb_drafts: KbDraftsResult | None = Field(default=None, description="None when no gap was drafted for")


class PullRequestLink(Record):
    """A pull request opened on GitHub."""

    url: str
    number: int


class ProposedBranch(Record):
    """The branch (and pull request) that proposes a candidate."""

    branch: str
    created: bool = Field(description="False when the same candidate was proposed before")
    version: int
    prompt_hash: str
    commit: str
    remote: str
    pull_request: PullRequestLink | None = None
    body_path: str | None = Field(default=None, description="the pull request body, when none was opened")
    compare: str | None = Field(default=None, description="where to see the change, when no pull request was opened")


class DeployResult(Record):
    """A deploy run: the proposal of the promoted candidate, or why there is none."""

    app: str
    decision: Decision
    reasons: list[str]
    branch: str | None = None
    created: bool = False
    version: int | None = None
    prompt_hash: str | None = None
    commit: str | None = None
    remote: str | None = None
    pull_request: PullRequestLink | None = None
    body_path: str | None = None
    compare: str | None = None
    challenger_version: int | None = Field(default=None, description="the app's registry version the alias "
                                           "`challenger` names: the prompt this pull request proposes")


class ReleaseResult(Record):
    """A release (or rollback): which version the `champion` alias now points at."""

    app: str
    version: int
    prompt_hash: str
    registry_version: int
    alias: str
    commit: str
    tag: str
    tag_created: bool
    rollback: bool
    released: bool = Field(description="False when it was released already and nothing changed")
    mlflow_run_id: str | None
    message: str


class LLMCalls(Record):
    """LLM calls a cycle made, and how many the cache answered."""

    calls: int = 0
    cache_hits: int = 0


class CycleResult(Record):
    """One turn of the loop: every stage's result (None for the stages it did not reach) and the decision."""

    app: str
    merged: str | None = Field(description="the merge commit of approved promotions, if any came in")
    resumed: str | None = Field(description="when the unsettled turn this one ran again had started")
    collect: CollectResult
    analyze: AnalyzeResult | None
    improve: ImproveOutcome | None
    deploy: DeployResult | None
    decision: CycleDecision
    reasons: list[str]
    llm: LLMCalls


class CheckResult(Record):
    """`promptloop check`: the edited prompt against the one on the base branch.

    With a change, `--json` shows the evaluation's keys at the top level next to these (as it always has).
    """

    app: str
    base: str
    changed: bool
    regressions: list[str]
    complete: bool
    report: str
    evaluation: EvaluationResult | None = None

    @model_serializer(mode="wrap")
    def _evaluation_inline(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        evaluation = data.pop("evaluation", None)
        return {**evaluation, **data} if isinstance(evaluation, dict) else data
