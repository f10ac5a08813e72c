"""A real ``ponder serve`` process on 127.0.0.1 for the serve tests, and KV-leak checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

STARTUP_S = 90.0  # importing torch and loading the model on a busy 2-core machine took up to ~15 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``ponder serve`` in a subprocess; :meth:`stop` always ends it."""

    def __init__(self, *args: str):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ponder-serve-{self.port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ponder", "serve", "--port", str(self.port), "--threads", "1",
             "--log-level", "warning", *args], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + STARTUP_S
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"ponder serve exited with {self.proc.returncode}: {self.read_log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ponder serve did not come up in {STARTUP_S} s: {self.read_log()}")
            time.sleep(0.2)

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=30.0).json()

    def wait_idle(self, timeout: float = 20.0) -> dict:
        """Wait until no request is live; then every KV page must be back in the pool."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["active_requests"] == 0 and h["queued_requests"] == 0:
                break
            assert time.monotonic() < deadline, f"requests still live after {timeout} s: {h}"
            time.sleep(0.05)
        assert h["kv"]["used"] == 0, f"KV pages leaked: {h['kv']}"
        assert h["num_sequences"] == 0, f"sequences leaked: {h}"
        assert h["sessions"] == 0, h
        return h

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server():
    srv = Server()
    try:
        yield srv
    finally:
        srv.stop()
