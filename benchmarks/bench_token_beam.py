"""Token-level beam search on the CPU: ponder against transformers' generate, SmolLM2-135M.

ponder's ``token_beam_search`` (the prompt prefilled once, the W beams forked from its pages, all
beams decoded in one batched forward per step) against transformers ``generate(num_beams=W,
do_sample=False)`` (the prompt expanded to W copies, each with its own KV, beams reordered by
copying the cache) on one ``--prompt``-token prompt (528 by default) with up to ``--new-tokens``
(64) new tokens, for each width in ``--widths`` (4 and 8). Both sides use transformers' defaults,
which ``TokenBeamConfig`` mirrors: ``length_penalty=1.0``, ``early_stopping=False``, one returned
sequence, EOS = the model's EOS token (2); a beam ending in EOS is a finished hypothesis on both
sides, so both do the same search step for step.

Before timing, each width runs once on both sides (also the warm-up) and ponder's best sequence
must equal transformers' token for token (an AssertionError shows both otherwise). Then each
side runs ``--repeats`` times, one after the other, and the fastest wall time (with its process
CPU time) is reported: wall and CPU seconds per side and the ratio transformers / ponder of each
(above 1: ponder is faster). Both times cover the whole call, prefill included.

    python benchmarks/bench_token_beam.py [--threads 1] [--widths 4 8] [--prompt 528] [--new-tokens 64]
    python benchmarks/bench_token_beam.py --quick      # 128-token prompt, 8 new tokens, W=4
"""

from __future__ import annotations

import argparse
import sys
import time

import ponder  # noqa: F401  (before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from _smollm2 import LONG_PROMPT, chat_ids, load_pair
from ponder.engine import Engine
from ponder.search.token_beam import TokenBeamConfig, token_beam_search

PAGE_SIZE = 16


def prompt_of_length(tok, length):
    """The first ``length`` ids of LONG_PROMPT repeated in one chat-templated user message."""
    ids = chat_ids(tok, " ".join([LONG_PROMPT] * (length // 150 + 2)))
    if len(ids) < length:
        sys.exit(f"could not build a {length}-token prompt (got {len(ids)})")
    return ids[:length]


def timed(fn):
    """(result, wall s, process CPU s) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def ponder_beam(model, tok, ids, cfg: TokenBeamConfig):
    """ponder's TokenBeamOutput for ``ids``; a fresh engine per call (its construction timed too,
    it only allocates the page pool) sized for the prompt plus W beams of their own pages."""
    W, n = cfg.num_beams, cfg.max_new_tokens
    pages = (len(ids) + PAGE_SIZE - 1) // PAGE_SIZE + 2 * W * ((n + PAGE_SIZE - 1) // PAGE_SIZE + 2) + 16
    eng = Engine(model, tok, num_pages=pages, page_size=PAGE_SIZE, prefix_cache=False)
    return token_beam_search(eng, [ids], cfg)[0]


def hf_beam(hf, ids, cfg: TokenBeamConfig, with_scores=False):
    """transformers' generate with the same settings; the raw output."""
    kw = dict(output_scores=True, return_dict_in_generate=True) if with_scores else {}
    with torch.inference_mode():
        return hf.generate(torch.tensor([ids]), num_beams=cfg.num_beams, do_sample=False,
                           max_new_tokens=cfg.max_new_tokens, length_penalty=cfg.length_penalty,
                           early_stopping=cfg.early_stopping, num_return_sequences=cfg.num_return_sequences,
                           eos_token_id=list(cfg.eos_token_ids), pad_token_id=cfg.eos_token_ids[0], **kw)


def check_same_best(model, hf, tok, ids, cfg: TokenBeamConfig):
    """Both sides once (the warm-up too); stops unless the best sequences agree token for token.
    Returns (best sequence, its score on each side)."""
    ours = ponder_beam(model, tok, ids, cfg)
    out = hf_beam(hf, ids, cfg, with_scores=True)
    # steps after a hypothesis ended are marked -1 in beam_indices; the rest of the row is padding
    length = int((out.beam_indices[0] != -1).sum())
    ref = out.sequences[0, len(ids):len(ids) + length].tolist()
    best = ours.sequences[0].tolist()
    if best != ref:
        first = next((i for i, (a, b) in enumerate(zip(best, ref)) if a != b), min(len(best), len(ref)))
        raise AssertionError(f"W={cfg.num_beams}: ponder's best sequence ({len(best)} tokens) differs from "
                             f"transformers' ({len(ref)} tokens) from new token {first} on:\n"
                             f"  ponder       {best}\n  transformers {ref}")
    return best, float(ours.sequence_scores[0]), float(out.sequences_scores[0])


def best_of(repeats, fn):
    """(result, wall, CPU) of the fastest of ``repeats`` calls of fn (by wall time)."""
    runs = [timed(fn) for _ in range(repeats)]
    return min(runs, key=lambda r: r[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128-token prompt, 8 new tokens, W=4 only")
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8], help="beam widths W")
    ap.add_argument("--prompt", type=int, default=528, help="prompt length in tokens")
    ap.add_argument("--new-tokens", type=int, default=64, help="most new tokens per sequence")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side and width (fastest reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    if args.quick:
        args.prompt, args.new_tokens, args.widths = 128, 8, [4]
    torch.set_num_threads(args.threads)
    model, hf, tok = load_pair()
    ids = prompt_of_length(tok, args.prompt)
    # the engine's EOS set (the model config's), passed explicitly to both sides
    eos = tuple(sorted(int(t) for t in Engine(model, tok, num_pages=4).eos_token_ids))

    print(f"prompt {len(ids)} tokens, up to {args.new_tokens} new tokens, length_penalty 1.0, early_stopping "
          f"False, EOS {list(eos)}, {args.threads} threads, best of {args.repeats}; times are wall (CPU) seconds")
    print(f"{'W':>3} {'fwds':>5} {'best len':>8} | {'ponder':>16} | {'transformers':>16} | "
          f"{'wall x':>7} {'CPU x':>7} | {'score ponder':>12} {'transformers':>12}")
    for W in args.widths:
        cfg = TokenBeamConfig(num_beams=W, max_new_tokens=args.new_tokens, length_penalty=1.0,
                              early_stopping=False, num_return_sequences=1, eos_token_ids=eos)
        best, s_ours, s_ref = check_same_best(model, hf, tok, ids, cfg)
        ours, p_wall, p_cpu = best_of(args.repeats, lambda: ponder_beam(model, tok, ids, cfg))
        _, h_wall, h_cpu = best_of(args.repeats, lambda: hf_beam(hf, ids, cfg))
        assert ours.sequences[0].tolist() == best, "ponder's timed run differs from its checked run"
        fwds = ours.stats.model_calls  # ponder's forwards, the prefill included
        print(f"{W:>3} {fwds:>5} {len(best):>8} | {p_wall:>7.2f} ({p_cpu:>6.2f}) | {h_wall:>7.2f} ({h_cpu:>6.2f}) | "
              f"{h_wall / p_wall:>6.2f}x {h_cpu / p_cpu:>6.2f}x | {s_ours:>12.5f} {s_ref:>12.5f}", flush=True)


if __name__ == "__main__":
    main()
