"""Prompt versions are YAML files; git is their history and a content hash names them.

Two forms load. The current one is MLflow's: `messages` (any number, any roles, few-shot examples
included) whose `{{ variable }}` placeholders are whatever the app's inputs hold, so a registered
version renders with MLflow's own `format()`. The first form, `system:` + `user:` templates with the
single-brace placeholders `{question}` and `{context}`, keeps loading and renders as it always did.
Rendering substitutes text, never interprets it: user text holding braces stays as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptloop.core.config import check_identifier, read_yaml
from promptloop.core.errors import InputError, input_error_from_validation

PLACEHOLDERS = frozenset({"question", "context"})  # of the system/user form
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# MLflow's prompt-registry syntax: `{{ name }}`, spaces optional.
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
HISTORY = "history"  # the input that holds a conversation's earlier turns
# What a prompt file may ask of the model: sampling only. Where a call goes and with which key is
# params.yaml's business (`llm.models`): a prompt or candidate that could set `api_base` would send
# the real key to any host its author names, and a candidate is text an optimizer or a PR wrote.
SAMPLING_PARAMETERS = frozenset({
    "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stop", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs", "top_logprobs", "n", "response_format",
    "reasoning_effort",
})
Message = dict[str, str]


class MissingVariable(ValueError):
    """A case's inputs lack a variable the prompt uses."""


class PromptMessage(BaseModel):
    """One message template of a prompt version."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: str


class PromptVersion(BaseModel):
    """One version of an app's prompt: model, sampling parameters and message templates."""

    model_config = ConfigDict(extra="forbid")

    app: str
    version: int = Field(ge=1)
    parent: int | None = None
    model: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    changelog: str = ""
    system: str | None = Field(default=None, min_length=1, description="first form: the system template")
    user: str | None = Field(default=None, description="first form: the user template ({question} by default)")
    messages: list[PromptMessage] | None = Field(default=None, min_length=1,
                                                 description="message templates with {{ variable }} placeholders")
    response_format: dict[str, Any] | None = Field(default=None, description="a JSON schema the answer follows")

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
    def _known_placeholders(cls, template: str | None) -> str | None:
        unknown = set(_PLACEHOLDER.findall(template or "")) - PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; the system/user form knows "
                             f"{sorted(PLACEHOLDERS)} only: write `messages` with {{{{ variable }}}} placeholders "
                             "for any other variable")
        return template

    @model_validator(mode="after")
    def _one_form(self) -> PromptVersion:
        if (self.messages is None) == (self.system is None):
            raise ValueError("a prompt has either `messages` or `system` (+ `user`), not both and not neither")
        if self.messages is None and self.user is None:
            self.user = "{question}"
        if self.messages is not None and self.user is not None:
            raise ValueError("`user` belongs to the system/user form; with `messages`, put it in a message")
        return self

    @property
    def legacy(self) -> bool:
        """The first form: system + user templates with `{question}`/`{context}`."""
        return self.messages is None

    @property
    def templates(self) -> list[Message]:
        """The message templates, in order."""
        if self.messages is None:
            return [{"role": "system", "content": self.system or ""}, {"role": "user", "content": self.user or ""}]
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def variables(self) -> frozenset[str]:
        """The inputs the templates use."""
        return frozenset(name for t in self.templates for name in self.variables_in(t["content"]))

    def variables_in(self, template: str) -> frozenset[str]:
        """The variables `template` uses, in this prompt's placeholder syntax."""
        return frozenset((_PLACEHOLDER if self.legacy else _VARIABLE).findall(template))

    def placeholder(self, name: str) -> str:
        """How variable `name` is written in this prompt's templates."""
        return "{" + name + "}" if self.legacy else "{{ " + name + " }}"

    @property
    def instructions(self) -> str:
        """The system message: what an optimizer rewrites (empty when the prompt has none)."""
        return next((t["content"] for t in self.templates if t["role"] == "system"), "")

    @property
    def text(self) -> str:
        """Every template as one text (diffs, quote checks)."""
        if self.legacy:
            return f"{self.system}\n{self.user}\n"
        return "".join(f"[{t['role']}]\n{t['content']}\n" for t in self.templates)

    def with_instructions(self, system: str, **update: Any) -> PromptVersion:
        """A copy whose system message is `system` (added first when there was none)."""
        if self.legacy:
            return self.model_copy(update={"system": system, **update})
        assert self.messages is not None
        messages = [m.model_copy() for m in self.messages]
        first = next((m for m in messages if m.role == "system"), None)
        if first is None:
            messages.insert(0, PromptMessage(role="system", content=system))
        else:
            first.content = system
        return PromptVersion.model_validate({**self.model_dump(), "messages": [m.model_dump() for m in messages],
                                             **update})

    @property
    def content_hash(self) -> str:
        """sha256 of what changes the model's behaviour (not the changelog or lineage)."""
        content: dict[str, Any] = {"model": self.model, "parameters": self.parameters}
        if self.legacy:
            content.update(system=self.system, user=self.user)
        else:
            content.update(messages=self.templates, response_format=self.response_format)
        return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def missing_variables(self, inputs: Mapping[str, object]) -> list[str]:
        """The variables the templates use that `inputs` lacks (a legacy prompt's `context` may be left out)."""
        return sorted(self.variables - set(inputs) - ({"context"} if self.legacy else set()))

    def render(self, inputs: Mapping[str, object]) -> list[Message]:
        """Chat messages for one case's inputs; input text is substituted, never interpreted.

        A missing variable raises MissingVariable. `inputs["history"]` (earlier turns, each
        `{role, content}`) goes in as messages before the last user message, unless a template
        places it itself.
        """
        values = dict(inputs)
        if self.legacy:
            values.setdefault("context", "")
        missing = self.missing_variables(values)
        if missing:
            used = ", ".join(map(self.placeholder, missing))
            raise MissingVariable(f"prompt v{self.version} of {self.app} uses {used} but the case's inputs hold only "
                                  f"{sorted(values) or 'nothing'}")
        pattern = _PLACEHOLDER if self.legacy else _VARIABLE
        fill = lambda template: pattern.sub(lambda m: input_text(values[m.group(1)]), template)  # noqa: E731
        messages = [{"role": t["role"], "content": fill(t["content"])} for t in self.templates]
        history = values.get(HISTORY)
        if HISTORY in self.variables or not isinstance(history, list) or not history:
            return messages
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages))
        turns = [{"role": str(t["role"]), "content": str(t["content"])} for t in history]
        return messages[:last_user] + turns + messages[last_user:]


def input_text(value: object) -> str:
    """An input as template text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def load_prompt(path: str | Path) -> PromptVersion:
    """Read and validate a prompt YAML file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prompt file not found")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping with app, version, model and messages (or system and user)")
    try:
        return PromptVersion.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(path, exc) from None


def dump_prompt(prompt: PromptVersion) -> str:
    """YAML text of a prompt version, templates as readable block scalars; unused fields left out."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    data = prompt.model_dump()
    for unused in ("system", "user", "messages", "response_format"):
        if data[unused] is None:
            del data[unused]
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
