"""Prompt versions are YAML files; git is their history and a content hash names them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptloop.core.config import check_identifier, read_yaml
from promptloop.core.errors import InputError, input_error_from_validation

PLACEHOLDERS = frozenset({"question", "context"})
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# What a prompt file may ask of the model: sampling only. Where a call goes and with which key is
# params.yaml's business (`llm.models`): a prompt or candidate that could set `api_base` would send
# the real key to any host its author names, and a candidate is text an optimizer or a PR wrote.
SAMPLING_PARAMETERS = frozenset({
    "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stop", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs", "top_logprobs", "n", "response_format",
    "reasoning_effort",
})


class PromptVersion(BaseModel):
    """One version of an app's prompt: model, parameters, system and user templates."""

    model_config = ConfigDict(extra="forbid")

    app: str
    version: int = Field(ge=1)
    parent: int | None = None
    model: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    changelog: str = ""
    system: str = Field(min_length=1)
    user: str = "{question}"

    @field_validator("app")
    @classmethod
    def _safe_app_name(cls, app: str) -> str:
        return check_identifier(app, "an app name")

    @field_validator("parameters")
    @classmethod
    def _sampling_only(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        refused = sorted(set(parameters) - SAMPLING_PARAMETERS)
        if refused:
            raise ValueError(f"{', '.join(refused)} not allowed: a prompt holds sampling parameters only "
                             f"({', '.join(sorted(SAMPLING_PARAMETERS))}); where a model is called and with which "
                             "key is set in params.yaml llm.models")
        return parameters

    @field_validator("system", "user")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        unknown = set(_PLACEHOLDER.findall(template)) - PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(PLACEHOLDERS)}")
        return template

    @property
    def content_hash(self) -> str:
        """sha256 of what changes the model's behaviour (not the changelog or lineage)."""
        content = {"model": self.model, "parameters": self.parameters, "system": self.system, "user": self.user}
        return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def render(self, question: str, context: str = "") -> list[dict[str, str]]:
        """Chat messages for one question; user text is substituted, never interpreted."""
        values = {"question": question, "context": context}
        fill = lambda template: _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)  # noqa: E731
        return [{"role": "system", "content": fill(self.system)}, {"role": "user", "content": fill(self.user)}]


def load_prompt(path: str | Path) -> PromptVersion:
    """Read and validate a prompt YAML file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prompt file not found")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping with app, version, model, system, user")
    try:
        return PromptVersion.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(path, exc) from None


def dump_prompt(prompt: PromptVersion) -> str:
    """YAML text of a prompt version, templates as readable block scalars."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(prompt.model_dump(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
