"""Trust boundaries: what a prompt file may ask, what a name or path may be, where a key may appear,
where a webhook may go, and how much of a log line is read."""

from __future__ import annotations

import http.server
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from promptloop.analyze.stage import send_webhook
from promptloop.collect.sources import _Pending, read_jsonl_rows
from promptloop.collect.stage import source_from_uri
from promptloop.core.config import check_identifier
from promptloop.core.errors import InputError
from promptloop.core.secrets import REDACTED, redact_secrets, remember_secret
from promptloop.domain.prompts import load_prompt
from promptloop.domain.results import AlertResult
from promptloop.evaluate.stage import metrics_path

from conftest import REPO

FAKE_KEY = "sk-live-0123456789abcdefFAKE"


@pytest.mark.parametrize("name", ["api_base", "base_url", "api_key", "extra_headers", "custom_llm_provider",
                                  "api_version", "timeout", "mock_response"])
def test_a_prompt_may_not_say_where_or_with_which_key_a_model_is_called(tmp_path: Path, name: str) -> None:
    prompt = yaml.safe_load((REPO / "prompts/support-bot/prompt.yaml").read_text())
    prompt["parameters"][name] = FAKE_KEY
    path = tmp_path / "candidate.yaml"
    path.write_text(yaml.safe_dump(prompt))
    with pytest.raises(InputError) as caught:
        load_prompt(path)
    assert caught.value.field == "parameters" and f"{name} not allowed" in str(caught.value)
    assert FAKE_KEY not in str(caught.value)


def test_a_prompt_keeps_its_sampling_parameters(tmp_path: Path) -> None:
    prompt = yaml.safe_load((REPO / "prompts/support-bot/prompt.yaml").read_text())
    prompt["parameters"] |= {"top_p": 0.9, "seed": 3, "stop": ["\n\n"], "response_format": {"type": "json_object"}}
    path = tmp_path / "candidate.yaml"
    path.write_text(yaml.safe_dump(prompt))
    assert load_prompt(path).parameters["top_p"] == 0.9


@pytest.mark.parametrize("name", ["../etc", "-rf", "a/b", "Support-Bot", "a..b", "", "x" * 65, "bot\n"])
def test_names_that_become_paths_branches_and_tags_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not usable"):
        check_identifier(name, "an app name")


def test_ordinary_names_are_kept() -> None:
    assert [check_identifier(n, "an app name") for n in ("support-bot", "bot2", "hr.faq_v1")] == [
        "support-bot", "bot2", "hr.faq_v1"]


def test_keys_resolved_or_held_in_key_like_variables_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-abcdefghijklmnop")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HOME_DIRECTORY", "/home/someone-long")  # not a secret by its name
    remember_secret("from-a-prefect-secret-block")
    text = ("401: key sk-ant-abcdefghijklmnop rejected; tok-1234567890 expired; from-a-prefect-secret-block; "
            "/home/someone-long")
    assert redact_secrets(text) == (f"401: key {REDACTED} rejected; {REDACTED} expired; {REDACTED}; "
                                    "/home/someone-long")


def test_a_source_outside_the_workspace_needs_allow_outside(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    (root / "incoming").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "a.jsonl").write_text("{}\n")
    for uri in (str(elsewhere / "a.jsonl"), "../elsewhere/*.jsonl", str(elsewhere)):
        with pytest.raises(InputError, match="outside the workspace: pass --allow-outside"):
            source_from_uri(uri, root, allow_outside=False)
        source_from_uri(uri, root, allow_outside=True)
    source_from_uri("incoming", root, allow_outside=False)


def test_a_metrics_file_stays_inside_the_workspace() -> None:
    assert metrics_path(Path("metrics/eval.json")) == Path("metrics/eval.json")
    for outside in ("../eval.json", "/tmp/eval.json"):
        with pytest.raises(InputError, match="inside the workspace"):
            metrics_path(Path(outside))


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    redirect_to: str | None = None

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        if self.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.redirect_to)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[Recorder]) -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_alerts_go_to_the_configured_webhook_and_a_redirect_elsewhere_is_not_followed() -> None:
    alert = AlertResult(metric="error_rate", value=0.2, threshold=0.05, rule="max", previous=None, message="high")
    target = type("Target", (Recorder,), {"hits": [], "redirect_to": None})
    with serving(target) as elsewhere:
        redirecting = type("Redirecting", (Recorder,), {"hits": [], "redirect_to": f"{elsewhere}/stolen"})
        with serving(redirecting) as configured:
            sent = send_webhook(f"{configured}/alerts", "support-bot", [alert])
    assert sent is not None and not sent.sent and "307" in (sent.error or "")
    assert redirecting.hits == ["/alerts"] and target.hits == []


def test_a_log_line_over_the_limit_is_quarantined_without_being_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    with path.open("wb") as handle:
        handle.write(b'{"id": "a"}\n')
        handle.write(b'{"id": "big", "input": "' + b"x" * 20_000_000 + b'"}\n')
        handle.write(b'{"id": "c"}\n')
    pending = _Pending()
    tracemalloc.start()
    try:
        list(read_jsonl_rows(path, 0, pending, max_rows=1_000, label="logs.jsonl", max_line_bytes=100_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pending.columns["id"] == ["a", "c"]
    [too_long] = pending.unreadable
    assert too_long.origin == "logs.jsonl:2" and too_long.reason.startswith("line_too_long: 20,000,027 bytes")
    assert pending.offset_after == path.stat().st_size  # read past, not waiting for it
    # Reading the line whole would hold 20 MB; the bound leaves room for whatever other threads of the
    # test process allocate meanwhile (tracemalloc counts them all).
    assert peak < 5_000_000


def test_a_key_pasted_into_extra_is_refused_without_being_echoed() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["llm"]["models"]["openai/*"]["extra"] = {"api_key": FAKE_KEY}
    from promptloop.core.config import parse_params

    with pytest.raises(InputError) as caught:
        parse_params(params, "params.yaml")
    assert "may not go in extra" in str(caught.value) and FAKE_KEY not in str(caught.value)


def test_label_columns_are_redacted_once_per_value_and_counted_per_row() -> None:
    import pandas as pd

    from promptloop.quality.redact import build_redactor

    models = pd.Series(["offline/bot", "bot for kim@example.com", "bot for kim@example.com", None])
    redacted, counts = build_redactor({}).redact_labels(models)
    assert redacted.tolist()[:3] == ["offline/bot", "bot for <EMAIL>", "bot for <EMAIL>"]
    assert pd.isna(redacted.iloc[3]) and redacted.dtype == models.dtype
    assert counts == {"EMAIL": 2}
