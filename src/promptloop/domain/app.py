"""The application being improved: retrieval into the prompt's {context}, then one model call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promptloop.domain.kb import Retriever, format_context
from promptloop.domain.prompts import PromptVersion
from promptloop.llm.client import Completion, acomplete

if TYPE_CHECKING:
    import litellm as litellm_module


@dataclass
class App:
    """An app = a prompt version, the model it runs on, and its retriever (if it has a KB)."""

    name: str
    prompt: PromptVersion
    model: str
    retriever: Retriever | None = None
    top_k: int = 3

    def messages(self, question: str) -> tuple[list[dict[str, str]], list[str]]:
        """The chat messages for `question` and the ids of the documents retrieved into them."""
        hits = self.retriever.search(question, self.top_k) if self.retriever else []
        return self.prompt.render(question, format_context(hits)), [h.doc.id for h in hits]

    async def ask(
        self, litellm: litellm_module, question: str, timeout_s: float, api_key: str | None = None, **overrides: Any
    ) -> tuple[Completion, list[str]]:
        """Answer one question; returns the completion and the retrieved document ids."""
        messages, retrieved = self.messages(question)
        parameters = {**self.prompt.parameters, **overrides}
        return await acomplete(litellm, self.model, messages, timeout_s, api_key, **parameters), retrieved
