"""The MLflow prompt registry: the app's prompt holds its baseline, winners and releases; aliases name two.

`<app>` holds only the prompts a person would call versions of the app: the baseline of each
evaluation, the candidate an evaluation promoted (the winner), and what `release` made production.
Every other evaluated candidate is a version of `<app>-candidates`, so `<app>`'s latest version is
never a rejected candidate. Two aliases of `<app>`: `champion` is the version the app serves (moved by
`release`), `challenger` the version proposed in the open pull request (moved by `deploy`). A version's
commit message is its changelog and names its evaluation run, also kept as a tag.

A `messages` prompt is in MLflow's syntax already (`{{ variable }}`); a first-form prompt's
`{question}`/`{context}` are converted to `{{question}}`/`{{context}}` on the way in and back on the way
out. A version carries the promptloop content hash as a tag, so the same prompt is registered once
however often it is evaluated, and its form and lineage (version, parent, parameters, changelog) as
tags, so it can be rebuilt as a `PromptVersion`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from promptloop.core.config import CANDIDATES_SUFFIX
from promptloop.domain.prompts import PLACEHOLDERS, PromptVersion
from promptloop.workspace.tracking import tracking_client

HASH_TAG = "promptloop.content_hash"
VERSION_TAG = "promptloop.version"
PARENT_TAG = "promptloop.parent"
PARAMETERS_TAG = "promptloop.parameters"
CHANGELOG_TAG = "promptloop.changelog"
EVALUATION_RUN_TAG = "promptloop.evaluation_run"  # the MLflow run that evaluated this version
FORM_TAG = "promptloop.form"  # how the prompt file is written: system-user (first form) or messages
LEGACY_FORM = "system-user"
_PLACEHOLDER = re.compile(r"\{(" + "|".join(sorted(PLACEHOLDERS)) + r")\}")
_MLFLOW_PLACEHOLDER = re.compile(r"\{\{(" + "|".join(sorted(PLACEHOLDERS)) + r")\}\}")


def mlflow_template(template: str) -> str:
    """`{question}` -> `{{question}}` (MLflow's variable syntax); other braces stay as they are."""
    return _PLACEHOLDER.sub(lambda m: "{{" + m.group(1) + "}}", template)


def promptloop_template(template: str) -> str:
    """`{{question}}` -> `{question}`: the inverse of `mlflow_template`."""
    return _MLFLOW_PLACEHOLDER.sub(lambda m: "{" + m.group(1) + "}", template)


def find_version(client: Any, name: str, content_hash: str) -> int | None:
    """The registered version of `name` with this content hash, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_prompt_versions(name)
    except MlflowException:  # the prompt is not registered yet
        return None
    return next((int(v.version) for v in versions if v.tags.get(HASH_TAG) == content_hash), None)


def candidates_name(app: str) -> str:
    """The registry prompt that holds an app's evaluated candidates that did not win."""
    return f"{app}{CANDIDATES_SUFFIX}"


def commit_message(prompt: PromptVersion, evaluation_run: str | None) -> str:
    """A version's commit message: its changelog, then the evaluation run that measured it."""
    changelog = prompt.changelog or f"v{prompt.version}"
    return changelog if evaluation_run is None else f"{changelog}\n\nevaluation run: {evaluation_run}"


def register(client: Any, name: str, prompt: PromptVersion, evaluation_run: str | None = None) -> int:
    """Register `prompt` as a version of `name` (or find the version it already is); returns the version.

    A new version's commit message and tags name `evaluation_run`; a version found keeps the run it was
    first registered with (MLflow's commit messages cannot change).
    """
    found = find_version(client, name, prompt.content_hash)
    if found is not None:
        return found
    template = [{"role": t["role"], "content": mlflow_template(t["content"]) if prompt.legacy else t["content"]}
                for t in prompt.templates]
    known = {"temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty"}
    model_config = {"model_name": prompt.model, **{k: v for k, v in prompt.parameters.items() if k in known}}
    tags = {HASH_TAG: prompt.content_hash, FORM_TAG: LEGACY_FORM if prompt.legacy else "messages",
            **lineage_tags(prompt),
            PARAMETERS_TAG: json.dumps(prompt.parameters, sort_keys=True),
            **({EVALUATION_RUN_TAG: evaluation_run} if evaluation_run else {})}
    version = client.register_prompt(
        name=name,
        template=template,
        commit_message=commit_message(prompt, evaluation_run),
        tags=tags,
        response_format=prompt.response_format,
        model_config=model_config,
    )
    return int(version.version)


def lineage_tags(prompt: PromptVersion) -> dict[str, str]:
    """Version, parent and changelog: what the content hash leaves out, stored to rebuild the prompt."""
    return {VERSION_TAG: str(prompt.version), PARENT_TAG: str(prompt.parent), CHANGELOG_TAG: prompt.changelog}


def set_lineage(
    client: Any, name: str, version: int, prompt: PromptVersion, extra: dict[str, str] | None = None
) -> None:
    """Overwrite a version's lineage tags with `prompt`'s (plus `extra` tags).

    The same content may have been registered earlier under another number (an evaluated candidate
    file says v2, the merged prompt says v5); the released lineage is the one that counts.
    """
    for key, value in {**lineage_tags(prompt), **(extra or {})}.items():
        client.set_prompt_version_tag(name, version, key, value)


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The registry version `alias` points at, or None when the prompt or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_prompt_version_by_alias(name, alias)
    except MlflowException as exc:
        # an unknown prompt is RESOURCE_DOES_NOT_EXIST; an unknown alias INVALID_PARAMETER_VALUE (SQL store)
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def prompt_from_version(name: str, entity: Any) -> PromptVersion:
    """Rebuild the `PromptVersion` a registry version was registered from.

    Raises ValueError when the entity is not one promptloop registered or does not rebuild to its
    content hash (then it must not be served as if it were that prompt).
    """
    template = entity.template
    if not isinstance(template, list):
        raise ValueError(f"registry prompt {name} v{entity.version} is a text prompt, not system + user messages")
    by_role = {message.get("role"): message.get("content", "") for message in template}
    tags = entity.tags or {}
    legacy = tags.get(FORM_TAG, LEGACY_FORM) == LEGACY_FORM
    model_config = entity.model_config or {}
    parameters = tags.get(PARAMETERS_TAG)
    parent = tags.get(PARENT_TAG, "None")
    prompt = PromptVersion(
        app=name,
        version=int(tags.get(VERSION_TAG, entity.version)),
        parent=None if parent in ("None", "") else int(parent),
        model=model_config.get("model_name", ""),
        parameters=json.loads(parameters)
        if parameters
        else {k: v for k, v in model_config.items() if k != "model_name"},
        changelog=tags.get(CHANGELOG_TAG, entity.commit_message or ""),
        **({"system": promptloop_template(by_role.get("system", "")),
            "user": promptloop_template(by_role.get("user", "{{question}}"))} if legacy else
           {"messages": [{"role": m.get("role"), "content": m.get("content", "")} for m in template],
            "response_format": entity.response_format}),
    )
    expected = tags.get(HASH_TAG)
    if expected and prompt.content_hash != expected:
        raise ValueError(
            f"registry prompt {name} v{entity.version} does not rebuild to its content hash {expected[:8]}"
        )
    return prompt


def link_to_run(client: Any, run_id: str, name: str, version: int) -> None:
    """Show the prompt version on the run's page, as `MlflowClient.link_prompt_version_to_run` does.

    That method reads the process-global tracking URI; we write the same tag through our client so
    the workspace's store is used and no global state is touched.
    """
    from mlflow.tracing.constant import TraceTagKey
    from mlflow.tracing.utils.prompt import update_linked_prompts_tag

    current = client.get_run(run_id).data.tags.get(TraceTagKey.LINKED_PROMPTS)
    client.set_tag(run_id, TraceTagKey.LINKED_PROMPTS,
                   update_linked_prompts_tag(current, [client.get_prompt_version(name, version)]))


# The alias of the version the app serves; `release` moves it.
CHAMPION = "champion"
PRODUCTION = CHAMPION  # the name the release code and its callers use for it
# The alias of the version proposed in the open pull request; `deploy` moves it, `release` clears it.
CHALLENGER = "challenger"
# What releases before `champion` set; read when a registry has no `champion` yet.
LEGACY_PRODUCTION = "production"


def champion_version(client: Any, app: str) -> Any | None:
    """The registry version the app serves: `champion`, else the older `production` alias, else None."""
    return version_by_alias(client, app, CHAMPION) or version_by_alias(client, app, LEGACY_PRODUCTION)


def point_challenger(client: Any, app: str, version: int) -> None:
    """Name `version` the challenger: the prompt proposed in the open pull request."""
    client.set_prompt_alias(app, CHALLENGER, version)


def name_challenger(tracking_uri: str, app: str, prompt: PromptVersion, evaluation_run: str | None) -> int:
    """Point `challenger` at `prompt`'s version of the app's prompt (registered now if evaluate did not);
    returns the registry version."""
    client = tracking_client(tracking_uri)
    version = register(client, app, prompt, evaluation_run)
    point_challenger(client, app, version)
    return version


def clear_challenger(client: Any, app: str, released: int) -> None:
    """Remove `challenger` when it names the version just released (its pull request is merged)."""
    current = version_by_alias(client, app, CHALLENGER)
    if current is not None and int(current.version) == released:
        client.delete_prompt_alias(app, CHALLENGER)


def production_prompt(tracking_uri: str, app: str) -> PromptVersion | None:
    """The prompt the `champion` alias points at, or None when there is none (or no registry yet).

    Raises when the registry cannot be read or the version does not rebuild to its content hash.
    """
    if not tracking_store_exists(tracking_uri):
        return None  # opening a client would create an empty store here: a side effect of a read
    entity = champion_version(tracking_client(tracking_uri), app)
    return None if entity is None else prompt_from_version(app, entity)


def tracking_store_exists(tracking_uri: str) -> bool:
    """False for a sqlite store whose file is not there yet; any other store is asked."""
    prefix = "sqlite:///"
    return not tracking_uri.startswith(prefix) or Path(tracking_uri[len(prefix):]).is_file()
