"""The prompt file a branch proposes, written in the base file's own formatting.

`dump_prompt` writes one house style (block scalars, block lists, two-space sequences). A prompt
file a person wrote may use flow lists (`required: [a, b]`), indented sequences or comments, and
rewriting it in the house style would show every such line as changed in the pull request's diff.
So the base file is loaded round-trip (ruamel.yaml keeps its styles, indentation and comments) and
only the values that really changed are replaced.
"""

from __future__ import annotations

import io
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from promptloop.domain.prompts import PromptVersion, dump_prompt


def dump_prompt_like(prompt: PromptVersion, base_text: str | None) -> str:
    """`prompt` as YAML, keeping `base_text`'s formatting for every part that did not change.

    Falls back to `dump_prompt` when there is no base file, it is not a mapping, or the merged text
    would not read back as exactly `prompt` (never propose something other than what was evaluated).
    """
    wanted = yaml.safe_load(dump_prompt(prompt))
    if base_text is None:
        return dump_prompt(prompt)
    try:
        document, indent, block_seq_indent = load_yaml_guess_indent(base_text)
    except YAMLError:
        return dump_prompt(prompt)
    if not isinstance(document, CommentedMap):
        return dump_prompt(prompt)
    merged = merge_into(document, wanted)
    writer = YAML()
    writer.width = 4096  # never re-wrap a long line of the base file
    writer.preserve_quotes = True
    writer.representer.add_representer(type(None), _null)  # `parent: null`, as dump_prompt writes it, not `parent:`
    # The guessed indent is that of sequence items (`  - a` under its key: 4, offset 2); mappings keep 2.
    writer.indent(mapping=2, sequence=indent or 2, offset=block_seq_indent or 0)
    out = io.StringIO()
    writer.dump(merged, out)
    text = out.getvalue()
    if yaml.safe_load(text) != wanted:
        return dump_prompt(prompt)
    return text


def merge_into(base: Any, wanted: Any) -> Any:
    """`base` (round-trip YAML) updated to equal `wanted` (plain data), reusing every unchanged node."""
    if _plain(base) == wanted:
        return base
    if isinstance(base, CommentedMap) and isinstance(wanted, dict):
        for key in [k for k in base if k not in wanted]:
            del base[key]
        for position, (key, value) in enumerate(wanted.items()):
            if key in base:
                base[key] = merge_into(base[key], value)
            else:
                base.insert(min(position, len(base)), key, fresh(value))
        return base
    if isinstance(base, CommentedSeq) and isinstance(wanted, list) and len(base) == len(wanted):
        for index, value in enumerate(wanted):
            base[index] = merge_into(base[index], value)
        return base
    return fresh(value=wanted)


def fresh(value: Any) -> Any:
    """A new value in the house style: multi-line text as a literal block (`|`)."""
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value)
    if isinstance(value, dict):
        return {k: fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fresh(v) for v in value]
    return value


def _plain(node: Any) -> Any:
    """A round-trip node as plain dicts, lists and scalars, for comparing with parsed data."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")
