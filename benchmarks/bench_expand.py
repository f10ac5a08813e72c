"""Expansion throughput on the CPU: N continuations of one ~200-token prompt with SmolLM2-135M.

ponder's engine (prompt prefilled once, N branches forked from its pages, one batched forward
per token) against transformers ``generate(num_return_sequences=N, do_sample=True)`` (the prompt
is expanded to N copies, each with its own KV). Both produce exactly ``--new-tokens`` tokens per
continuation (EOS disabled), so they do the same decoding work. Before timing, greedy decoding
of both must agree token for token.

Peak KV bytes: ponder's measured page peak; transformers' cache holds N·(prompt + new) tokens.

    python benchmarks/bench_expand.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from _smollm2 import LONG_PROMPT, chat_ids, load_pair
from ponder.engine import Engine, SamplingParams, StepStop


def ponder_expand(model, tok, ids, n, new_tokens, page_size=16):
    eng = Engine(model, tok, num_pages=2048, page_size=page_size, prefix_cache=False)
    t0 = time.perf_counter()
    roots = eng.prefill([ids])
    exp = eng.expand(roots, n, stop=StepStop(strings=(), max_step_tokens=new_tokens, stop_on_eos=False),
                     sampling=SamplingParams(temperature=1.0), seed=0)
    dt = time.perf_counter() - t0
    assert all(len(t) == new_tokens for t in exp.tokens)
    return dt, eng.kv_stats()["kv_bytes_peak"], exp


def hf_generate(hf, ids, n, new_tokens):
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([ids]), do_sample=True, num_return_sequences=n, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
    dt = time.perf_counter() - t0
    assert out.shape == (n, len(ids) + new_tokens)
    return dt


def check_greedy(model, hf, tok, ids, new_tokens=12):
    eng = Engine(model, tok, num_pages=256, page_size=16)
    roots = eng.prefill([ids])
    exp = eng.expand(roots, 1, stop=StepStop(strings=(), max_step_tokens=new_tokens, stop_on_eos=False),
                     sampling=SamplingParams(temperature=0.0))
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          pad_token_id=0)[0, len(ids):].tolist()
    assert exp.tokens[0].tolist() == ref, "ponder and transformers disagree on greedy decoding"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=4 and 16 new tokens only")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, hf, tok = load_pair()
    ids = chat_ids(tok, LONG_PROMPT)
    check_greedy(model, hf, tok, ids)
    new = 16 if args.quick else args.new_tokens
    beta = model.kv_bytes_per_token
    print(f"prompt {len(ids)} tokens, {new} new tokens per branch, {args.threads} threads, KV {beta} B/token")
    print(f"{'N':>3} {'ponder s':>9} {'tok/s':>8} {'hf s':>8} {'tok/s':>8} {'speedup':>8} "
          f"{'ponder KV MB':>12} {'hf KV MB':>9} {'prefix+N*suffix MB':>19}")
    for n in ([4] if args.quick else [4, 8, 16]):
        ponder_expand(model, tok, ids, n, 4)  # warm-up
        hf_generate(hf, ids, n, 4)
        t_p, kv_p, _ = ponder_expand(model, tok, ids, n, new)
        t_h = hf_generate(hf, ids, n, new)
        kv_h = n * (len(ids) + new) * beta
        ideal = (len(ids) + n * new) * beta
        print(f"{n:>3} {t_p:>9.3f} {n * new / t_p:>8.1f} {t_h:>8.3f} {n * new / t_h:>8.1f} {t_h / t_p:>7.2f}x "
              f"{kv_p / 2**20:>12.2f} {kv_h / 2**20:>9.2f} {ideal / 2**20:>19.2f}")


if __name__ == "__main__":
    main()
