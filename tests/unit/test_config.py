"""params.yaml validation: unknown keys and wrong types are errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from promptloop.core.config import load_params, parse_params
from promptloop.core.errors import InputError

from conftest import REPO


def sample_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_sample_params_validate_with_one_section_per_stage() -> None:
    params = load_params(REPO / "params.yaml")
    assert set(params.apps) == {"support-bot", "triage-bot"}
    assert params.apps["triage-bot"].target == "python:apps.triage_bot:answer"
    assert params.demo.more_apps == ["triage-bot"]
    assert params.apps["support-bot"].model is None  # the prompt file names the model
    assert params.llm.license_of("offline/open-bot") == "permissive"
    assert params.llm.license_of("ollama/llama3.1:8b") == "restrictive"  # a glob
    assert params.llm.license_of("someone/else") == "unknown"
    assert params.llm.locality_of("offline/judge") == "local" and params.llm.locality_of("openai/gpt-4o") == "hosted"
    assert params.llm.locality_of("someone/else") == "unknown"
    for stage in ("collect", "analyze", "evaluate", "improve", "deploy"):
        assert stage in sample_params(), stage


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda p: p["apps"]["support-bot"].update(modle="x"), "apps.support-bot.modle", "unknown key"),
        (lambda p: p.update(colect={}), "colect", "unknown key"),
        (lambda p: p["evaluate"].update(judge_samples="three"), "evaluate.judge_samples", "valid integer"),
        (lambda p: p["evaluate"]["guards"].update(toxicty=0), "evaluate.guards.toxicty", "unknown key"),
        (lambda p: p["llm"]["models"].update({"x/*": {"license": "free"}}), "llm.models.x/*.license", "permissive"),
        (lambda p: p["llm"]["models"].update({"x/*": {"locality": "cloud"}}), "llm.models.x/*.locality", "hosted"),
        (lambda p: p["llm"]["models"].update({"x/*": {"input_per_mtok": 1}}), "llm.models.x/*", "both"),
        (lambda p: p["llm"]["models"].update({"x/*": {"api_base": "ftp://h"}}), "llm.models.x/*.api_base", "http"),
        (lambda p: p["llm"].update(prices={}), "llm", "moved into llm.models"),
        (lambda p: p["llm"]["models"].update({"x/*": {"api_base": "http://u:pw@h/v1"}}), "llm.models.x/*.api_base",
         "without credentials"),
        (lambda p: p["llm"]["models"].update({"x/*": {"extra": {"extra_headers": {}}}}), "llm.models.x/*.extra",
         "may not go in extra"),
        (lambda p: p["llm"].update(cache="../cache.sqlite"), "llm.cache", "inside the workspace"),
        (lambda p: p["analyze"].update(webhook_url="file:///etc/passwd"), "analyze.webhook_url", "http(s) URL"),
        (lambda p: p["apps"]["support-bot"].update(data_policy="eu"), "apps.support-bot.data_policy", "local-only"),
        (lambda p: p["apps"]["support-bot"].update(data_dir="../out"), "apps.support-bot.data_dir", "inside"),
        (lambda p: p["apps"]["support-bot"].update(prompt="/etc/p.yaml"), "apps.support-bot.prompt", "inside"),
        (lambda p: p["apps"].update({"../x": p["apps"]["support-bot"]}), "apps", "not usable as an app name"),
        (lambda p: p["apps"].update({"-x": p["apps"]["support-bot"]}), "apps", "not usable as an app name"),
        (lambda p: p["apps"].update({"support-bot-candidates": p["apps"]["support-bot"]}), "apps",
         "holds app 'support-bot'"),
        (
            lambda p: p["apps"]["support-bot"].update(scorers=["pairwise"]),
            "apps.support-bot.scorers",
            "'rubric' is required",
        ),
        (lambda p: p["demo"].update(korean_share=1.5), "demo.korean_share", "less than or equal to 1"),
        (lambda p: p["apps"]["support-bot"].pop("prompt"), "apps.support-bot.prompt", "Field required"),
        (
            lambda p: p["llm"]["models"]["offline/judge"].update(input_per_mtok=-1),
            "llm.models.offline/judge.input_per_mtok",
            "greater than or equal",
        ),
    ],
)
def test_config_errors_name_the_file_and_key(edit, field: str, message: str) -> None:
    params = sample_params()
    edit(params)
    with pytest.raises(InputError) as caught:
        parse_params(params, "params.yaml")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"params.yaml: {field}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_empty_apps_is_an_error() -> None:
    params = sample_params()
    params["apps"] = {}
    with pytest.raises(InputError, match="apps: .*at least one app"):
        parse_params(params)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("apps:\n  support-bot: [unclosed\n")
    with pytest.raises(InputError) as caught:
        load_params(bad)
    assert str(bad) in str(caught.value) and "line " in str(caught.value)


def test_missing_file_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="promptloop init"):
        load_params(tmp_path / "params.yaml")


def test_unknown_app_lists_the_known_ones() -> None:
    params = load_params(REPO / "params.yaml")
    with pytest.raises(InputError, match=r"unknown app 'nope' \(known: support-bot, triage-bot\)"):
        params.app("nope")


FAKE_KEY = "sk-live-0123456789abcdefFAKE"


@pytest.mark.parametrize("value", [FAKE_KEY, "env:", "env:NOT A NAME", "prefect-secret:Upper_Case", "vault:x", 42])
def test_a_literal_api_key_is_refused_without_repeating_it(value: object) -> None:
    params = sample_params()
    params["llm"]["models"]["openai/*"]["api_key"] = value
    with pytest.raises(InputError) as caught:
        parse_params(params, "params.yaml")
    assert caught.value.field == "llm.models.openai/*.api_key"
    assert str(caught.value).startswith("params.yaml: llm.models.openai/*.api_key: ")
    assert "environment variable" in str(caught.value) and "Prefect Secret block" in str(caught.value)
    assert FAKE_KEY not in str(caught.value) and "\n" not in str(caught.value)


def test_a_model_entry_must_be_a_mapping_and_the_error_names_the_file(tmp_path: Path) -> None:
    params = sample_params()
    params["llm"]["models"]["openai/*"] = FAKE_KEY
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(InputError) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: llm.models.openai/*: ") and FAKE_KEY not in str(caught.value)


def test_settings_built_in_code_refuse_a_literal_key_without_printing_it() -> None:
    from pydantic import ValidationError

    from promptloop.core.config import LLMSettings

    with pytest.raises(ValidationError) as caught:
        LLMSettings(models={"openai/*": {"api_key": FAKE_KEY}})
    assert FAKE_KEY not in str(caught.value)


def test_model_entries_name_a_key_source_and_the_first_match_wins() -> None:
    params = sample_params()
    params["llm"]["models"] = {
        "openai/gpt-4o*": {"api_key": "prefect-secret:openai-prod", "rpm": 500},
        "openai/*": {"api_key": "env:OPENAI_KEY_FOR_PROMPTLOOP"},
        "ollama/*": {"api_base": "http://localhost:11434", "locality": "local"},
    }
    llm = parse_params(params).llm
    assert llm.model_settings("openai/gpt-4o-mini").api_key == "prefect-secret:openai-prod"
    assert llm.model_settings("openai/gpt-4o-mini").rpm == 500
    assert llm.model_settings("openai/o3").api_key == "env:OPENAI_KEY_FOR_PROMPTLOOP"
    assert llm.model_entry("anthropic/claude") is None  # litellm's own ANTHROPIC_API_KEY
    assert llm.model_settings("ollama/qwen2.5").api_base == "http://localhost:11434"


def test_yaml_aliases_and_huge_files_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "params.yaml"
    bomb.write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n')
    with pytest.raises(InputError, match="aliases"):
        load_params(bomb)
    bomb.write_text("x: " + "y" * 1_100_000 + "\n")
    with pytest.raises(InputError, match="larger than"):
        load_params(bomb)


def test_the_online_judge_follows_the_evaluation_judge_unless_named() -> None:
    params = sample_params()
    params["evaluate"]["judge_model"] = "openai/gpt-4o-mini"
    assert parse_params(params).analyze.judge_model == "openai/gpt-4o-mini"  # switched together
    params["analyze"]["judge_model"] = "ollama/qwen2.5:7b"
    assert parse_params(params).analyze.judge_model == "ollama/qwen2.5:7b"
    params["analyze"]["judge_model"] = None
    assert parse_params(params).analyze.judge_model is None  # off


def test_the_cluster_labeller_follows_the_evaluation_judge_unless_named() -> None:
    params = sample_params()
    params["evaluate"]["judge_model"] = "openai/gpt-4o-mini"
    params["analyze"].pop("label_model", None)
    assert parse_params(params).analyze.label_model == "openai/gpt-4o-mini"
    params["analyze"]["judge_model"] = None  # the online judge off: the labeller is still on
    assert parse_params(params).analyze.label_model == "openai/gpt-4o-mini"
    params["analyze"]["label_model"] = None
    assert parse_params(params).analyze.label_model is None  # off: clusters named by their words


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text() + "\ndemo:\n  seed: 8\n")
    with pytest.raises(InputError, match=r"key 'demo' is given twice") as caught:
        load_params(path)
    assert caught.value.field and caught.value.field.startswith("line ")
