"""A local fake OpenAI-compatible server (stdlib only): Chat Completions and Responses, JSON and
SSE streams. It records every request body; a user message containing FAIL400 gets a 400."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = "Here is my answer, friend."


def _last_user_text(body: dict) -> str:
    msgs = body.get("messages")
    if msgs:
        for m in reversed(msgs):
            if m.get("role") == "user":
                return m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])
    inp = body.get("input")
    return inp if isinstance(inp, str) else json.dumps(inp or "")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for name, payload in events:
            chunk = ""
            if name:
                chunk += f"event: {name}\n"
            chunk += f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        self.server.requests.append({"path": self.path, "body": body})
        self.path = self.path.split("?", 1)[0]  # Azure adds ?api-version=
        if "FAIL400" in _last_user_text(body):
            return self._json(400, {"error": {"message": "bad request from the model", "type": "invalid_request_error",
                                              "param": None, "code": None}})
        words = REPLY.split(" ")
        if self.path.endswith("/chat/completions"):
            if body.get("stream"):
                events = [(None, {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                                  "choices": [{"index": 0, "delta": {"role": "assistant", "content": w + (" " if i < len(words) - 1 else "")},
                                               "finish_reason": None}]})
                          for i, w in enumerate(words)]
                events.append((None, "[DONE]"))
                return self._sse(events)
            return self._json(200, {
                "id": "c1", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            })
        if self.path.endswith("/responses"):
            response = {
                "id": "resp_1", "object": "response", "created_at": 0, "model": "fake", "status": "completed",
                "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}],
                "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
            }
            if body.get("stream"):
                events = [("response.output_text.delta",
                           {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                            "content_index": 0, "delta": w + (" " if i < len(words) - 1 else ""),
                            "sequence_number": i + 1, "logprobs": []})
                          for i, w in enumerate(words)]
                events.append(("response.completed", {"type": "response.completed", "response": response,
                                                      "sequence_number": len(words) + 1}))
                return self._sse(events)
            return self._json(200, response)
        return self._json(404, {"error": {"message": "no such path"}})


class FakeOpenAI:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> list:
        return self.server.requests

    def system_text(self, index: int = -1) -> str:
        """The system messages (chat) or instructions (responses) of a recorded request."""
        body = self.requests[index]["body"]
        if "messages" in body:
            return "\n".join(m["content"] for m in body["messages"] if m.get("role") == "system")
        return body.get("instructions") or ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
