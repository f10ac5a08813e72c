"""ponder's own search vs optillm's, on the same Countdown problems and the same model.

Starts ``ponder serve`` (bundled Countdown model) as an ordinary endpoint (``--algorithm
sample``) and optillm 0.4.0 as a proxy in front of it (optillm picks its method from the model
name, ``bon-countdown`` / ``mcts-countdown``, and calls the server's chat endpoint for samples,
with ``n``, and for its LLM-as-judge ratings). ponder's searches go straight to the same server
with a ``ponder`` field. Both use the same model, the same problems and (for best-of-N) the same
N. Per method: accuracy by Countdown's exact checker, mean latency, and tokens per request as the
server counted them (decoded + prefilled, every call of the method included).

optillm lives in its own virtual environment (its dependencies stay out of ponder's)::

    python3 -m venv /work/venv-optillm && /work/venv-optillm/bin/pip install --no-deps optillm==0.4.0 \\
        && /work/venv-optillm/bin/pip install flask openai networkx z3-solver sympy math-verify aiohttp \\
           pyyaml httpx cerebras_cloud_sdk numpy
    python benchmarks/compare_optillm.py --optillm /work/venv-optillm/bin/optillm --problems 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import free_port, start_server  # noqa: E402

TIMEOUT_S = 600.0


def wait_up(url: str, proc, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not start within 120 s")


def server_tokens(ponder_url: str) -> int:
    kv = httpx.get(ponder_url + "/health", timeout=60).json()["kv"]
    return int(kv["tokens_decoded"]) + int(kv["tokens_prefilled"])


def run_method(name: str, url: str, ponder_url: str, model: str, problems, ponder=None):
    from ponder.tasks import countdown

    solved, latencies, tokens = 0, [], []
    for p in problems:
        body = {"model": model, "messages": [{"role": "user", "content": p.prompt().strip()}]}
        if ponder is not None:
            body["ponder"] = ponder
        before = server_tokens(ponder_url)
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S,
                       headers={"Authorization": "Bearer unused"})
        latencies.append(time.perf_counter() - t0)
        r.raise_for_status()
        text = r.json()["choices"][0]["message"]["content"] or ""
        tokens.append(server_tokens(ponder_url) - before)
        solved += countdown.check(p, text).ok
    n = len(problems)
    return {"method": name, "solved": solved / n, "latency_s": sum(latencies) / n, "tokens": sum(tokens) / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optillm", default="/work/venv-optillm/bin/optillm", help="the optillm executable")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="best-of-N samples (both)")
    ap.add_argument("--mcts-simulations", type=int, default=2, help="optillm MCTS simulations (its default)")
    ap.add_argument("--expansions", type=int, default=16, help="ponder MCTS expansions")
    args = ap.parse_args(argv)
    from ponder.tasks.demo import held_out_problems

    problems = held_out_problems(args.problems, 4, False)
    ponder_proc, ponder_url = start_server(1, "256M", "--algorithm", "sample", "--drop-unknown-chars",
                                          "--truncate-prompts")
    port = free_port()
    opt_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OPENAI_API_KEY="unused")
    opt_proc = subprocess.Popen([args.optillm, "--base-url", ponder_url + "/v1", "--host", "127.0.0.1", "--port",
                                 str(port), "--best-of-n", str(args.n), "--mcts-simulations",
                                 str(args.mcts_simulations), "--log", "warning"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_up(opt_url + "/health", opt_proc, "optillm")
        rows.append(run_method("sample (no search)", ponder_url, ponder_url, "countdown", problems))
        rows.append(run_method(f"optillm bon N={args.n}", opt_url, ponder_url, "bon-countdown", problems))
        rows.append(run_method(f"ponder best_of_n N={args.n}", ponder_url, ponder_url, "countdown", problems,
                               {"algorithm": "best_of_n", "options": {"n": args.n}, "constraint": False}))
        rows.append(run_method(f"ponder best_of_n N={args.n} +legal", ponder_url, ponder_url, "countdown", problems,
                               {"algorithm": "best_of_n", "options": {"n": args.n}}))
        rows.append(run_method(f"optillm mcts sims={args.mcts_simulations}", opt_url, ponder_url, "mcts-countdown",
                               problems))
        rows.append(run_method(f"ponder mcts {args.expansions} exp", ponder_url, ponder_url, "countdown", problems,
                               {"algorithm": "mcts", "budget": {"expansions": args.expansions}}))
        idle = httpx.get(ponder_url + "/health", timeout=60).json()
        assert idle["kv"]["used"] == 0 and idle["num_sequences"] == 0, f"KV leaked: {idle}"
    finally:
        for proc in (opt_proc, ponder_proc):
            proc.terminate()
            proc.wait(30)
    print(f"Countdown, {args.problems} held-out problems (4 numbers), bundled model behind ponder serve")
    print(f"{'method':<32} {'solved':>7} {'latency s':>10} {'tokens/request':>15}")
    for r in rows:
        print(f"{r['method']:<32} {100 * r['solved']:>6.1f}% {r['latency_s']:>10.2f} {r['tokens']:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
