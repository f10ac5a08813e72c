"""Load check for ``ponder serve``: many concurrent clients vs the same requests one by one.

Starts ``ponder serve`` (bundled Countdown model) on 127.0.0.1, sends every held-out Countdown
problem once alone (sequential) and once from concurrent clients (one thread each), with the
same search settings. Checks that every request is answered, that the server's ``verified``
flag agrees with Countdown's exact checker, that both runs give the same answers (a tree depends
only on prompt and seed, not on its batch) and that every KV page is back in the pool; then
prints requests/s, p50 / p95 latency and the speedup of serving them together.

    python benchmarks/serve_load.py                 # 32 clients, MCTS with 16 expansions
    python benchmarks/serve_load.py --clients 8 --algorithm best_of_n
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time

import httpx

REQUEST_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, max_kv_bytes: str, *extra: str):
    """``ponder serve`` on 127.0.0.1 at a free port; returns (process, base URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ponder", "serve", "--port", str(port), "--threads", str(threads),
                             "--max-kv-bytes", max_kv_bytes, "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ponder serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("ponder serve did not start within 120 s")


def ask(url: str, prompt: str, ponder: dict) -> dict:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", timeout=REQUEST_TIMEOUT_S,
                   json={"model": "countdown", "messages": [{"role": "user", "content": prompt}], "ponder": ponder})
    r.raise_for_status()
    body = r.json()
    body["latency_s"] = time.perf_counter() - t0
    return body


def percentile(values, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def run_concurrent(url: str, prompts, ponder: dict):
    out, errors = [None] * len(prompts), []

    def client(i):
        try:
            out[i] = ask(url, prompts[i], ponder)
        except Exception as err:  # reported after the join
            errors.append(f"request {i}: {err}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if errors or any(o is None for o in out):
        raise AssertionError(f"not every request was answered: {errors}")
    return out, wall


def check_idle(url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        h = httpx.get(url + "/health", timeout=30).json()
        if h["active_requests"] == 0 and h["queued_requests"] == 0:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"requests still live: {h}")
        time.sleep(0.1)
    assert h["kv"]["used"] == 0 and h["num_sequences"] == 0, f"KV leaked: {h}"
    return h


def summary(name: str, results, wall: float) -> str:
    lat = [r["latency_s"] for r in results]
    return (f"{name:<12} {len(results) / wall:8.2f} req/s   wall {wall:7.2f} s   p50 {percentile(lat, 0.5):6.2f} s   "
            f"p95 {percentile(lat, 0.95):6.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--algorithm", default="mcts", choices=("mcts", "beam_search", "best_of_n"))
    ap.add_argument("--expansions", type=int, default=16, help="MCTS expansions per request")
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--max-kv-bytes", default="256M")
    args = ap.parse_args(argv)
    from ponder.tasks import countdown
    from ponder.tasks.demo import held_out_problems

    problems = held_out_problems(args.clients, 4, False)
    prompts = [p.prompt().strip() for p in problems]
    ponder = {"algorithm": args.algorithm}
    if args.algorithm == "mcts":
        ponder["budget"] = {"expansions": args.expansions}
    proc, url = start_server(args.threads, args.max_kv_bytes)
    try:
        ask(url, prompts[0], ponder)  # warm-up: first-call allocations are not part of either run
        check_idle(url)
        t0 = time.perf_counter()
        alone = [ask(url, p, ponder) for p in prompts]
        alone_wall = time.perf_counter() - t0
        check_idle(url)
        rounds0 = httpx.get(url + "/health", timeout=30).json()["rounds"]
        together, together_wall = run_concurrent(url, prompts, ponder)
        h = check_idle(url)
    finally:
        proc.terminate()
        proc.wait(30)
    for name, res in (("sequential", alone), ("concurrent", together)):
        for p, r in zip(problems, res):
            text = r["choices"][0]["message"]["content"]
            assert r["ponder"]["problems"][0]["verified"] == countdown.check(p, text).ok, (name, p, text)
    same = sum(a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
               for a, b in zip(alone, together))
    solved = sum(r["ponder"]["problems"][0]["verified"] for r in together)
    tokens = sum(r["usage"]["completion_tokens"] for r in together) / len(together)
    print(f"ponder serve, bundled Countdown model, {args.clients} clients, {args.algorithm} {ponder.get('budget', '')}, "
          f"server threads {args.threads}")
    print(summary("sequential", alone, alone_wall))
    print(summary("concurrent", together, together_wall))
    print(f"speedup {alone_wall / together_wall:.2f}x   solved {solved}/{len(together)} (verified by the exact checker)  "
          f"same answers {same}/{len(together)}   tokens/request {tokens:.0f}   "
          f"rounds {h['rounds'] - rounds0} for the concurrent run   KV pages in use after: {h['kv']['used']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
