"""release after a person merges: the registry alias `champion`, an annotated git tag on the remote and
an MLflow run linking them; releasing twice changes nothing; rollback; `load_app` follows the alias;
deploy names the proposed version `challenger` until release makes it `champion`."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import git
import pytest
import yaml

from promptloop.core.errors import DeployError
from promptloop.deploy.pull_request import open_pull_request
from promptloop.deploy.release import release
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.workspace import registry
from promptloop.workspace.registry import CHALLENGER, CHAMPION, LEGACY_PRODUCTION, production_prompt
from promptloop.workspace.tracking import tracking_client
from promptloop.workspace.workspace import Workspace

APP = "support-bot"
CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"
PROMPT = f"prompts/{APP}/prompt.yaml"


def merge_on_remote(workspace: Workspace, branch: str, clone_dir: Path) -> str:
    """What a person does on approval: merge the branch into main in their own clone and push main."""
    clone = git.Repo.clone_from(str(workspace.root / "remote.git"), clone_dir)
    with clone.config_writer() as config:
        config.set_value("user", "name", "Reviewer")
        config.set_value("user", "email", "reviewer@example.org")
    clone.git.merge("--no-ff", f"origin/{branch}", "-m", f"Merge {branch}")
    clone.git.push("origin", "main")
    return clone.head.commit.hexsha


def propose_and_merge(workspace: Workspace, candidate: PromptVersion, clone_dir: Path) -> str:
    proposal = open_pull_request(workspace, APP, candidate, "# report\n", None)
    return merge_on_remote(workspace, proposal.branch, clone_dir)


def release_runs(workspace: Workspace) -> list:
    client = tracking_client(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(workspace.experiment_name(APP))
    return client.search_runs([experiment.experiment_id], "tags.`promptloop.stage` = 'release'")


def test_release_after_merge_sets_the_alias_tags_git_and_logs_the_run(
    workspace: Workspace, better, tmp_path: Path
) -> None:
    client = tracking_client(workspace.tracking_uri)
    # evaluate registered the same content earlier under the candidate file's own lineage
    registry.register(client, APP, better.model_copy(update={"version": 9, "parent": 8, "changelog": "draft"}))
    merge = propose_and_merge(workspace, better, tmp_path / "clone")

    result = release(workspace, APP)

    assert (result.version, result.tag, result.commit) == (2, f"{APP}@v2", merge)
    assert result.released and result.tag_created and not result.rollback
    alias = client.get_prompt_version_by_alias(APP, CHAMPION)
    assert int(alias.version) == result.registry_version
    assert alias.tags[registry.HASH_TAG] == better.content_hash
    assert (alias.tags["promptloop.version"], alias.tags["promptloop.parent"]) == ("2", "1")

    bare = git.Repo(workspace.root / "remote.git")
    tag = bare.tags[f"{APP}@v2"]
    assert tag.commit.hexsha == merge == bare.commit("main").hexsha
    assert tag.tag is not None and f"version {result.registry_version}" in tag.tag.message  # annotated
    assert tag.tag.tagger.name == "promptloop"

    run = tracking_client(workspace.tracking_uri).get_run(result.mlflow_run_id)
    assert run.info.run_name == f"release {APP} v2" and run.info.status == "FINISHED"
    assert run.data.params == {"version": "2", "registry_version": str(result.registry_version),
                               "commit": merge, "tag": f"{APP}@v2", "rollback": "false"}

    merged = PromptVersion.model_validate(yaml.safe_load(bare.git.show(f"main:{PROMPT}")))
    assert production_prompt(workspace.tracking_uri, APP) == merged
    app = workspace.load_app(APP)
    assert app.prompt == merged and app.prompt.content_hash == better.content_hash
    assert load_prompt(workspace.path(PROMPT)).version == 1  # the local file was not needed, nor changed


def test_releasing_the_same_version_twice_is_a_no_op(workspace: Workspace, better, tmp_path: Path) -> None:
    propose_and_merge(workspace, better, tmp_path / "clone")
    first = release(workspace, APP)
    again = release(workspace, APP)

    assert not again.released and not again.tag_created and again.mlflow_run_id is None
    assert "already released" in again.message
    same = {"version", "registry_version", "commit", "tag"}
    assert again.model_dump(include=same) == first.model_dump(include=same)
    assert len(release_runs(workspace)) == 1
    assert [t.name for t in git.Repo(workspace.root / "remote.git").tags] == [f"{APP}@v2"]
    assert int(tracking_client(workspace.tracking_uri).get_prompt_version_by_alias(APP, CHAMPION).version) \
        == first.registry_version


def test_a_changed_prompt_that_keeps_a_released_number_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    release(workspace, APP)  # v1
    clone = git.Repo.clone_from(str(workspace.root / "remote.git"), tmp_path / "clone")
    edited = clone.working_dir + "/" + PROMPT
    Path(edited).write_text(Path(edited).read_text().replace("Be helpful and thorough.", "Be brief."))
    clone.git.commit("-am", "edit the prompt in place", env={"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x",
                                                            "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x"})
    clone.git.push("origin", "main")
    with pytest.raises(DeployError, match=f"{APP}@v1 already marks a different prompt"):
        release(workspace, APP)


def test_rollback_moves_the_alias_to_the_previous_release(workspace: Workspace, better, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="nothing to roll back"):
        release(workspace, APP, rollback=True)
    v1 = release(workspace, APP)
    with pytest.raises(DeployError, match="no release before v1"):
        release(workspace, APP, rollback=True)
    propose_and_merge(workspace, better, tmp_path / "clone")
    v2 = release(workspace, APP)
    assert workspace.load_app(APP).prompt.version == 2

    back = release(workspace, APP, rollback=True)

    assert back.rollback and back.released and not back.tag_created
    assert (back.version, back.registry_version, back.tag, back.commit) == \
           (1, v1.registry_version, f"{APP}@v1", v1.commit)
    client = tracking_client(workspace.tracking_uri)
    assert int(client.get_prompt_version_by_alias(APP, CHAMPION).version) == v1.registry_version
    run = client.get_run(back.mlflow_run_id)
    assert run.info.run_name == f"rollback {APP} v1" and run.data.params["rollback"] == "true"
    assert run.data.params["tag"] == f"{APP}@v1"
    assert workspace.load_app(APP).prompt == load_prompt(workspace.path(PROMPT))  # v1, as on the v1 tag
    assert sorted(t.name for t in git.Repo(workspace.root / "remote.git").tags) == [f"{APP}@v1", f"{APP}@v2"]

    # releasing main again (v2 still merged there) rolls forward: same tag, the alias back on v2
    forward = release(workspace, APP)
    assert forward.released and not forward.tag_created and forward.registry_version == v2.registry_version
    assert workspace.load_app(APP).prompt.version == 2
    assert len(release_runs(workspace)) == 4


def test_load_app_falls_back_to_the_prompt_file(workspace: Workspace, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    on_disk = load_prompt(workspace.path(PROMPT))
    assert production_prompt(workspace.tracking_uri, APP) is None  # registered nowhere, no alias
    assert workspace.load_app(APP).prompt == on_disk
    registry.register(tracking_client(workspace.tracking_uri), APP, on_disk)  # registered, still no alias
    assert production_prompt(workspace.tracking_uri, APP) is None and workspace.load_app(APP).prompt == on_disk

    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not an sqlite database" * 100)
    tracking = workspace.params.tracking.model_copy(update={"uri": f"sqlite:///{broken}"})
    unreadable = dataclasses.replace(workspace, params=workspace.params.model_copy(update={"tracking": tracking}))
    with caplog.at_level(logging.WARNING, logger="promptloop.workspace"):
        assert unreadable.load_app(APP).prompt == on_disk
    assert "prompt registry of support-bot unreadable" in caplog.text

    missing = tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'nowhere.db'}"})
    absent = dataclasses.replace(workspace, params=workspace.params.model_copy(update={"tracking": missing}))
    assert absent.load_app(APP).prompt == on_disk
    assert not (tmp_path / "nowhere.db").exists()  # reading never creates a store


def test_registry_round_trip_keeps_braces_and_lineage(workspace: Workspace) -> None:
    client = tracking_client(workspace.tracking_uri)
    prompt = PromptVersion(app=APP, version=3, parent=2, model="offline/support-bot",
                           parameters={"temperature": 0.1, "seed": 4}, changelog="",
                           system='Reply as JSON like {"answer": "..."}; show {{question}} as typed.\n{context}\n',
                           user="Q: {question}")
    version = registry.register(client, APP, prompt)
    client.set_prompt_alias(APP, CHAMPION, version)
    assert production_prompt(workspace.tracking_uri, APP) == prompt


def test_deploy_names_the_challenger_and_release_makes_it_the_champion(workspace: Workspace,
                                                                       tmp_path: Path) -> None:
    from promptloop.deploy.stage import deploy
    from promptloop.domain.results import GrowthResult
    from promptloop.evaluate.stage import evaluate
    from promptloop.improve.stage import Proposed, improve_outcome
    from promptloop.workspace.handoff import save_outcome

    candidates = [CANDIDATES / "better.yaml", CANDIDATES / "terse.yaml"]
    result = evaluate(workspace, APP, candidates)
    growth = GrowthResult(added=0, duplicates=0, near_duplicates=0, capped=0, unclustered=0, pii_redacted=0,
                          optimize=0, holdout=0, golden_set="golden/support-bot.jsonl")
    outcome = improve_outcome(APP, growth, Proposed(), candidates, result)
    assert outcome.decision == "promote" and outcome.best is not None and outcome.best.name == "better"
    save_outcome(workspace, outcome)  # under .promptloop/, git-ignored: the tree stays clean
    client = tracking_client(workspace.tracking_uri)
    assert registry.version_by_alias(client, APP, CHALLENGER) is None

    proposed = deploy(workspace, APP)

    winner = next(c for c in result.candidates if c.name == "better")
    assert proposed.challenger_version == winner.registry_version and winner.registry_name == APP
    challenger = client.get_prompt_version_by_alias(APP, CHALLENGER)
    assert int(challenger.version) == winner.registry_version
    assert challenger.tags[registry.HASH_TAG] == outcome.best.prompt_hash
    assert registry.version_by_alias(client, APP, CHAMPION) is None  # proposed, not released
    assert deploy(workspace, APP).challenger_version == winner.registry_version  # again: the same, no new version

    merge_on_remote(workspace, proposed.branch or "", tmp_path / "clone")
    released = release(workspace, APP)

    assert released.alias == CHAMPION == "champion" and released.registry_version == winner.registry_version
    assert int(client.get_prompt_version_by_alias(APP, CHAMPION).version) == winner.registry_version
    assert registry.version_by_alias(client, APP, CHALLENGER) is None  # its pull request is merged
    app_versions = client.search_prompt_versions(APP)
    assert len(app_versions) == 2  # v1 (the baseline) and the winner; terse is a candidate only
    assert [v.tags[registry.HASH_TAG] for v in client.search_prompt_versions(registry.candidates_name(APP))] == \
        [next(c for c in result.candidates if c.name == "terse").prompt_hash]


def test_a_registry_released_with_the_older_production_alias_is_still_served(workspace: Workspace,
                                                                             better) -> None:
    client = tracking_client(workspace.tracking_uri)
    version = registry.register(client, APP, better)
    client.set_prompt_alias(APP, LEGACY_PRODUCTION, version)
    assert production_prompt(workspace.tracking_uri, APP) == better
    v1 = release(workspace, APP)  # the next release sets `champion`, which wins from then on
    assert int(client.get_prompt_version_by_alias(APP, CHAMPION).version) == v1.registry_version != version
    assert production_prompt(workspace.tracking_uri, APP) == load_prompt(workspace.path(PROMPT))
