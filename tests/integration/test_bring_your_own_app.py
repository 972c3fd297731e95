"""An app promptloop did not design: made with `new-app`, its own variables, a conversation, its own
code as a `python:` target (written outside the project) or its own HTTP endpoint, its own judge
files; evaluated to a decision with every model call through the runner."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import git
import pytest
import yaml

from promptloop.core.errors import InputError
from promptloop.domain.golden import load_golden
from promptloop.evaluate.stage import evaluate
from promptloop.ops.golden_import import import_golden
from promptloop.ops.initialize import init_workspace
from promptloop.ops.new_app import new_app
from promptloop.workspace.workspace import Workspace, open_workspace

PROMPT = """\
app: concierge
version: 1
model: offline/support-bot
parameters: {temperature: 0.2, max_tokens: 300}
changelog: first
messages:
  - role: system
    content: |
      You are the concierge of a hotel. The guest is a {{ customer_tier }} member.
  - role: user
    content: "{{ question }}"
"""
BETTER = PROMPT.replace("version: 1", "version: 2\nparent: 1").replace("changelog: first", "changelog: better")
BETTER = BETTER.replace(
    "member.\n", "member.\n      Always answer in the same language as the customer's question.\n"
    "      Never guess: if you do not know, reply that you are not sure.\n")
CSV = """\
question,inputs.customer_tier,expected_response,guidelines,lang,split
Can I check out at 2 pm?,gold,Gold members may check out at 2 pm.,mentions 2 pm|is polite,en,holdout
レイトチェックアウトはできますか？,silver,シルバー会員は13時までです。,answers in Japanese,ja,holdout
Is breakfast included?,gold,Breakfast is included for gold members.,,en,optimize
Can I check out at 2 pm?,gold,duplicate of the first row,,en,holdout
"""
CONVERSATION = {"id": "conv-1", "inputs": {"question": "And can I keep the room until then?", "customer_tier": "gold",
                                          "history": [{"role": "user", "content": "I arrive at 11 pm."},
                                                      {"role": "assistant", "content": "We will keep your room."}]},
                "expectations": {"guidelines": ["answers about keeping the room"]}, "lang": "en"}
# The app's own code, outside the project: two model calls per case, through promptloop's runner.
APP_CODE = '''
def answer(prompt, inputs):
    draft = prompt.complete()
    checked = prompt.complete([{"role": "system", "content": "Check this reply."},
                               {"role": "user", "content": draft}], temperature=0)
    return {"output": f"[{inputs['customer_tier']}] {draft}", "context": "", "checked": checked}
'''


def make_app(root: Path, name: str, target: str, outside: Path) -> Workspace:
    """A workspace with app `name` made by `new-app`, given its prompt, cases, a candidate and a judge."""
    init_workspace(root)
    new_app(root, name, target=target, description="the concierge of a hotel")
    (root / "prompts" / name / "prompt.yaml").write_text(PROMPT.replace("concierge", name, 1), encoding="utf-8")
    candidates = root / "prompts" / name / "candidates"
    candidates.mkdir()
    (candidates / "better.yaml").write_text(BETTER.replace("concierge", name, 1), encoding="utf-8")
    golden = root / "datasets" / name / "golden.jsonl"
    golden.write_text(json.dumps(CONVERSATION) + "\n", encoding="utf-8")  # the examples replaced
    (outside / "cases.csv").write_text(CSV, encoding="utf-8")
    repo = git.Repo(root)
    repo.git.add(A=True)
    repo.index.commit("the concierge app")
    workspace = open_workspace(root)
    imported = import_golden(workspace, name, str(outside / "cases.csv"))
    assert (imported.read, imported.added, imported.duplicates) == (4, 3, 1)
    return workspace


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder outside every workspace holding the app's own code, importable as `hotel_app`."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "hotel_app.py").write_text(APP_CODE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def test_a_new_python_app_is_evaluated_to_a_decision_with_every_call_through_the_runner(
        tmp_path: Path, outside: Path) -> None:
    workspace = make_app(tmp_path / "ws", "concierge", "python:hotel_app:answer", outside)
    cases = load_golden(workspace.path(workspace.app_settings("concierge").golden_set))
    assert [c.id for c in cases][0] == "conv-1" and {c.lang for c in cases} == {"en", "ja"}
    first = evaluate(workspace, "concierge")
    assert first.complete, first.candidates[0].reasons
    [better] = first.candidates
    assert better.decision in ("promote", "hold") and (first.cases, first.baseline.n) == (4, 3)  # 1 optimize case
    app_calls = first.usage.by_purpose["app:baseline"]
    # Two model calls per case, made by the app's code through the runner (identical requests: one paid call).
    assert app_calls.calls + app_calls.cache_hits == 2 * 4 and app_calls.calls > 0
    assert "helpful" in first.judge.guard_agreement
    assert any(g.metric == "judge helpful fail rate" for g in better.guards)
    again = evaluate(workspace, "concierge")
    assert again.usage.calls == 0 and again.usage.cache_hits > 0
    assert [c.decision for c in again.candidates] == [better.decision]


# An app whose own code fails: its booking system is down for one question; another answers nothing.
BROKEN_CODE = '''
def answer(prompt, inputs):
    if "breakfast" in inputs["question"]:
        raise RuntimeError("booking system down")
    return prompt.complete()
'''
SILENT_CODE = '''
def answer(prompt, inputs):
    return None
'''


def test_an_app_failing_on_a_case_stops_the_evaluation_naming_the_case_and_its_line(
        tmp_path: Path, outside: Path) -> None:
    (outside / "broken_app.py").write_text(BROKEN_CODE, encoding="utf-8")
    (outside / "silent_app.py").write_text(SILENT_CODE, encoding="utf-8")
    workspace = make_app(tmp_path / "ws", "concierge", "python:broken_app:answer", outside)
    cases = load_golden(workspace.path(workspace.app_settings("concierge").golden_set))
    breakfast = next(c.id for c in cases if "breakfast" in str(c.inputs["question"]))
    with warnings.catch_warnings(record=True) as caught:
        broken = evaluate(workspace, "concierge")  # not a crash: an incomplete evaluation that promotes nothing
        gc.collect()
    # The calls in flight when it stopped were cancelled: no "never awaited" warning for the provider's coroutines.
    assert not [w for w in caught if "was never awaited" in str(w.message)]
    assert not broken.complete and [c.decision for c in broken.candidates] == ["incomplete"]
    assert re.fullmatch(rf"python:broken_app:answer failed on case {breakfast} \(app:(baseline|better)\): "
                        rf"RuntimeError: booking system down at {re.escape(str(outside / 'broken_app.py'))}:4",
                        str(broken.stopped)), broken.stopped
    silent = make_app(tmp_path / "ws2", "concierge", "python:silent_app:answer", outside)
    nothing = evaluate(silent, "concierge")
    assert not nothing.complete and [c.decision for c in nothing.candidates] == ["incomplete"]
    assert "python:silent_app:answer failed on case" in str(nothing.stopped)
    assert "returned NoneType without an `output` string" in str(nothing.stopped)


def test_a_case_without_a_variable_the_prompt_renders_stops_before_any_call(tmp_path: Path, outside: Path) -> None:
    workspace = make_app(tmp_path / "ws", "concierge", "template", outside)
    golden = workspace.path(workspace.app_settings("concierge").golden_set)
    with golden.open("a", encoding="utf-8") as handle:  # a spreadsheet's column "Question", not "question"
        handle.write(json.dumps({"id": "caps-1", "inputs": {"Question": "Where is the spa?", "customer_tier": "gold"},
                                 "expectations": {"expected_response": "Floor 3"}}) + "\n")
    with pytest.raises(InputError, match=r"golden\.jsonl: case caps-1: no \{\{ question \}\}, which "
                                         r"prompts/concierge/prompt\.yaml uses \(its inputs hold \['Question', "
                                         r"'customer_tier'\]\)"):
        evaluate(workspace, "concierge")
    assert not workspace.path(".promptloop/llm-cache.sqlite").exists()  # stopped before the first call


def test_an_import_whose_column_the_prompt_does_not_use_is_refused_naming_its_line(
        tmp_path: Path, outside: Path) -> None:
    workspace = make_app(tmp_path / "ws", "concierge", "template", outside)
    golden = workspace.path(workspace.app_settings("concierge").golden_set)
    before = golden.read_bytes()
    caps = tmp_path / "caps.csv"  # a spreadsheet's header "Question", where the prompt has {{ question }}
    caps.write_text("inputs.customer_tier,Question\ngold,Where is the spa?\nsilver,Can I bring a dog?\n",
                    encoding="utf-8")
    with pytest.raises(InputError, match=r"caps\.csv: line 2: no \{\{ question \}\}, which prompts/concierge/"
                                         r"prompt\.yaml uses \(its inputs hold \['Question', 'customer_tier'\]\)"):
        import_golden(workspace, "concierge", str(caps))
    assert golden.read_bytes() == before


class HotelHandler(BaseHTTPRequestHandler):
    """An app in another language, as far as promptloop knows: it answers from the rendered prompt."""

    requests: list[dict[str, Any]] = []
    timed = True  # reports its processing time (`x-processing-ms`), as a provider reports its own

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        HotelHandler.requests.append(body)
        messages = body["prompt"]["messages"]
        guarded = "not sure" in messages[0]["content"]
        reply = {"output": ("I'm not sure. " if guarded else "") + f"Dear {body['inputs']['customer_tier']} guest, "
                           f"about '{messages[-1]['content']}': yes.", "context": "hotel rules"}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if HotelHandler.timed:
            self.send_header("x-processing-ms", str(40 + len(data) % 10))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hotel_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HotelHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/answer"
    server.shutdown()
    server.server_close()


def test_an_http_app_on_loopback_is_evaluated_to_a_decision_and_replayed_from_the_cache(
        tmp_path: Path, outside: Path, hotel_server: str) -> None:
    HotelHandler.requests.clear()
    workspace = make_app(tmp_path / "ws", "hotel", hotel_server, outside)
    first = evaluate(workspace, "hotel")
    assert first.complete and first.candidates[0].decision in ("promote", "hold")
    assert len(HotelHandler.requests) == 2 * 4 and first.usage.by_purpose["app:baseline"].calls == 4
    sent = next(r for r in HotelHandler.requests if r["inputs"].get("history"))
    assert [m["role"] for m in sent["prompt"]["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["prompt"]["model"] == "offline/support-bot" and sent["prompt"]["parameters"]["seed"] == 0
    again = evaluate(workspace, "hotel")
    assert again.usage.calls == 0 and len(HotelHandler.requests) == 2 * 4
    assert first.latency_source == again.latency_source == "provider"
    assert [c.latency_p95_ms for c in first.prompts] == [c.latency_p95_ms for c in again.prompts]


def test_an_app_that_reports_no_time_is_timed_by_a_sequential_probe(
        tmp_path: Path, outside: Path, hotel_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    HotelHandler.requests.clear()
    monkeypatch.setattr(HotelHandler, "timed", False)
    workspace = make_app(tmp_path / "ws", "hotel", hotel_server, outside)
    first = evaluate(workspace, "hotel")
    probe = first.usage.by_purpose["latency-probe"]
    settings = workspace.params.evaluate.latency_probe
    # Both prompts in every round (the warm-up round included), never from the cache, within the cap.
    assert probe.calls % 2 == 0 and 2 * (settings.warmup_rounds + settings.min_rounds) <= probe.calls
    assert probe.calls <= settings.max_calls and probe.cache_hits == 0
    assert len(HotelHandler.requests) == 2 * 4 + probe.calls
    assert first.latency_source == "probe" and first.latency_probe_rounds == probe.calls // 2 - settings.warmup_rounds
    assert all(p.latency_p95_ms is not None for p in first.prompts)
    assert any(g.metric == "latency_p95_ms" for g in first.candidates[0].guards)
    assert "sequential, interleaved, uncached probe" in first.report
    # A re-run answers the evaluation from the cache; only the probe calls again.
    again = evaluate(workspace, "hotel")
    assert set(again.usage.by_purpose) == set(first.usage.by_purpose)
    assert again.usage.calls == again.usage.by_purpose["latency-probe"].calls
    # The baseline alone has no latency to compare: no probe, and the report says why there is no p95.
    alone = evaluate(workspace, "hotel", [])
    assert "latency-probe" not in alone.usage.by_purpose and alone.prompts[0].latency_p95_ms is None
    assert "with no candidate there is no latency to compare" in alone.report


class KeepAliveHotel(HotelHandler):
    """The hotel app behind a server that keeps connections open between requests (HTTP/1.1, as real app
    servers do); it counts the connections it accepted."""

    protocol_version = "HTTP/1.1"
    connections = 0
    counting = threading.Lock()

    def setup(self) -> None:  # once per accepted connection, however many requests it carries
        super().setup()
        with KeepAliveHotel.counting:
            KeepAliveHotel.connections += 1


def test_an_http_apps_connections_are_reused_and_closed(
        tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    HotelHandler.requests.clear()
    monkeypatch.setattr(HotelHandler, "timed", False)  # the sequential latency probe posts too
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHotel)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        workspace = make_app(tmp_path / "ws", "hotel", f"http://127.0.0.1:{port}/answer", outside)
        params = yaml.safe_load((workspace.root / "params.yaml").read_text(encoding="utf-8"))
        params["llm"]["max_concurrency"] = 2
        (workspace.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        git.Repo(workspace.root).git.commit("-am", "two app posts at once")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate(open_workspace(workspace.root), "hotel")
            gc.collect()
    finally:
        server.shutdown()
        server.server_close()
    assert result.complete and result.latency_source == "probe"
    probe_calls = result.usage.by_purpose["latency-probe"].calls
    assert len(HotelHandler.requests) == 2 * 4 + probe_calls > 8
    # Two connections for the evaluation's eight posts (two at once), one for the sequential probe's; a client
    # per post opened one per request. The bound leaves room for a connection idle past httpx's 5 s keep-alive
    # on a stalled machine (then reopened), so no timing decides it.
    assert KeepAliveHotel.connections <= len(HotelHandler.requests) // 2
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [message for message in unclosed if f"{port})" in message] == []  # no socket to the app left open


def test_new_app_refuses_what_would_overwrite_or_not_load(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    init_workspace(root)
    with pytest.raises(InputError, match="apps.support-bot: app 'support-bot' exists already"):
        new_app(root, "support-bot")
    with pytest.raises(InputError, match=r"apps\.x\.target: .*expected template, python:"):
        new_app(root, "x", target="ruby:app")
    created = new_app(root, "notes", target="python:notes_app:answer")
    assert git.Repo(root).is_dirty(untracked_files=True) is False  # committed, golden set tracked by DVC
    assert (root / "datasets" / "notes" / "golden.jsonl.dvc").is_file()
    assert any("notes_app:answer(prompt, inputs)" in step for step in created.next_steps)
    assert created.next_steps[0].startswith("describe the app in one line")  # no --description given
    described = new_app(root, "concierge", description="the concierge of a hotel")
    assert not any("describe the app" in step for step in described.next_steps)  # it has one already
    params = (root / "params.yaml").read_text(encoding="utf-8")
    assert "# promptloop configuration" in params and "notes:" in params  # comments kept
    assert len(load_golden(root / "datasets" / "notes" / "golden.jsonl")) == 3


def test_an_invalid_import_row_names_its_line_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    init_workspace(root)
    golden = root / "datasets" / "support-bot" / "golden.jsonl"
    before = golden.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("question,severity\nfine question,high\nsecond,urgent\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.csv: line 3\.severity"):
        import_golden(open_workspace(root), "support-bot", str(bad))
    assert golden.read_bytes() == before


def test_new_app_and_golden_import_from_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    init_workspace(root)
    cli = [str(Path(sys.executable).parent / "promptloop")]
    made = subprocess.run([*cli, "new-app", "triage", "-w", str(root), "--description", "routes tickets"],
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    assert "Next steps:" in made.stdout and "golden import" in made.stdout
    cases = tmp_path / "cases.jsonl"
    cases.write_text(textwrap.dedent("""\
        {"id": "t1", "inputs": {"question": "My invoice is wrong"}, "expectations": {"expected_facts": ["billing"]}}
        {"id": "t2", "input": "App crashes on start", "reference": "Routed to the bug team.", "slice": "bugs"}
        """), encoding="utf-8")
    imported = subprocess.run([*cli, "golden", "import", str(cases), "--app", "triage", "-w", str(root), "--json"],
                              capture_output=True, text=True, check=False)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["added"] == 2
    assert len(load_golden(root / "datasets" / "triage" / "golden.jsonl")) == 5


def test_an_mlflow_evaluation_dataset_becomes_golden_cases(tmp_path: Path) -> None:
    import mlflow
    from mlflow.genai.datasets import create_dataset

    root = tmp_path / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(workspace.tracking_uri)
    try:
        experiment = mlflow.get_experiment_by_name(workspace.experiment_name("support-bot"))
        assert experiment is not None
        dataset = create_dataset(name="regressions", experiment_id=experiment.experiment_id)
        dataset.merge_records([
            {"inputs": {"question": "Can I export my notes to PDF?"},
             "expectations": {"expected_response": "Yes, from the Share menu.", "guidelines": ["names the menu"]}},
            {"inputs": {"question": "Is there a dark mode?"}, "expectations": {"expected_facts": ["Settings"]}},
        ])
    finally:
        mlflow.set_tracking_uri(previous)
    before = len(load_golden(workspace.path(workspace.app_settings("support-bot").golden_set)))
    result = import_golden(workspace, "support-bot", "mlflow:regressions")
    assert (result.read, result.added) == (2, 2) and git.Repo(root).is_dirty() is False
    cases = load_golden(workspace.path(workspace.app_settings("support-bot").golden_set))
    assert len(cases) == before + 2
    export = next(c for c in cases if c.input == "Can I export my notes to PDF?")  # MLflow keeps no record order
    assert export.criteria == ["names the menu"] and export.source == "mlflow:regressions"
    with pytest.raises(InputError, match="no MLflow evaluation dataset named 'missing'"):
        import_golden(workspace, "support-bot", "mlflow:missing")


def test_a_messages_prompt_goes_into_mlflows_registry_and_comes_back_the_same(tmp_path: Path) -> None:
    from mlflow.entities.model_registry import PromptVersion as MlflowPromptVersion

    from promptloop.domain.prompts import PromptVersion
    from promptloop.workspace import registry
    from promptloop.workspace.tracking import tracking_client

    prompt = PromptVersion.model_validate({
        "app": "concierge", "version": 3, "parent": 2, "model": "offline/support-bot", "changelog": "tiers",
        "parameters": {"temperature": 0.1}, "response_format": {"type": "object", "properties": {}},
        "messages": [{"role": "system", "content": "Guest tier: {{ customer_tier }}."},
                     {"role": "user", "content": "{{question}}"}]})
    client = tracking_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = registry.register(client, "concierge", prompt)
    entity = client.get_prompt_version("concierge", version)
    rebuilt = registry.prompt_from_version("concierge", entity)
    assert rebuilt.content_hash == prompt.content_hash and rebuilt.messages == prompt.messages
    inputs = {"customer_tier": "gold", "question": "Late checkout?"}
    assert MlflowPromptVersion(name="concierge", version=version, template=entity.template).format(**inputs) == \
        prompt.render(inputs)
    assert registry.register(client, "concierge", prompt) == version  # the same content is registered once
