"""The native fp32 linear kernel against PyTorch's ``F.linear`` (MKL) over a decoder's matrices.

One pass over the 121 matrices of SmolLM2-135M's shapes (30 layers of qkv 960x576, o 576x576,
gate_up 3072x576, down 576x1536, then the tied 49152x576 LM head; random fp32 values, the same
shapes and bytes as the real model), for each row count in ``--rows``: ``F.linear`` (MKL with the
row-count-independent results ``import ponder`` sets) and ``ops.linear(backend="native")``, the
path of every decode row of a large fp32 model. Each line gives wall ms (best of ``--repeats``)
and process CPU ms of one pass per side, the ratio F.linear / native (above 1: native is faster),
and the native kernel's GFLOP/s and weight-read GB/s. Both sides are checked for agreement first.

    python benchmarks/bench_linear.py [--threads 1] [--rows 1 4 8 16 64 528] [--repeats 3]
    python benchmarks/bench_linear.py --quick      # rows 1, 8, 64; one repeat
"""

from __future__ import annotations

import argparse
import time

import ponder  # noqa: F401  (before torch's first product: sets MKL_CBWR, OMP_WAIT_POLICY)
import torch
import torch.nn.functional as F

from ponder.ops.linear import linear

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def one_pass(fn, weights, xs):
    w0, c0 = time.perf_counter(), time.process_time()
    for w in weights:
        fn(xs[w.shape[1]], w)
    return time.perf_counter() - w0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 64, 528], help="rows per product")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per side (best reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="rows 1, 8, 64; one repeat")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.repeats = [1, 8, 64], 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=g) * 0.05 for n, k in SHAPES]
    nbytes = sum(w.numel() * 4 for w in weights)
    native = lambda x, w: linear(x, w, backend="native")  # noqa: E731
    print(f"# {len(weights)} matrices, {nbytes / 2**20:.0f} MiB fp32, {torch.get_num_threads()} torch threads, "
          f"best of {args.repeats}; wall (CPU) ms per pass")
    print(f"{'rows':>5} | {'F.linear':>17} | {'native':>17} | {'ratio':>6} | {'GFLOP/s':>7} {'GB/s':>6}")
    for M in args.rows:
        xs = {k: torch.randn(M, k, generator=g) for k in {k for _, k in SHAPES}}
        for w in weights[:4]:
            ref, out = F.linear(xs[w.shape[1]], w), native(xs[w.shape[1]], w)
            assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), "native and F.linear disagree"
        best = {}
        for name, fn in (("torch", F.linear), ("native", native)):
            best[name] = min((one_pass(fn, weights, xs) for _ in range(args.repeats)), key=lambda t: t[0])
        (tw, tc), (nw, nc) = best["torch"], best["native"]
        flops = 2 * M * nbytes / 4
        print(f"{M:>5} | {tw * 1e3:>7.1f} ({tc * 1e3:>7.1f}) | {nw * 1e3:>7.1f} ({nc * 1e3:>7.1f}) | {tw / nw:>5.2f}x | "
              f"{flops / nw / 1e9:>7.1f} {nbytes / nw / 1e9:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
