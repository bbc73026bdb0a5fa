"""A small OpenAI-compatible HTTP server on loopback: real HTTP, real server-sent-event streaming.

OpenAI itself is unreachable here, so the LLM path is tested against this peer instead of patching
the client. Answers are scripted: `enqueue("text")` sets what the next chat completion says; with
an empty queue it answers with a default that quotes the first source it was given. Every request
body is recorded in `requests`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """Start with `FakeOpenAI().start()`; `base_url` is what OPENAI_BASE_URL takes."""

    def __init__(self, chunk_delay: float = 0.0) -> None:
        self.answers: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.chunk_delay = chunk_delay
        self.fail_next: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-openai")

    @property
    def base_url(self) -> str:
        """The /v1 root clients point at."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def enqueue(self, *answers: str) -> None:
        """Script the next chat completions."""
        self.answers.extend(answers)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer_for(self, body: dict[str, Any]) -> str:
        if self.answers:
            return self.answers.popleft()
        last = body["messages"][-1]["content"] if body.get("messages") else body.get("prompt", "")
        if isinstance(last, list):
            last = " ".join(part.get("text", "") for part in last if isinstance(part, dict))
        match = re.search(r"\[1\] ([^\n]+):\n([^\n]{0,80})", last)
        if match:
            return f"According to {match.group(1)}, {match.group(2).strip()} [1]"
        return "I do not know."

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                body["_path"] = self.path
                body["_auth"] = self.headers.get("Authorization", "")
                fake.requests.append(body)
                if fake.fail_next:
                    status, fake.fail_next = fake.fail_next, None
                    self._json(status, {"error": {"message": "scripted failure", "type": "server_error"}})
                    return
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"unknown path {self.path}"}})
                    return
                text = fake._answer_for(body)
                created = int(time.time())
                if not body.get("stream"):
                    self._json(
                        200,
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "created": created,
                            "model": body.get("model", "fake-model"),
                            "choices": [
                                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                pieces = re.findall(r"\S+\s*", text) or [text]
                for i, piece in enumerate(pieces):
                    delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                    chunk = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": body.get("model", "fake-model"),
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if fake.chunk_delay:
                        time.sleep(fake.chunk_delay)
                end = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.get("model", "fake-model"),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        return Handler


if __name__ == "__main__":  # a peer for trying the app by hand: python -m tests.fakes.openai_server
    server = FakeOpenAI().start()
    print(f"OPENAI_BASE_URL={server.base_url}", flush=True)
    threading.Event().wait()
