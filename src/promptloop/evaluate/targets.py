"""App targets: what answers a golden case for a prompt version (`apps.<app>.target`).

- `template` (default): the prompt rendered with the case's inputs (a retriever, when the app has a
  knowledge base, fills `context`), one call through the runner.
- `python:package.module:function`: the user's own code, sync or async, called as
  `function(prompt, inputs)`. `prompt` is a `TargetPrompt`: the candidate version, a `render()` of it
  and a `complete()` that calls a model through promptloop's runner, so the cache, retries, budget,
  rate limits and keys apply to the app's calls too. It returns the answer text, or a mapping / object
  with `output` and optionally `context`, `tool_calls` and other fields for scorers.
- `http(s)://...`: POST `{"prompt": {messages, model, parameters, ...}, "inputs": {...}}` to an app in
  any language; the reply is `{"output": "...", "context": "..."}`. Cached, retried, timed out and
  bounded like model calls.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from promptloop.core.errors import InputError
from promptloop.domain.app import App, as_inputs
from promptloop.domain.golden import GoldenCase
from promptloop.domain.kb import Retriever
from promptloop.domain.prompts import Message, PromptVersion, input_text
from promptloop.evaluate.scorers import Answer
from promptloop.llm.client import Completion
from promptloop.llm.runner import BudgetExceeded, CallFailed, Runner


@dataclass(frozen=True)
class Request:
    """What a target is asked: one case, for one prompt version on one model."""

    purpose: str  # usage is counted under it (app:<contender>)
    prompt: PromptVersion
    model: str
    case: GoldenCase
    seed: int


class Target(Protocol):
    """Answers one golden case for one prompt version."""

    async def answer(self, runner: Runner, request: Request) -> Answer: ...

    def close(self) -> None:
        """Release what the target holds (threads) once the run is over."""


def answer_of(text: str, context: str, completions: list[Completion], retrieved: tuple[str, ...] = (),
              latency_ms: float | None = None, extra: Mapping[str, object] | None = None) -> Answer:
    """An Answer whose cost, tokens and provider-reported time are the sum of the calls that made it."""
    return Answer(text, context, retrieved,
                  latency_ms if latency_ms is not None else sum(c.latency_ms for c in completions),
                  sum(c.cost_usd or 0.0 for c in completions), sum(c.prompt_tokens for c in completions),
                  sum(c.completion_tokens for c in completions), dict(extra or {}),
                  reported_ms(completions), len(completions))


def reported_ms(completions: list[Completion]) -> float | None:
    """The provider-reported time of the calls (they run one after another in a target): None when there
    were none, or when any call reported no time (a partial sum would understate the answer's latency)."""
    if not completions or any(c.provider_ms is None for c in completions):
        return None
    return sum(c.provider_ms for c in completions if c.provider_ms is not None)


@dataclass
class TemplateTarget:
    """The prompt rendered with the case's inputs (retrieval into `context`), one model call."""

    retriever: Retriever | None = None
    top_k: int = 3

    def close(self) -> None:
        pass

    async def answer(self, runner: Runner, request: Request) -> Answer:
        app = App("", request.prompt, request.model, self.retriever, self.top_k)
        messages, retrieved = app.messages(request.case.inputs)
        parameters = {**request.prompt.parameters, "seed": request.seed}
        completion = await runner.complete(request.purpose, request.model, messages,
                                           schema=request.prompt.response_format, **parameters)
        # What the judge is shown as the retrieved context: the system message that holds it.
        context = messages[0]["content"] if self.retriever else ""
        return answer_of(completion.text, context, [completion], tuple(retrieved), completion.latency_ms)


@dataclass
class TargetPrompt:
    """The prompt version a `python:` target is given: render it, and call models through the runner."""

    version: PromptVersion
    model: str
    inputs: dict[str, object]
    runner: Runner
    purpose: str
    seed: int
    loop: asyncio.AbstractEventLoop
    completions: list[Completion] = field(default_factory=list)

    @property
    def variables(self) -> frozenset[str]:
        return self.version.variables

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.version.parameters)

    def render(self, **values: object) -> list[Message]:
        """The prompt's messages for this case's inputs, `values` added or overriding (e.g. `context=...`)."""
        return self.version.render({**self.inputs, **values})

    def format(self, **values: object) -> list[Message]:
        """`render`, under the name MLflow's prompt registry uses."""
        return self.render(**values)

    async def acomplete(self, messages: list[Message] | None = None, *, model: str | None = None,
                        schema: dict[str, Any] | None = None, **parameters: Any) -> str:
        """A model's answer through promptloop's runner (cached, retried, budgeted): by default this prompt's
        rendered messages, on its model, with its parameters and the evaluation's seed."""
        completion = await self.runner.complete(
            self.purpose, model or self.model, messages if messages is not None else self.render(),
            schema=schema if schema is not None else self.version.response_format,
            **{**self.version.parameters, "seed": self.seed, **parameters})
        self.completions.append(completion)
        return completion.text

    def complete(self, messages: list[Message] | None = None, *, model: str | None = None,
                 schema: dict[str, Any] | None = None, **parameters: Any) -> str:
        """`acomplete` for a sync target function (which runs in a worker thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("prompt.complete() is for sync target functions: an async one awaits prompt.acomplete()")
        future = asyncio.run_coroutine_threadsafe(self.acomplete(messages, model=model, schema=schema, **parameters),
                                                  self.loop)
        return future.result()


_RESULT_FIELDS = ("output", "answer", "context", "retrieved", "tool_calls")


def target_result(result: object, where: str) -> tuple[str, str, tuple[str, ...], dict[str, object]]:
    """(answer text, context, retrieved ids, extra fields) of what a target function returned."""
    if isinstance(result, str):
        return result, "", (), {}
    data = dict(result) if isinstance(result, Mapping) else {
        name: getattr(result, name) for name in dir(result) if not name.startswith("_")
        and not callable(getattr(result, name))}
    output = data.get("output", data.get("answer"))
    if not isinstance(output, str):
        raise TypeError(f"{where} returned {type(result).__name__} without an `output` string: return the answer "
                        "text, or a mapping/object with `output` (and optionally `context`, `tool_calls`)")
    context = data.get("context") or ""
    retrieved = tuple(str(r) for r in data.get("retrieved") or ())
    extra = {k: v for k, v in data.items() if k not in _RESULT_FIELDS}
    if data.get("tool_calls") is not None:
        extra["tool_calls"] = data["tool_calls"]
    return output, context if isinstance(context, str) else input_text(context), retrieved, extra


class AppFailed(CallFailed):
    """The app's own code raised, or returned no answer, on a case: the evaluation stops there (fail-closed, as
    for a provider failing past its retries), naming the target, the case and where the app failed."""


def app_frames(error: BaseException) -> list[traceback.FrameSummary]:
    """The frames of `error`'s traceback in the app's own code: not promptloop's, the standard library's or an
    installed package's (those only when nothing else is left)."""
    ours = (str(Path(__file__).resolve().parents[1]), sysconfig.get_paths()["stdlib"])
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(ours)]
    return [f for f in frames if "site-packages" not in f.filename] or frames


def app_failure(spec: str, request: Request, error: BaseException) -> str:
    """What the app did wrong on the request's case, with the last line of the app's code the error passed."""
    frames = app_frames(error)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return (f"{spec} failed on case {request.case.id} ({request.purpose}): "
            f"{type(error).__name__}: {error}{where}")


@dataclass
class PythonTarget:
    """`python:package.module:function`: the user's code answers, calling models through `prompt.complete`."""

    spec: str
    function: Callable[..., Any]
    threads: int = 32  # sync functions run at once (each mostly waits for its model calls)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _threads(self) -> ThreadPoolExecutor:
        """The target's own threads: a sync function blocks its thread until its model calls return, and
        litellm runs part of each call on the loop's default executor, which blocked functions must not fill."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="promptloop-target")
        return self._pool

    async def answer(self, runner: Runner, request: Request) -> Answer:
        inputs = as_inputs(request.case.inputs)
        prompt = TargetPrompt(request.prompt, request.model, inputs, runner, request.purpose, request.seed,
                              asyncio.get_running_loop())
        started = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(prompt, dict(inputs))
            else:
                result = await asyncio.get_running_loop().run_in_executor(self._threads(), self.function, prompt,
                                                                          dict(inputs))
            took_ms = (time.perf_counter() - started) * 1000
            text, context, retrieved, extra = target_result(result, self.spec)
        except (CallFailed, BudgetExceeded):
            raise  # the runner's own (a model call failing past its retries, the budget spent): as they are
        except Exception as error:  # noqa: BLE001 - any error of the app's code is that app's failure on this case
            raise AppFailed(runner.api_keys.redact(app_failure(self.spec, request, error))) from error
        # Wall-clock latency (informational): the model calls' own when there were any, else the function's.
        latency = sum(c.latency_ms for c in prompt.completions) if prompt.completions else took_ms
        return answer_of(text, context, prompt.completions, retrieved, latency, extra)


def read_reply(text: str) -> dict[str, Any]:
    """An HTTP target's reply: a JSON object with an `output` string; anything else raises ValueError."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("output"), str):
        raise ValueError('expected a JSON object {"output": "<the answer>", "context": "..."}')
    return data


@dataclass
class HttpTarget:
    """`http(s)://...`: the app's own endpoint answers; promptloop sends the rendered prompt and the inputs."""

    url: str

    def close(self) -> None:
        pass

    async def answer(self, runner: Runner, request: Request) -> Answer:
        prompt = request.prompt
        inputs = as_inputs(request.case.inputs)
        payload = {"prompt": {"app": prompt.app, "version": prompt.version, "model": request.model,
                              "parameters": {**prompt.parameters, "seed": request.seed},
                              "messages": prompt.render(inputs), "response_format": prompt.response_format},
                   "inputs": inputs}
        completion = await runner.post_json(request.purpose, self.url, payload, validate=read_reply)
        reply = read_reply(completion.text)
        extra = {k: v for k, v in reply.items() if k not in ("output", "context")}
        context = reply.get("context") or ""
        return answer_of(reply["output"], context if isinstance(context, str) else input_text(context), [completion],
                         extra=extra)


def load_function(spec: str, root: Path, field_name: str) -> Callable[..., Any]:
    """The function a `python:package.module:function` target names, importable from the workspace or sys.path."""
    path = spec.removeprefix("python:")
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise InputError(root / "params.yaml", f"{spec!r}: expected python:package.module:function", field=field_name)
    if str(root) not in sys.path:  # the app's code may live in the workspace, as a package of its own
        sys.path.insert(0, str(root))
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise InputError(root / "params.yaml", f"cannot load {spec!r}: {exc}", field=field_name) from None
    if not callable(found):
        raise InputError(root / "params.yaml", f"{spec!r} is not a function", field=field_name)
    return found


def build_target(app: str, spec: str, root: Path, retriever: Retriever | None, top_k: int) -> Target:
    """The target `apps.<app>.target` names."""
    if spec == "template":
        return TemplateTarget(retriever, top_k)
    if spec.startswith(("http://", "https://")):
        return HttpTarget(spec)
    return PythonTarget(spec, load_function(spec, root, f"apps.{app}.target"))

