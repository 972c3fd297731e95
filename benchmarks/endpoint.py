"""A loopback OpenAI-compatible chat-completions endpoint that answers after a fixed latency.

It runs in its own process (so its CPU never competes with the event loop being measured) and
answers `POST /v1/chat/completions` (and `/chat/completions`) after exactly `latency_s`, with a
deterministic answer derived from a hash of the request:

* system message mentions "grade"      -> JSON `{"score": 1..5, "passed": score >= 4, "reason": ...}`
* user message contains `<answer_a>`   -> JSON `{"winner": "A"|"B"|"tie", "reason": ...}`
* anything else                        -> a short plain-text answer

Usage::

    with endpoint(0.1) as base_url:            # base_url = "http://127.0.0.1:<port>/v1"
        ...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

ANSWERS = (
    "Use File > Export to PDF, then pick the page size.",
    "Open Settings > Sharing and turn on link sharing.",
    "Reinstall the desktop app; your notebooks stay in the cloud.",
    "Press Ctrl+K to search every notebook at once.",
)
WINNERS = ("A", "B", "tie")


def request_digest(body: dict[str, Any]) -> int:
    """A stable integer from the request's model and messages: same request, same answer."""
    canonical = json.dumps([body.get("model"), body.get("messages")], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")


def message_text(messages: list[dict[str, Any]], role: str) -> str:
    """All text content of the messages with `role` (string or content-part lists)."""
    parts: list[str] = []
    for message in messages:
        if message.get("role") != role:
            continue
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "\n".join(parts)


def answer_for(body: dict[str, Any]) -> str:
    """The deterministic answer content for one chat request."""
    messages = body.get("messages") or []
    digest = request_digest(body)
    if "grade" in message_text(messages, "system").lower():
        score = digest % 5 + 1
        return json.dumps({"score": score, "passed": score >= 4, "reason": f"graded {score} of 5"})
    if "<answer_a>" in message_text(messages, "user"):
        winner = WINNERS[digest % 3]
        return json.dumps({"winner": winner, "reason": f"{winner} answers the question more directly"})
    return ANSWERS[digest % len(ANSWERS)]


def token_estimate(text: str) -> int:
    """Roughly four characters a token: enough for plausible `usage`."""
    return max(1, len(text) // 4)


def completion_body(body: dict[str, Any], content: str) -> dict[str, Any]:
    """A valid OpenAI chat.completion object (non-streaming) with usage."""
    prompt_tokens = sum(token_estimate(str(m.get("content") or "")) + 4 for m in body.get("messages") or [])
    completion_tokens = token_estimate(content)
    return {
        "id": f"chatcmpl-{request_digest(body):016x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def make_app(latency_s: float) -> web.Application:
    """The aiohttp application: two chat-completion routes, a health check and its own CPU use."""
    served = [0]

    async def chat(request: web.Request) -> web.Response:
        started = time.perf_counter()
        served[0] += 1
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response(
                {"error": {"message": "invalid JSON", "type": "invalid_request_error"}}, status=400
            )
        payload = completion_body(body, answer_for(body))
        # Sleep what is left of the latency so the answer time does not include our own parsing.
        await asyncio.sleep(max(0.0, latency_s - (time.perf_counter() - started)))
        return web.json_response(payload)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        # Lets a benchmark tell the endpoint's CPU from other load on the machine.
        return web.json_response({"cpu_s": time.process_time(), "requests": served[0]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


def serve(sock: socket.socket, latency_s: float) -> None:
    """Serve forever on an already bound socket (the child process's entry point)."""
    try:
        import uvloop  # faster loop if present; the server must not be the bottleneck

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(latency_s), sock=sock, print=None, access_log=None, handle_signals=True,
                backlog=1024)


def free_socket() -> socket.socket:
    """A listening-ready socket bound to 127.0.0.1 on a port the OS picked (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_until_up(port: int, process: multiprocessing.process.BaseProcess, timeout_s: float = 15.0) -> None:
    """Block until the server accepts connections; fail at once if its process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise RuntimeError(f"endpoint process exited with code {process.exitcode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"endpoint on port {port} did not come up in {timeout_s} s")


def start_endpoint(latency_s: float) -> tuple[str, Callable[[], None]]:
    """Start the endpoint in a child process; returns (base_url ending in /v1, stop)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    # spawn, not fork: the parent may already hold threads and an event loop.
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(sock, latency_s), daemon=True,
                                                          name="bench-endpoint")
    process.start()
    sock.close()  # the child holds its own copy
    try:
        wait_until_up(port, process)
    except RuntimeError:
        process.kill()
        process.join()
        raise

    def stop() -> None:
        if process.is_alive():
            process.terminate()  # SIGTERM: aiohttp shuts down cleanly
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()

    return f"http://127.0.0.1:{port}/v1", stop


@contextmanager
def endpoint(latency_s: float) -> Iterator[str]:
    """The endpoint for the duration of a `with` block; yields its base URL."""
    base_url, stop = start_endpoint(latency_s)
    try:
        yield base_url
    finally:
        stop()


async def _load(base_url: str, requests: int, concurrency: int) -> float:
    """Requests per second with `concurrency` clients (raw aiohttp, to check the server alone)."""
    import aiohttp

    body = {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}]}
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> None:
            async with gate:
                message = {**body, "messages": [{"role": "user", "content": f"hello {i}"}]}
                async with session.post(f"{base_url}/chat/completions", json=message) as response:
                    response.raise_for_status()
                    await response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return requests / (time.perf_counter() - started)


def main() -> None:
    """Self-check: throughput of the endpoint at zero latency and with `--latency`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with endpoint(args.latency) as base_url:
        rate = asyncio.run(_load(base_url, args.requests, args.concurrency))
    print(f"{rate:.0f} req/s with {args.concurrency} clients at latency {args.latency} s ({base_url})")


if __name__ == "__main__":
    main()
