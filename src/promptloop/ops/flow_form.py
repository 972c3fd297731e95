"""The types of the flows' optional parameters, as Prefect's run form shows them.

Prefect 3 builds a deployment's form from the flow function's signature (types, defaults) and the
`Args:` section of its docstring (descriptions). A plain `int | None = None` becomes a choice between
a number and an entry reading `Property is type "None"`; these types keep the `None` default (the
value of params.yaml) but describe themselves to the form as one optional number or text field. An
empty text field, which the form may send as "", also means params.yaml's value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema


def _empty_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


OptionalCount = Annotated[int | None, Field(ge=0), WithJsonSchema({"type": "integer", "minimum": 0})]
"""A count, or None for the value in params.yaml."""

OptionalAmount = Annotated[float | None, Field(ge=0), WithJsonSchema({"type": "number", "minimum": 0})]
"""An amount (USD), or None for the value in params.yaml."""

OptionalText = Annotated[str | None, BeforeValidator(_empty_is_none), WithJsonSchema({"type": "string"})]
"""A text, or None (an empty field) for the value in params.yaml."""

OptionalTexts = Annotated[
    list[str] | None, WithJsonSchema({"type": "array", "items": {"type": "string"}})
]
"""A list of texts, or None for the default (say, every candidate file)."""

Count = Annotated[int, Field(ge=1)]
"""A count of at least one."""
