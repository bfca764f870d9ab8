"""A local HTTP server that speaks Gemini's generateContent (the REST protocol google-genai uses),
and the filter job run as a subprocess against it. Shared by the tests of the Gemini backend: no SDK
internals are mocked, google-genai talks HTTP to this server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vip.prompts.instructions import DYNAMIC_MOTION

KEY = "sk-test-SECRET-0123456789"
from helpers.paths import ROOT  # noqa: E402


def score_of(prompt: str, instruction: str) -> int:
    """The fake model's opinion: a number in the prompt, else 3 for dynamic motion, 2 for quality."""
    digits = [c for c in prompt if c.isdigit()]
    return int(digits[-1]) % 4 if digits else (3 if instruction == "dynamic_motion" else 2)


class FakeGemini(ThreadingHTTPServer):
    """generateContent on 127.0.0.1. `behave(prompt, instruction, n)` -> what to do with the n-th
    (0-based) request for that (prompt, instruction): ("ok", text) | ("status", code) |
    ("sleep", seconds) | ("raw", bytes)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        self.delay_s = 0.0
        self.behave = lambda prompt, instruction, n: ("ok", f"Reasoning...\n[RESULT] {score_of(prompt, instruction)}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_POST(self):
        server: FakeGemini = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        text = body["contents"][0]["parts"][0]["text"]
        prompt = text.split("### Prompt:\n", 1)[1]
        instruction = "dynamic_motion" if text.startswith(DYNAMIC_MOTION) else "visual_quality"
        with server.lock:
            n = server.seen[(prompt, instruction)]
            server.seen[(prompt, instruction)] += 1
            server.requests.append({"path": self.path, "key": self.headers.get("x-goog-api-key"),
                                    "prompt": prompt, "instruction": instruction, "body": body})
        if server.delay_s:
            time.sleep(server.delay_s)
        kind, arg = server.behave(prompt, instruction, n)
        if kind == "sleep":
            time.sleep(arg)
            kind, arg = "ok", "[RESULT] 1"
        if kind == "ok":
            self._send(200, json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": arg}]},
                                                        "finishReason": "STOP"}]}).encode())
        elif kind == "status":
            status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 400: "INVALID_ARGUMENT",
                      403: "PERMISSION_DENIED"}[arg]
            self._send(arg, json.dumps({"error": {"code": arg, "message": "fake", "status": status}}).encode())
        else:
            self._send(200, arg)


@contextmanager
def serving():
    """A FakeGemini answering on a background thread for the duration of the block."""
    s = FakeGemini()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def run_filter_job(cwd: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    """jobs/filter_prompts.py on configs/toyvid.yaml as a subprocess (progress off, the answer cache
    under cwd/cache unless filter.cache says otherwise), with the API key in its environment or not."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(OMP_NUM_THREADS="1", VIP_CACHE_DIR=str(cwd / "cache"), PYTHONPATH=str(ROOT))
    if key:
        env["GEMINI_API_KEY"] = key
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "filter_prompts.py"), "--config",
                           str(ROOT / "configs" / "toyvid.yaml"), "runtime.progress=false", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
