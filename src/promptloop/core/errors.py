"""Errors the CLI turns into exit codes: bad input or config is exit 2, anything else 1."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class InputError(Exception):
    """Bad input or configuration; the message names the file and the field."""

    def __init__(self, source: str | Path, message: str, field: str | None = None) -> None:
        self.source = str(source)
        self.field = field
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {message}")


def field_path(loc: tuple[int | str, ...]) -> str:
    """`('apps', 'support-bot', 'model')` -> `apps.support-bot.model`; list indexes as `[3]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def input_error_from_validation(source: str | Path, exc: ValidationError, prefix: str = "") -> InputError:
    """The first validation error of `exc` as one line naming the file and the field."""
    err = exc.errors()[0]
    field = field_path(tuple(err["loc"]))
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] not in ("extra_forbidden", "missing") and "input" in err and not _may_hold_a_secret(field):
        message += f" (got {_short(err['input'])})"
    extra = len(exc.errors()) - 1
    if extra:
        message += f"; and {extra} more error{'s' if extra > 1 else ''}"
    return InputError(source, message, field or None)


def _may_hold_a_secret(field: str) -> bool:
    """Fields whose value is never echoed in an error: a key pasted into the wrong place must not be printed."""
    return any(word in field.lower() for word in ("key", "token", "secret", "password", "parameters", "extra"))


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DeployError(RuntimeError):
    """A deploy or release step refused or failed (dirty tree, no previous release, an API error)."""


class WorkspaceBusy(RuntimeError):
    """Another promptloop process held the workspace for longer than this one would wait (exit 75: try later)."""
