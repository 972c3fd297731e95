"""The flows' run forms as Prefect builds them: flat, typed, described fields, in step with prefect.yaml."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest
import yaml

from conftest import REPO

FLOWS = ("collect", "analyze", "improve", "deploy", "release", "cycle", "evaluate")
FROM_PARAMS = ("from params.yaml", "the newest collected row", "every prompts/<app>/candidates")


@pytest.fixture(scope="module")
def flow_functions() -> Any:
    sys.path.insert(0, str(REPO))
    try:
        yield {name: getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow") for name in FLOWS}
    finally:
        sys.path.remove(str(REPO))


def schemas(flow: Any, name: str) -> list[dict[str, Any]]:
    """The form of the flow in memory (a run started from Python) and as `prefect deploy` reads it
    from the source file (the deployment's form in the UI)."""
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    on_deploy = parameter_schema_from_entrypoint(f"{REPO / 'flows' / name}.py:{name}_flow")
    return [flow.parameters.model_dump(), on_deploy.model_dump()]


def test_every_flow_form_has_flat_described_fields(flow_functions) -> None:
    for name, flow in flow_functions.items():
        for schema in schemas(flow, name):
            fields = schema["properties"]
            assert "parameters" not in fields, name
            assert list(fields)[:2] == ["app", "workspace"], name
            assert (fields["app"]["default"], fields["workspace"]["default"]) == ("support-bot", "."), name
            assert schema["required"] == [], name  # every field has a default: "Quick run" works
            for field, spec in fields.items():
                assert spec.get("description"), f"{name}.{field} has no description"
                # One type per field: no anyOf with a "null" branch, shown as `Property is type "None"`.
                assert "anyOf" not in spec and spec.get("type") in {"string", "integer", "number", "boolean", "array"}
                if spec["default"] is None:
                    assert any(words in spec["description"] for words in FROM_PARAMS), f"{name}.{field}"


def test_the_cycle_form_has_the_fields_of_the_issue(flow_functions) -> None:
    for schema in schemas(flow_functions["cycle"], "cycle"):
        fields = schema["properties"]
        assert list(fields) == ["app", "workspace", "force", "window", "candidates", "budget_usd"]
        assert (fields["force"]["type"], fields["force"]["default"]) == ("boolean", False)
        assert (fields["candidates"]["type"], fields["candidates"]["minimum"]) == ("integer", 0)
        assert fields["budget_usd"]["type"] == "number" and fields["window"]["type"] == "string"


def test_flow_parameters_are_validated(flow_functions) -> None:
    from prefect.exceptions import ParameterTypeError

    cycle = flow_functions["cycle"]
    assert cycle.validate_parameters({"candidates": 3, "budget_usd": "0.5"}) == {
        "app": "support-bot", "workspace": ".", "force": False, "window": None, "candidates": 3, "budget_usd": 0.5}
    assert cycle.validate_parameters({"window": " "})["window"] is None  # an emptied text field: params.yaml's value
    for bad in ({"candidates": -1}, {"budget_usd": "a lot"}, {"force": "sometimes"}):
        with pytest.raises(ParameterTypeError):
            cycle.validate_parameters(bad)
    with pytest.raises(ParameterTypeError):
        flow_functions["release"].validate_parameters({"rollback": "sometimes"})
    with pytest.raises(ParameterTypeError):
        flow_functions["evaluate"].validate_parameters({"batches": 0})


def test_prefect_yaml_parameters_are_fields_of_their_flows(flow_functions) -> None:
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    assert deployments
    for deployment in deployments:
        flow = flow_functions[deployment["name"]]
        given = deployment["parameters"]
        assert given["app"] == "support-bot" and given["workspace"] == "."
        assert set(given) <= set(flow.parameters.properties), deployment["name"]
        assert flow.validate_parameters(given) == {**flow.validate_parameters({}), **given}
