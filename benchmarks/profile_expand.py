"""Engine overhead: how much of a decode step is spent outside the model.

A tiny random-weight decoder (2 layers, hidden 256, vocab 512), 64 parent sequences of 64-token
prompts, 4 children each, steps of exactly 16 tokens (EOS and stop strings off). The model's
``forward`` and ``logits`` are wrapped with timers; everything else in ``Engine.expand`` (page
table, step inputs, sampling, per-branch bookkeeping) is the engine's overhead.

    python benchmarks/profile_expand.py [--threads 1] [--repeats 5] [--constraint] [--cprofile]

``--constraint`` adds a native step constraint (every parent may write 8 allowed 16-token steps),
so the trie mask and advance are in the step too. ``--cprofile`` prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import ponder  # noqa: F401  (before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from ponder.engine import Engine, SamplingParams, StepStop
from ponder.models import DecoderLM, ModelConfig


def tiny_model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=64, max_position_embeddings=1024, eos_token_id=None)
    return DecoderLM(cfg).eval()


class ModelTimer:
    """Wraps ``model.forward`` and ``model.logits`` and sums the wall time spent in them."""

    def __init__(self, model: DecoderLM) -> None:
        self.seconds = 0.0
        self.calls = 0
        for name in ("forward", "logits"):
            setattr(model, name, self._wrap(getattr(model, name)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        return timed


def run_once(args, model, timer, rng):
    eng = Engine(model, None, num_pages=4096, page_size=16, prefix_cache=False)
    prompts = [rng.integers(3, 512, size=args.prompt_tokens).tolist() for _ in range(args.parents)]
    roots = eng.prefill(prompts)
    allowed = None
    if args.constraint:
        allowed = [[rng.integers(3, 512, size=args.step_tokens).tolist() for _ in range(8)]
                   for _ in range(args.parents)]
    stop = StepStop(strings=(), max_step_tokens=args.step_tokens, stop_on_eos=False)
    timer.seconds, timer.calls = 0.0, 0
    w, c = time.perf_counter(), time.process_time()
    exp = eng.expand(roots, args.children, stop=stop, sampling=SamplingParams(temperature=1.0), seed=0,
                     allowed_steps=allowed)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    assert all(len(t) == args.step_tokens for t in exp.tokens)
    return wall, cpu, timer.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parents", type=int, default=64)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--constraint", action="store_true")
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = tiny_model()
    timer = ModelTimer(model)
    rng = np.random.default_rng(0)
    run_once(args, model, timer, rng)  # warm-up
    rows = []
    prof = cProfile.Profile() if args.cprofile else None
    for _ in range(args.repeats):
        if prof:
            prof.enable()
        rows.append(run_once(args, model, timer, rng))
        if prof:
            prof.disable()
    steps = args.step_tokens
    wall = np.median([r[0] for r in rows])
    cpu = np.median([r[1] for r in rows])
    in_model = np.median([r[2] for r in rows])
    print(f"{args.parents} parents x {args.children} children x {steps} tokens, 2-layer model, "
          f"{args.threads} thread(s), constraint {'on' if args.constraint else 'off'}; median of {args.repeats}")
    print(f"expand: {wall * 1e3:.1f} ms wall ({cpu * 1e3:.1f} ms CPU); per step {wall / steps * 1e3:.2f} ms, "
          f"model {in_model / steps * 1e3:.2f} ms, outside the model {(wall - in_model) / steps * 1e3:.2f} ms "
          f"= {100 * (wall - in_model) / wall:.1f}% of the step")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
