"""A workspace: the git + DVC + MLflow folder promptloop works in (`promptloop init`)."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from promptloop.core.config import PARAMS_FILE, AppSettings, Params, load_params
from promptloop.core.errors import InputError
from promptloop.domain.app import App
from promptloop.domain.kb import Retriever, load_kb
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.llm.client import ApiKeys, litellm_module_configured
from promptloop.llm.prices import PriceLookup, price_lookup
from promptloop.llm.runner import ResponseCache, RetryPolicy, Runner
from promptloop.workspace import registry

TEMPLATE_ITEMS = ("prompts", "datasets", "judges", "apps", "expectations", "flows", "params.yaml", "dvc.yaml",
                  "prefect.yaml")
REMOTE_DIR = "remote.git"
DVC_REMOTE_DIR = "dvc-remote"
WORKSPACE_GITIGNORE = """\
# local stand-ins for the git and DVC remotes, and the tracking store
/remote.git/
/dvc-remote/
/mlflow.db
# SQLite's side files while the store is written (else a deploy would see a dirty tree)
/mlflow.db-journal
/mlflow.db-wal
/mlflow.db-shm
/mlruns/
/mlartifacts/
# raw production logs hold PII until collect redacts them
/incoming/
# the key that hashes user ids
/.promptloop/
"""
COMMITTER = ("promptloop", "promptloop@localhost")
# The datasets under an app's data_dir (params `apps.<app>.data_dir`), each a folder DVC versions.
LOGS = "logs"  # the rows collect kept; analyze reads them
QUARANTINE = "quarantine"  # the rows collect did not keep, with the reasons
FAILURES = "failures"  # what analyze mined; improve reads it

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """A workspace folder and its validated params.yaml."""

    root: Path
    params: Params

    def path(self, relative: Path | str) -> Path:
        """A path from params.yaml, relative to the workspace root."""
        return self.root / relative

    def app_settings(self, name: str) -> AppSettings:
        return self.params.app(name, self.root / PARAMS_FILE)

    def load_app(self, name: str) -> App:
        """The app `name` with its current production prompt and its retriever."""
        settings = self.app_settings(name)
        prompt = self.production_prompt(name) or load_prompt(self.path(settings.prompt))
        retriever = Retriever(load_kb(self.path(settings.knowledge_base))) if settings.knowledge_base else None
        return App(name, prompt, settings.model or prompt.model, retriever, settings.top_k)

    def production_prompt(self, name: str) -> PromptVersion | None:
        """The prompt the registry alias `champion` points at; None when there is no alias or the
        registry cannot be read (the caller then serves the prompt file)."""
        try:
            return registry.production_prompt(self.tracking_uri, name)
        except Exception as exc:  # any registry failure (store, schema, a version that does not rebuild)
            # falls back to the file: the app keeps answering, and the warning says why
            log.warning("prompt registry of %s unreadable (%s: %s); using %s", name, type(exc).__name__, exc,
                        self.app_settings(name).prompt)
            return None

    def open_runner(self, max_usd: float | None = None, max_calls: int | None = None, processes: int = 1,
                    cache: ResponseCache | None = None) -> Runner:
        """The workspace's runner: its response cache (or `cache`), the llm settings and a budget (default:
        evaluate's).

        One of `processes` worker processes gets that share of the concurrency and of the rate limits.
        """
        llm, settings = self.params.llm, self.params.evaluate
        params_file = str(self.root / PARAMS_FILE)
        return Runner(
            litellm_module_configured(llm, params_file),
            cache or ResponseCache(self.path(llm.cache) if llm.cache else Path(":memory:")),
            max_concurrency=max(1, math.ceil(llm.max_concurrency / processes)), timeout_s=llm.timeout_s,
            retry=RetryPolicy(max_retries=llm.max_retries, base_delay_s=llm.retry_base_delay_s,
                              max_repairs=llm.max_repairs),
            max_usd=settings.budget_usd if max_usd is None else max_usd,
            max_calls=settings.budget_calls if max_calls is None else max_calls, seed=settings.seed,
            api_keys=ApiKeys(llm, params_file), llm=llm, share=1 / processes,
        )

    def price_lookup(self) -> PriceLookup:
        """Model prices from params.yaml `llm.models` (name or glob), then litellm's price map."""
        return price_lookup(self.params.llm, str(self.root / PARAMS_FILE))

    def experiment_name(self, app: str) -> str:
        """The MLflow experiment of app `app`."""
        return f"{self.params.tracking.experiment_prefix}{app}"

    @property
    def artifact_root(self) -> Path:
        """Where MLflow artifacts of this workspace live (inside it, git-ignored)."""
        return self.root / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI, a relative sqlite path resolved inside the workspace."""
        uri = self.params.tracking.uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
            return prefix + str((self.root / uri[len(prefix) :]).resolve())
        return uri


def open_workspace(root: Path | str) -> Workspace:
    """Load the workspace at `root` (its params.yaml must exist and validate)."""
    root = Path(root).resolve()
    return Workspace(root, load_params(root / PARAMS_FILE))


def template_root() -> Path:
    """The sample workspace: packaged in a wheel, or the source checkout for an editable install."""
    packaged = resources.files("promptloop") / "_template"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / PARAMS_FILE).is_file():
        return checkout
    raise InputError(checkout, "cannot find the sample workspace (params.yaml, prompts/, datasets/)")


def copy_template(dest: Path, template: Path) -> None:
    """Copy the sample workspace files into an empty `dest`."""
    for item in TEMPLATE_ITEMS:
        source = template / item
        if source.is_dir():
            shutil.copytree(source, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, dest / item)
    (dest / ".gitignore").write_text(WORKSPACE_GITIGNORE, encoding="utf-8")


def check_empty_target(dest: Path) -> None:
    """`init` never writes into a folder that already holds something."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(dest, "target exists and is not an empty folder; choose another --dir")


def with_overrides(workspace: Workspace, overrides: dict[str, dict[str, Any]]) -> Workspace:
    """The workspace with some params.yaml values replaced for one run (flow parameters), validated again.

    `overrides` maps a section to its changed keys, e.g. {"improve": {"candidates": 5}}; None values are
    left out, so an unset flow parameter keeps params.yaml's value.
    """
    from promptloop.core.config import parse_params

    data = workspace.params.model_dump(mode="json")
    for section, values in overrides.items():
        data[section] = {**data[section], **{k: v for k, v in values.items() if v is not None}}
    return Workspace(workspace.root, parse_params(data, f"{workspace.root / PARAMS_FILE} (with flow parameters)"))


