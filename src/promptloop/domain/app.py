"""The application being improved, as a prompt template: retrieval into `context`, then one model call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promptloop.domain.kb import Retriever, format_context
from promptloop.domain.prompts import Message, PromptVersion
from promptloop.llm.client import Completion, acomplete

if TYPE_CHECKING:
    import litellm as litellm_module

Inputs = Mapping[str, object]


def as_inputs(question: str | Inputs) -> dict[str, object]:
    """A bare question as the inputs `{question: ...}`."""
    return {"question": question} if isinstance(question, str) else dict(question)


def unfilled_variables(prompt: PromptVersion, source: str, inputs: Inputs, target: str,
                       retrieves: bool) -> str | None:
    """Why a case with `inputs` cannot fill `prompt` (read from `source`), None when it can, where promptloop
    renders the prompt: the template target (which fills `context` when it `retrieves`) and an HTTP target.
    A `python:` app renders it itself and may add variables of its own."""
    if target.startswith("python:"):
        return None
    given = as_inputs(inputs)
    missing = prompt.missing_variables({**given, **({"context": ""} if target == "template" and retrieves else {})})
    if not missing:
        return None
    placeholders = ", ".join(map(prompt.placeholder, missing))
    return f"no {placeholders}, which {source} uses (its inputs hold {sorted(given) or 'nothing'})"


def retrieval_query(inputs: Inputs) -> str:
    """What the retriever searches for: the question, else the last user turn."""
    question = inputs.get("question")
    if isinstance(question, str):
        return question
    history = inputs.get("history")
    turns = [t["content"] for t in history if t.get("role") == "user"] if isinstance(history, list) else []
    return str(turns[-1]) if turns else ""


@dataclass
class App:
    """An app = a prompt version, the model it runs on, and its retriever (if it has a KB)."""

    name: str
    prompt: PromptVersion
    model: str
    retriever: Retriever | None = None
    top_k: int = 3

    def messages(self, question: str | Inputs) -> tuple[list[Message], list[str]]:
        """The chat messages for one case's inputs (or a bare question) and the ids of the documents
        retrieved into them; the retriever fills `context` unless the inputs hold one."""
        inputs = as_inputs(question)
        hits = self.retriever.search(retrieval_query(inputs), self.top_k) if self.retriever else []
        if self.retriever is not None and "context" not in inputs:
            inputs["context"] = format_context(hits)
        return self.prompt.render(inputs), [h.doc.id for h in hits]

    async def ask(self, litellm: litellm_module, question: str | Inputs, timeout_s: float, api_key: str | None = None,
                  **overrides: Any) -> tuple[Completion, list[str]]:
        """Answer one question; returns the completion and the retrieved document ids."""
        messages, retrieved = self.messages(question)
        parameters = {**self.prompt.parameters, **overrides}
        return await acomplete(litellm, self.model, messages, timeout_s, api_key, **parameters), retrieved
