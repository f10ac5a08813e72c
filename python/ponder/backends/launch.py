"""Start and stop a local vLLM OpenAI-compatible server (for tests and benchmarks).

:class:`VLLMServer` runs ``python -m vllm.entrypoints.openai.api_server`` with a given Python
(vLLM usually lives in its own venv), on 127.0.0.1 and a free port, waits for ``/health`` and
stops the server and its engine process on exit, whatever happened in between.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import List, Optional, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class VLLMServer:
    """``with VLLMServer(python, model_dir) as url: ...`` serves ``model_dir`` as ``name``.

    The CPU settings are those vLLM's CPU build needs here: float32, eager mode, a 2 GiB KV
    cache (``VLLM_CPU_KVCACHE_SPACE``), prefix caching with cached-token counts in the usage
    reports. ``start_timeout_s``: how long to wait for ``/health`` (2-3 minutes seen on 2 CPU
    cores). ``log``: the server's log file (a temporary file by default; its tail is in the
    error when the server does not come up).
    """

    def __init__(self, python: str, model_dir: str, name: str = "smollm2", *, max_model_len: int = 2048,
                 kv_cache_gib: int = 2, start_timeout_s: float = 600, log: Optional[str] = None,
                 extra_args: Sequence[str] = ()):
        for arg, path in (("python", python), ("model_dir", model_dir)):
            if not isinstance(path, str) or not os.path.exists(path):
                raise FileNotFoundError(f"{arg}: no such file or directory: {path!r}")
        self.python, self.model_dir, self.name = python, model_dir, name
        self.max_model_len, self.kv_cache_gib, self.start_timeout_s = max_model_len, kv_cache_gib, start_timeout_s
        self.log = log or tempfile.NamedTemporaryFile(prefix="vllm-", suffix=".log", delete=False).name
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        self.start_s = 0.0

    def command(self, port: int) -> List[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
                "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                "--max-model-len", str(self.max_model_len), "--enforce-eager", "--enable-prefix-caching",
                "--enable-prompt-tokens-details", *self.extra_args]

    def __enter__(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib))
        t0 = time.monotonic()
        with open(self.log, "w") as log:
            # its own session: stopping it stops the engine-core process it forks too
            self.proc = subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        try:
            while not healthy(self.url):
                if self.proc.poll() is not None or time.monotonic() - t0 > self.start_timeout_s:
                    with open(self.log, errors="replace") as f:
                        tail = f.read()[-3000:]
                    state = f"exit status {self.proc.poll()}" if self.proc.poll() is not None else \
                        f"no /health after {self.start_timeout_s:g} s"
                    raise RuntimeError(f"vLLM did not come up on {self.url} ({state}); log {self.log}:\n{tail}")
                time.sleep(1)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - t0
        return self.url

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __exit__(self, *exc) -> None:
        self.stop()
