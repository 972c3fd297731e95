"""Preflight: everything a run needs from its models, checked before the first paid call.

Each model the run will use has a key (as `llm.models` says, else as litellm looks for it), a price
whenever a budget is set (a model priced $0 would let any budget pass), and a locality the app's
data policy allows; with `probe`, each also answers a 1-token request. A run that may deploy
starts from a clean working tree. Any failure is an InputError (exit 2) naming the model and the
fix, raised before anything was spent or written.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import git

from promptloop.core.config import MODELS_FIELD, PARAMS_FILE
from promptloop.core.errors import InputError
from promptloop.core.secrets import redact_secrets
from promptloop.domain.prompts import load_prompt
from promptloop.llm.client import ApiKeys, acomplete, call_options, litellm_module_configured
from promptloop.llm.prices import model_prices
from promptloop.workspace.repository import uncommitted_changes
from promptloop.workspace.workspace import Workspace

PROBE_TIMEOUT_S = 60.0


def app_models(workspace: Workspace, app: str, *, optimizer: bool = False,
               online_judge: bool = False) -> dict[str, str]:
    """role -> model of the models a stage of `app` calls: the app's (its prompt file's, unless the app
    overrides it), the judge's, and as asked the optimizer's and analyze's (online judge, classifier)."""
    params, settings = workspace.params, workspace.app_settings(app)
    roles = {"app": settings.model or load_prompt(workspace.path(settings.prompt)).model,
             "judge": params.evaluate.judge_model}
    if optimizer:
        roles["optimizer"] = params.improve.optimizer_model
    if online_judge and params.analyze.judge_model:
        roles["online judge"] = params.analyze.judge_model
    if online_judge and params.analyze.classifier_model:  # analyze's LLM classifier runs with the online judge
        roles["classifier"] = params.analyze.classifier_model
    return roles


def preflight(workspace: Workspace, app: str, roles: Mapping[str, str], *, budget_usd: float | None = None,
              probe: bool = False, may_deploy: bool = False) -> None:
    """Check the run's models (role -> model) and, when it may deploy, the working tree; raise InputError."""
    source = str(workspace.root / PARAMS_FILE)
    litellm = litellm_module_configured(workspace.params.llm, source)
    keys = ApiKeys(workspace.params.llm, source)
    for role, model in roles.items():
        check_locality(workspace, app, role, model)
        check_key(litellm, keys, workspace, role, model)
        if budget_usd is not None and math.isfinite(budget_usd):
            check_price(litellm, workspace, role, model, budget_usd)
    if probe:
        for role, model in roles.items():
            probe_model(litellm, keys, workspace, role, model)
    if may_deploy:
        check_clean_tree(workspace)


def check_locality(workspace: Workspace, app: str, role: str, model: str) -> None:
    """A local-only app's data goes to local models only."""
    if workspace.app_settings(app).data_policy != "local-only":
        return
    locality = workspace.params.llm.locality_of(model)
    if locality != "local":
        raise InputError(workspace.root / PARAMS_FILE,
                         f"app {app!r} is local-only (its data must stay on this machine) but the {role} model "
                         f"{model!r} is {'hosted' if locality == 'hosted' else 'not known to be local'}: use a local "
                         f"model, or mark this one `locality: local` in llm.models if it runs here",
                         f"apps.{app}.data_policy")


def check_key(litellm: Any, keys: ApiKeys, workspace: Workspace, role: str, model: str) -> None:
    """The model's key (and base URL, API version) is there: from `llm.models`, else litellm's variables."""
    key = keys.for_model(model)  # an InputError naming the variable or block when its source is empty
    entry = workspace.params.llm.model_settings(model)
    found = litellm.validate_environment(model=model, api_key=key, api_base=entry.api_base,
                                         api_version=entry.api_version)
    missing = list(found.get("missing_keys") or [])
    if missing:
        raise InputError(workspace.root / PARAMS_FILE,
                         f"the {role} model {model!r} needs {', '.join(missing)}: export it, or give the model an "
                         f"entry with api_key (env:VARIABLE), api_base or api_version",
                         f"{MODELS_FIELD}.{model}")


def check_price(litellm: Any, workspace: Workspace, role: str, model: str, budget_usd: float) -> None:
    """A budget in USD needs every model's price: without one its calls would cost $0 and never stop the run."""
    if workspace.params.llm.model_settings(model).price_per_token is not None:
        return
    if model_prices([model], litellm):
        return
    raise InputError(workspace.root / PARAMS_FILE,
                     f"the {role} model {model!r} has no price, so a budget of ${budget_usd:g} cannot be kept: add "
                     "input_per_mtok and output_per_mtok to its llm.models entry",
                     f"{MODELS_FIELD}.{model}")


def probe_model(litellm: Any, keys: ApiKeys, workspace: Workspace, role: str, model: str) -> None:
    """One 1-token request (not cached, not counted): the model answers with this key at this address."""
    settings = workspace.params.llm
    messages = [{"role": "user", "content": "Reply with OK."}]
    try:
        # With the parameters every real call carries (a provider that refuses `seed` fails here, not later).
        asyncio.run(acomplete(litellm, model, messages, PROBE_TIMEOUT_S, keys.for_model(model), num_retries=0,
                              max_tokens=1, temperature=0, seed=0, **call_options(settings, model)))
    except InputError:
        raise
    except Exception as exc:  # any provider error: the run would fail the same way, after spending
        raise InputError(workspace.root / PARAMS_FILE,
                         redact_secrets(f"the {role} model {model!r} did not answer a 1-token probe: "
                                        f"{type(exc).__name__}: {exc}"),
                         f"{MODELS_FIELD}.{model}") from None


def check_clean_tree(workspace: Workspace) -> None:
    """What a pull request proposes must be what was evaluated and committed: no uncommitted changes."""
    listed = uncommitted_changes(git.Repo(workspace.root))
    if listed is not None:
        raise InputError(workspace.root, f"the working tree has uncommitted changes ({listed}): commit or stash them "
                                         "first, so the run evaluates and proposes what is committed")
