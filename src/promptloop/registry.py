"""The MLflow prompt registry: every evaluated prompt is a registered version (aliases come at release).

A prompt's templates use `{question}`/`{context}`; MLflow's use `{{question}}`/`{{context}}`, so they
are converted on the way in. A version carries the promptloop content hash as a tag, so the same
prompt is registered once however often it is evaluated.
"""

from __future__ import annotations

import json
import re
from typing import Any

from promptloop.prompts import PLACEHOLDERS, PromptVersion

HASH_TAG = "promptloop.content_hash"
_PLACEHOLDER = re.compile(r"\{(" + "|".join(sorted(PLACEHOLDERS)) + r")\}")


def mlflow_template(template: str) -> str:
    """`{question}` -> `{{question}}` (MLflow's variable syntax); other braces stay as they are."""
    return _PLACEHOLDER.sub(lambda m: "{{" + m.group(1) + "}}", template)


def find_version(client: Any, name: str, content_hash: str) -> int | None:
    """The registered version of `name` with this content hash, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_prompt_versions(name)
    except MlflowException:  # the prompt is not registered yet
        return None
    return next((int(v.version) for v in versions if v.tags.get(HASH_TAG) == content_hash), None)


def register(client: Any, name: str, prompt: PromptVersion) -> int:
    """Register `prompt` as a version of `name` (or find the version it already is); returns the version."""
    found = find_version(client, name, prompt.content_hash)
    if found is not None:
        return found
    template = [{"role": "system", "content": mlflow_template(prompt.system)},
                {"role": "user", "content": mlflow_template(prompt.user)}]
    known = {"temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty"}
    model_config = {"model_name": prompt.model, **{k: v for k, v in prompt.parameters.items() if k in known}}
    tags = {HASH_TAG: prompt.content_hash, "promptloop.version": str(prompt.version),
            "promptloop.parent": str(prompt.parent), "promptloop.parameters": json.dumps(prompt.parameters, sort_keys=True)}
    version = client.register_prompt(name=name, template=template, commit_message=prompt.changelog or f"v{prompt.version}",
                                     tags=tags, model_config=model_config)
    return int(version.version)


def link_to_run(client: Any, run_id: str, name: str, version: int) -> None:
    """Show the prompt version on the run's page, as `MlflowClient.link_prompt_version_to_run` does.

    That method reads the process-global tracking URI; we write the same tag through our client so
    the workspace's store is used and no global state is touched.
    """
    from mlflow.tracing.utils.prompt import update_linked_prompts_tag
    from mlflow.tracing.constant import TraceTagKey

    current = client.get_run(run_id).data.tags.get(TraceTagKey.LINKED_PROMPTS)
    client.set_tag(run_id, TraceTagKey.LINKED_PROMPTS,
                   update_linked_prompts_tag(current, [client.get_prompt_version(name, version)]))
