"""A loopback OpenAI-compatible server that behaves like a hosted model service.

It answers as the simulated bot, judge and optimizer do (the same deterministic answers for the same
request), but the way hosted models answer: a bearer key is required (401 without it), a 429 with
Retry-After comes in bursts, a 500 now and then, every response carries a usage block, a dated
model name and its processing time (`openai-processing-ms`), and judge verdicts come back fenced in
```json, wrapped in prose, after a reasoning model's `<think>` block holding a draft verdict it then
revises, with the score as "4" or 4.0 and the winner in lower case. A repair turn (the model's own reply
and what was wrong with it) gets the plain verdict, as a real model that is told what was wrong usually gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from promptloop.core.text import estimate_tokens
from promptloop.demo.simulated import bot, judge, optimizer

RESPONDERS = {
    "sim-bot": bot.answer,
    "sim-judge": judge.verdict,
    "sim-optimizer": lambda messages, temperature, rng: optimizer.revise(messages, rng),
}


@dataclass
class Behaviour:
    """How hosted-like the server is: the share of verdicts mangled, 429 bursts and 500s."""

    mangled_share: float = 0.0  # verdicts fenced, in prose, after <think>, "4" / 4.0, lower-case winners
    unreadable_share: float = 0.0  # verdicts in prose with no JSON at all (a repair turn gets them right)
    rate_limited_share: float = 0.0
    server_error_share: float = 0.0
    burst: int = 4  # a 429 hits the next few requests too, as a provider's window does
    echo_key: bool = False  # every request refused with a 400 that repeats the key it was sent


@dataclass
class HostedProvider:
    """The server, its counters and the key it requires."""

    key: str
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    mangled: int = 0
    unreadable: int = 0
    repairs: int = 0
    keys_seen: set[str] = field(default_factory=set)
    _burst_left: int = 0
    _seen: Counter[str] = field(default_factory=Counter)

    def verdict_shape(self, text: str, digest: str) -> str:
        """The verdict as a hosted judge may send it; bare JSON for the unlucky share of none."""
        rng = random.Random(f"shape|{digest}")
        roll = rng.random()
        if roll < self.behaviour.unreadable_share:
            self.unreadable += 1
            return "Looking at the answer carefully, I would say it deserves a solid grade."
        if roll >= self.behaviour.unreadable_share + self.behaviour.mangled_share:
            return text
        self.mangled += 1
        data = json.loads(text)
        if "score" in data:
            data["score"] = rng.choice([str(data["score"]), float(data["score"]), data["score"]])
        if "winner" in data:
            data["winner"] = data["winner"].lower()
        body = json.dumps(data, ensure_ascii=False)
        # A reasoning model thinks first, drafting a verdict it then revises (only the one after counts).
        draft = json.dumps({**data, "score": 6 - int(float(data["score"])), "passed": not data.get("passed")}
                           if "score" in data else
                           {**data, "winner": "B" if str(data.get("winner")).upper() == "A" else "A"})
        thinking = f"<think>\nFirst pass: {draft}\nRe-reading the answer, that was wrong.\n</think>\n"
        return rng.choice([f"```json\n{body}\n```", f"Here is my verdict:\n{body}\nI hope this helps.",
                           f"Sure.\n```\n{body}\n```", body, thinking + body])

    def fault(self, digest: str) -> int | None:
        """A 429 (in bursts) or a 500 for the first attempt of some requests; retries go through."""
        self._seen[digest] += 1
        if self._seen[digest] > 1:
            return None
        if self._burst_left > 0:
            self._burst_left -= 1
            return 429
        rng = random.Random(f"fault|{digest}")
        roll = rng.random()
        if roll < self.behaviour.rate_limited_share:
            self._burst_left = self.behaviour.burst - 1
            return 429
        if roll < self.behaviour.rate_limited_share + self.behaviour.server_error_share:
            return 500
        return None

    async def chat(self, request: web.Request) -> web.Response:
        self.requests += 1
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        self.keys_seen.add(given)
        if self.behaviour.echo_key:
            self.refused["400"] += 1
            return web.json_response({"error": {"message": f"Request for key {given} rejected: bad parameter",
                                                "type": "invalid_request_error"}}, status=400)
        if given != self.key:
            self.refused["401"] += 1
            return web.json_response({"error": {"message": "Incorrect API key provided.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}},
                                     status=401)
        body = await request.json()
        model = body["model"]
        responder = RESPONDERS.get(model)
        if responder is None:
            return web.json_response({"error": {"message": f"The model `{model}` does not exist"}}, status=404)
        messages = body["messages"]
        digest = hashlib.sha256(json.dumps([model, messages, body.get("seed")], sort_keys=True).encode()).hexdigest()
        status = self.fault(digest)
        if status == 429:
            self.refused["429"] += 1
            return web.json_response({"error": {"message": "Rate limit reached for requests", "type": "requests"}},
                                     status=429, headers={"Retry-After": "0.05"})
        if status == 500:
            self.refused["500"] += 1
            return web.json_response({"error": {"message": "The server had an error", "type": "server_error"}},
                                     status=500)
        seed = body.get("seed")
        request_key = f"{seed}|{model}|{json.dumps(messages, sort_keys=True)}"
        rng = random.Random(request_key) if seed is not None else random.Random()
        text = responder(messages, float(body.get("temperature", 1.0)), rng)
        repair = any(m["role"] == "assistant" for m in messages)
        self.repairs += repair
        if model == "sim-judge" and not repair:
            text = self.verdict_shape(text, digest)
        prompt_tokens = sum(estimate_tokens(m.get("content") or "") + 4 for m in messages)
        completion_tokens = estimate_tokens(text)
        return web.json_response({
            "id": f"chatcmpl-{digest[:24]}", "object": "chat.completion", "created": 1764633600,
            "model": f"{model}-2024-08-06", "system_fingerprint": "fp_0123456789",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, headers={"openai-processing-ms": str(processing_ms(digest))})


def processing_ms(digest: str) -> int:
    """The time the server says it took, as OpenAI's `openai-processing-ms` header does: 180-219 ms, a fixed
    function of the request (the same request always reports the same time, whatever the host's load)."""
    return 180 + int(digest[:8], 16) % 40


class Serving:
    """The provider on a loopback port, in a thread of its own, for the length of a `with` block."""

    def __init__(self, provider: HostedProvider) -> None:
        self.provider = provider
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base_url = ""

    def __enter__(self) -> Serving:
        self.thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=60)
        return self

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.provider.chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)
