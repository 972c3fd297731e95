"""Shared fixtures: the checkout's sample workspace, litellm configured offline, a real workspace.

Layout: tests/unit (fast, `make test-fast`), tests/integration, tests/e2e; `make test` runs all three."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from promptloop.core.runtime import prepare_environment

if TYPE_CHECKING:
    from promptloop.ops.initialize import InitResult

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    prepare_environment()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder: unit (no workspace, no service), integration (real git, DVC,
    MLflow in temp folders), e2e (demo cycles, Prefect, subprocess CLIs); `-m unit` selects the fast ones."""
    for item in items:
        folder = item.path.parent.name
        if folder in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def repo_workspace():
    """The project checkout read as a workspace (its params.yaml, prompts and datasets)."""
    from promptloop.workspace.workspace import open_workspace

    return open_workspace(REPO)


@pytest.fixture(scope="session")
def litellm(repo_workspace) -> Any:
    """litellm with the offline provider and prices registered from params.yaml."""
    from promptloop.llm.client import litellm_module_configured

    return litellm_module_configured(repo_workspace.params.llm)


@pytest.fixture(scope="session")
def initialized_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InitResult]:
    """One real workspace (git, bare origin, DVC, MLflow) made by `init`, shared by read-only tests."""
    from promptloop.ops.initialize import init_workspace

    dest = tmp_path_factory.mktemp("ws") / "workspace"
    return dest, init_workspace(dest)


@pytest.fixture
def workspace(tmp_path: Path) -> Any:
    """A fresh workspace made by `init` for one test (modules that share one define their own)."""
    from promptloop.ops.initialize import init_workspace
    from promptloop.workspace.workspace import open_workspace

    init_workspace(tmp_path / "ws")
    return open_workspace(tmp_path / "ws")


@pytest.fixture
def better() -> Any:
    """The hand-written candidate that fixes prompt v1's planted failures."""
    from promptloop.domain.prompts import load_prompt

    return load_prompt(REPO / "tests" / "data" / "candidates" / "better.yaml")
