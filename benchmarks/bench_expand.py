"""Expansion throughput on the CPU: N continuations of one ~200-token prompt with SmolLM2-135M.

ponder's engine (prompt prefilled once, N branches forked from its pages, one batched forward
per token) against transformers ``generate(num_return_sequences=N, do_sample=True)`` (the prompt
is expanded to N copies, each with its own KV). Both produce exactly ``--new-tokens`` tokens per
continuation (EOS disabled), so they do the same decoding work. Before timing, greedy decoding
of both must agree token for token.

Peak KV bytes: ponder's measured page peak; transformers' cache holds N·(prompt + new) tokens.

``--sweep`` runs long prompts instead (``--prompts`` tokens x ``--branches`` continuations of
``--new-tokens``; defaults 200 / 1,024 / 2,048 x 16 / 32 / 64, 32 new tokens) and reports end to
end and decode-only figures: decode = total - prefill, where ponder's prefill is timed on its own
and transformers' is one ``generate`` of a single token for the same N (after an untimed one: the
first call of a shape allocates and touches its memory, which made that side's prefill come out
longer than its whole run). Wall and CPU seconds.
ponder's total is one call on a fresh engine (prefill + the first expansion, which also pays the
first touch of the pool's fresh memory; its step time is "cold ms"). ponder's decode columns
are timed on a warm pool: the same expansion again on the same engine after the first one's
children are freed, as a long-lived engine reuses its pages.
"shared": the share of ponder's decode rows whose model work a sibling's identical row did
(samples that drew the same tokens so far; ``Engine(dedup_rows=...)``); transformers runs every
row, so the ratios depend on how often samples agree.

    python benchmarks/bench_expand.py [--quick] [--threads T]
    python benchmarks/bench_expand.py --sweep [--prompts 1024 --branches 32] [--threads T] [--no-dedup]
"""

from __future__ import annotations

import argparse
import time

import ponder  # noqa: F401  (before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
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


def timed(fn):
    """(result, wall s, process CPU s) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def prompt_of_length(tok, length):
    ids = chat_ids(tok, " ".join([LONG_PROMPT] * (length // 150 + 2)))
    return ids[:length]


def sweep(model, hf, tok, args):
    new = args.new_tokens
    print(f"{new} new tokens per branch, EOS off, {args.threads} threads; times are wall (CPU) seconds")
    print(f"{'prompt':>6} {'N':>3} | {'ponder total':>16} {'prefill':>7} {'decode':>16} | {'hf total':>16} "
          f"{'prefill':>7} {'decode':>16} | {'e2e x':>6} {'decode x':>8} {'step ms':>8} {'cold ms':>8} {'shared':>6}")
    stop = StepStop(strings=(), max_step_tokens=new, stop_on_eos=False)
    for length in args.prompts:
        ids = prompt_of_length(tok, length)
        for n in args.branches:
            eng = Engine(model, tok, num_pages=(length + n * (new + 16)) // 16 + 64, page_size=16, prefix_cache=False,
                         dedup_rows=not args.no_dedup)
            roots, p_wall, p_cpu = timed(lambda: eng.prefill([ids]))
            # cold: the pool's fresh pages are first touched here (the operating system zeroes them;
            # on a VM whose memory was never used since boot this also backs it, up to 0.3 s)
            exp, c_wall, c_cpu = timed(lambda: eng.expand(roots, n, stop=stop, sampling=SamplingParams(1.0), seed=1))
            eng.free(exp.children)
            # warm: the same expansion again on the pages just freed, as a long-lived engine runs
            exp, d_wall, d_cpu = timed(lambda: eng.expand(roots, n, stop=stop, sampling=SamplingParams(1.0), seed=0))
            assert all(len(t) == new for t in exp.tokens)
            if args.no_hf:
                h = [float("nan")] * 4
            else:
                hf_generate(hf, ids, n, 1)  # untimed: transformers' first call of a shape is slower
                _, hp_wall, hp_cpu = timed(lambda: hf_generate(hf, ids, n, 1))
                _, ht_wall, ht_cpu = timed(lambda: hf_generate(hf, ids, n, new))
                h = [ht_wall, ht_cpu, hp_wall, hp_cpu]
            tw, tc = p_wall + c_wall, p_cpu + c_cpu  # one call on a fresh engine: prefill + cold decode
            hd_wall, hd_cpu = h[0] - h[2], h[1] - h[3]
            print(f"{length:>6} {n:>3} | {tw:>7.2f} ({tc:>6.2f}) {p_wall:>7.2f} {d_wall:>7.2f} ({d_cpu:>6.2f}) | "
                  f"{h[0]:>7.2f} ({h[1]:>6.2f}) {h[2]:>7.2f} {hd_wall:>7.2f} ({hd_cpu:>6.2f}) | "
                  f"{h[0] / tw:>5.2f}x {hd_wall / d_wall:>7.2f}x {1000 * d_wall / new:>8.1f} {1000 * c_wall / new:>8.1f} "
                  f"{eng.stats.decode_rows_shared / max(1, eng.stats.tokens_decoded):>6.1%}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=4 and 16 new tokens only")
    ap.add_argument("--sweep", action="store_true", help="long prompts: end-to-end and decode-only figures")
    ap.add_argument("--prompts", type=int, nargs="+", default=[200, 1024, 2048], help="--sweep prompt lengths")
    ap.add_argument("--branches", type=int, nargs="+", default=[16, 32, 64], help="--sweep values of N")
    ap.add_argument("--no-hf", action="store_true", help="--sweep: ponder only (decode-step scaling)")
    ap.add_argument("--no-dedup", action="store_true",
                    help="--sweep: every decode row runs the model (Engine(dedup_rows=False)), as if no samples agreed")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens per branch (default 64, --sweep 32)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, hf, tok = load_pair()
    ids = chat_ids(tok, LONG_PROMPT)
    check_greedy(model, hf, tok, ids)
    if args.sweep:
        args.new_tokens = args.new_tokens or 32
        return sweep(model, hf, tok, args)
    args.new_tokens = args.new_tokens or 64
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
