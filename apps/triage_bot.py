"""triage-bot, the second sample app: a support ticket in, JSON `{"category", "priority", "reply"}` out.

promptloop calls it as the target `python:apps.triage_bot:answer` (params.yaml `apps.triage-bot.target`)
with the prompt version under evaluation and one case's inputs (`ticket`, `customer_tier`,
`product`). It makes two model calls through `prompt.acomplete`, so promptloop's cache, retries,
budget and keys apply to them: the first classifies the ticket, the second writes the final answer
given that classification. It is async: many tickets are triaged at once without a thread each.
The demo's simulated traffic calls the same function, so production logs and evaluations see the
same app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

CLASSIFY = ('Step 1 of 2: classify the ticket. Reply with JSON only: {"category": "billing" | "bug" | "account" | '
            '"how_to", "priority": "low" | "normal" | "high"}.')
DRAFT = "Step 2 of 2: now write your final answer for this ticket, with the reply to the customer."
CLASSIFICATION_SCHEMA: dict[str, Any] = {
    "title": "ticket_classification", "type": "object", "additionalProperties": False,
    "properties": {"category": {"enum": ["billing", "bug", "account", "how_to"]},
                   "priority": {"enum": ["low", "normal", "high"]}},
    "required": ["category", "priority"],
}


class Prompt(Protocol):
    """What promptloop gives a `python:` target: the prompt version, rendered and callable."""

    def render(self, **values: object) -> list[dict[str, str]]: ...

    async def acomplete(self, messages: list[dict[str, str]] | None = None, *, model: str | None = None,
                        schema: dict[str, Any] | None = None, **parameters: Any) -> str: ...


def ticket_inputs(inputs: Mapping[str, object]) -> dict[str, object]:
    """The prompt's variables. A case mined from the logs holds the ticket as `question` (the logged input)
    and may lack the tier and product: they are then unknown."""
    return {"ticket": inputs.get("ticket", inputs.get("question", "")),
            "customer_tier": inputs.get("customer_tier", "unknown"),
            "product": inputs.get("product", "unknown")}


async def answer(prompt: Prompt, inputs: Mapping[str, object]) -> dict[str, str]:
    """Triage one ticket: classify it, then answer with the classification and the reply."""
    messages = prompt.render(**ticket_inputs(inputs))
    classification = await prompt.acomplete([*messages, {"role": "user", "content": CLASSIFY}],
                                            schema=CLASSIFICATION_SCHEMA)
    final = await prompt.acomplete([*messages, {"role": "user", "content": CLASSIFY},
                                    {"role": "assistant", "content": classification},
                                    {"role": "user", "content": DRAFT}])
    return {"output": final, "classification": classification}
