"""The JSON paths of `apps.<app>.trace_mapping`, and the prompt version of an untagged trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from promptloop.collect.traces import UNKNOWN_VERSION, released_version
from promptloop.core.config import load_params, parse_params
from promptloop.core.errors import InputError
from promptloop.core.jsonpath import find, parse_path

REPO = Path(__file__).resolve().parents[2]

REQUEST = {
    "question": "Where is my invoice?",
    "user": {"id": "u-1", "tags": ["a", "b"]},
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "server url": "https://10.0.0.1",
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("$", REQUEST),
        ("$.question", "Where is my invoice?"),
        ("$.user.id", "u-1"),
        ("$.user.tags[1]", "b"),
        ("$.messages[-1].content", "hello"),
        ("$.messages[-2]", {"role": "user", "content": "hi"}),
        ('$["server url"]', "https://10.0.0.1"),
        ("$['user']['id']", "u-1"),
        ("$.missing", None),
        ("$.messages[2]", None),
        ("$.messages[-3]", None),
        ("$.question.text", None),
        ("$.user[0]", None),
    ],
)
def test_a_path_finds_exactly_its_value_or_none(path: str, value: Any) -> None:
    assert find(REQUEST, parse_path(path)) == value


@pytest.mark.parametrize("path", ["question", "$.", "$..question", "$.messages[*]", "$.a[1:2]", "$[x]", "$.a b"])
def test_a_path_that_is_not_a_simple_json_path_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="JSON path|cannot read"):
        parse_path(path)


def test_released_version_is_the_last_release_at_or_before_the_trace() -> None:
    releases = [(1_000, "1"), (2_000, "2"), (3_000, "1")]  # 3_000: a rollback to version 1
    assert [released_version(releases, at) for at in (999, 1_000, 1_999, 2_000, 2_500, 3_000, 9_999)] == [
        UNKNOWN_VERSION, "1", "1", "2", "2", "1", "1"]
    assert released_version([], 5_000) == UNKNOWN_VERSION


def test_trace_mapping_loads_and_a_bad_entry_names_its_field() -> None:
    raw = load_params(REPO / "params.yaml").model_dump(mode="json")
    raw["apps"]["support-bot"]["trace_mapping"] = {"input": "$.question", "inputs.channel": "$.meta.channel"}
    assert parse_params(raw).apps["support-bot"].trace_mapping["inputs.channel"] == "$.meta.channel"
    raw["apps"]["support-bot"]["trace_mapping"] = {"input": "$.question", "user_id": "user.id"}
    with pytest.raises(InputError, match=r"params.yaml: apps.support-bot.trace_mapping.user_id: .*starts with '\$'"):
        parse_params(raw, "params.yaml")
    raw["apps"]["support-bot"]["trace_mapping"] = {"answer": "$.a"}
    with pytest.raises(InputError, match=r"apps.support-bot.trace_mapping.answer.*not a mapped log field"):
        parse_params(raw, "params.yaml")
