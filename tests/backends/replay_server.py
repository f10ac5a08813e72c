"""A small local HTTP server that answers ``POST /v1/completions`` from a script of responses
(status, JSON body, optional delay), recording every request body it receives. It binds
127.0.0.1 on a free port and runs in a thread; use it as a context manager so it always stops."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ReplayServer:
    """``answer(request_body) -> (status, body, delay_s)``, or a list of such tuples used in order."""

    def __init__(self, answer):
        self.requests = []
        self._lock = threading.Lock()
        self._script = list(answer) if isinstance(answer, (list, tuple)) else None
        self._answer = answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, reply, delay = server._next(body)
                if delay:
                    time.sleep(delay)
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _next(self, body):
        with self._lock:
            self.requests.append(body)
            if self._script is not None:
                if not self._script:
                    return 500, {"error": {"message": "replay script exhausted"}}, 0
                out = self._script.pop(0)
            else:
                out = self._answer(body)
        return out if len(out) == 3 else (*out, 0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class CharTokenizer:
    """One token per character (its code point); EOS is token 3."""

    eos_token_id = 3

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i != self.eos_token_id)


def llama_server_choice(text, index=0, finish_reason="stop", eos=False, logprob=-0.5):
    """A choice in llama.cpp ``llama-server``'s ``/v1/completions`` layout: logprobs in the chat
    layout (``content`` entries with ``id``, ``token``, ``bytes``, ``logprob``, ``top_logprobs``),
    the stop string left out of ``text``, ``finish_reason`` "stop" for a stop string and for EOS."""
    ids = [ord(c) for c in text] + ([CharTokenizer.eos_token_id] if eos else [])
    content = [{"id": i, "token": chr(i) if i != 3 else "", "bytes": [i] if i != 3 else [], "logprob": logprob,
                "top_logprobs": [{"id": i, "token": chr(i), "bytes": [i], "logprob": logprob}]} for i in ids]
    return {"text": text, "index": index, "logprobs": {"content": content}, "finish_reason": finish_reason}


def llama_server_body(choices):
    n = sum(len(c["logprobs"]["content"]) for c in choices)
    return {"choices": choices, "created": 1767225600, "model": "smollm2", "system_fingerprint": "b6500",
            "object": "text_completion", "usage": {"completion_tokens": n, "prompt_tokens": 5, "total_tokens": n + 5},
            "id": "chatcmpl-replay", "timings": {"prompt_n": 5, "predicted_n": n}}


def llama_cpp_python_body(text, finish_reason="stop", logprob=-0.25):
    """llama-cpp-python's server: the legacy logprobs layout with token texts only (no ids), and
    always one choice whatever ``n`` asked for."""
    toks = list(text)
    return {"id": "cmpl-replay", "object": "text_completion", "created": 1767225600, "model": "smollm2",
            "choices": [{"text": text, "index": 0, "finish_reason": finish_reason,
                         "logprobs": {"tokens": toks, "text_offset": list(range(len(toks))),
                                      "token_logprobs": [logprob] * len(toks),
                                      "top_logprobs": [{t: logprob} for t in toks]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(toks), "total_tokens": 5 + len(toks)}}
