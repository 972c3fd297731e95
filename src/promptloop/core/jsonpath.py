"""A tiny JSON path: `$`, then `.name`, `["name"]` and `[index]` steps (negative indexes count from the end).

Enough to point at a traced function's argument (`$.question`) or a chat request's last message
(`$.messages[-1].content`); no wildcards, filters or slices, so a path names exactly one value.
"""

from __future__ import annotations

import re
from typing import Any

Step = str | int

_STEP = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\[(?:"([^"]*)"|'([^']*)')\]""")


def parse_path(path: str) -> tuple[Step, ...]:
    """The steps of `path`; a ValueError says what is wrong with it."""
    if not path.startswith("$"):
        raise ValueError(f"{path!r}: a JSON path starts with '$' (e.g. $.question or $.messages[-1].content)")
    steps: list[Step] = []
    at = 1
    while at < len(path):
        match = _STEP.match(path, at)
        if match is None:
            raise ValueError(f"{path!r}: cannot read the path from {path[at:]!r} (use .name, [\"name\"] or [index])")
        name, index, quoted, single = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(next(s for s in (name, quoted, single) if s is not None))
        at = match.end()
    return tuple(steps)


def find(value: Any, steps: tuple[Step, ...]) -> Any:
    """The value at `steps` inside `value`; None when any step is missing."""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return None
            value = value[step]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            return None
    return value
