"""The native fp32 linear kernel against PyTorch's ``F.linear`` (MKL) over a decoder's matrices.

One pass over the 121 matrices of SmolLM2-135M's shapes (30 layers of qkv 960x576, o 576x576,
gate_up 3072x576, down 576x1536, then the tied 49152x576 LM head; random fp32 values, the same
shapes and bytes as the real model), for each row count in ``--rows``: ``F.linear`` (MKL with the
row-count-independent results ``import ponder`` sets) and ``ops.linear(backend="native")``, the
path of every decode row of a large fp32 model. Each line gives wall ms (best of ``--repeats``)
and process CPU ms of one pass per side, the ratio F.linear / native (above 1: native is faster),
and the native kernel's GFLOP/s and weight-read GB/s. Both sides are checked for agreement first.

``--blocks``: the weights are the de-quantisation of random GGUF blocks, as the model loader
makes them (Q4_1 for the layers, Q8_0 for the LM head, as in SmolLM2's file), and a third
column times ``linear_quant_cpu`` reading those blocks (``ops.linear.attach_quantized``; the
same bits as the native fp32 kernel, checked), with the ratio native fp32 / blocks.

    python benchmarks/bench_linear.py [--threads 1] [--rows 1 4 8 16 64 528] [--repeats 3] [--blocks]
    python benchmarks/bench_linear.py --quick      # rows 1, 8, 64; one repeat
"""

from __future__ import annotations

import argparse
import time

import ponder  # noqa: F401  (before torch's first product: sets MKL_CBWR, OMP_WAIT_POLICY)
import numpy as np
import torch
import torch.nn.functional as F

from ponder import _core
from ponder.models.gguf_file import dequantize
from ponder.ops import linear as lin
from ponder.ops.linear import linear

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def one_pass(fn, weights, xs):
    w0, c0 = time.perf_counter(), time.process_time()
    for w in weights:
        fn(xs[w.shape[1]], w)
    return time.perf_counter() - w0, time.process_time() - c0


def block_weights(shapes, seed=0):
    """(fp32 weight, blocks, type) per shape: random quants with small fp16 scales."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (n, k) in enumerate(shapes):
        kind = "Q8_0" if i == len(shapes) - 1 else "Q4_1"
        size = lin.QUANT_TYPES[kind][1]
        raw = rng.integers(0, 256, size=(n * k // 32, size), dtype=np.uint8)
        raw[:, :2] = (rng.random(raw.shape[0]) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
        if kind == "Q4_1":
            raw[:, 2:4] = (rng.random(raw.shape[0]) * -0.04).astype(np.float16).view(np.uint8).reshape(-1, 2)
        out.append((torch.from_numpy(dequantize(raw.reshape(-1), kind, (n, k))), raw.reshape(-1), kind))
    return out


def quant_fn(blocks_of):
    def run(x, w):
        blocks, type_id = blocks_of[id(w)]
        M, K = x.shape
        out = torch.empty(M, w.shape[0])
        _core.linear_quant_cpu(x.data_ptr(), M, K, K, blocks.data_ptr(), type_id, w.shape[0], 0, out.data_ptr(),
                               w.shape[0], torch.get_num_threads())
        return out
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 64, 528], help="rows per product")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per side (best reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="rows 1, 8, 64; one repeat")
    ap.add_argument("--blocks", action="store_true", help="also time the kernel that reads GGUF blocks")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.repeats = [1, 8, 64], 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    sides = {"torch": F.linear, "native": lambda x, w: linear(x, w, backend="native")}
    if args.blocks:
        if not lin.quant_available():
            raise SystemExit("--blocks: this build or CPU has no linear_quant_cpu")
        triples = block_weights(SHAPES)
        weights = [w for w, _, _ in triples]
        blocks_of = {id(w): (torch.from_numpy(b), lin.QUANT_TYPES[kind][0]) for w, b, kind in triples}
        sides["blocks"] = quant_fn(blocks_of)
        qbytes = sum(b.numel() for b, _ in blocks_of.values())
    else:
        weights = [torch.randn(n, k, generator=g) * 0.05 for n, k in SHAPES]
    nbytes = sum(w.numel() * 4 for w in weights)
    native = sides["native"]
    extra = f", {qbytes / 2**20:.0f} MiB of blocks" if args.blocks else ""
    print(f"# {len(weights)} matrices, {nbytes / 2**20:.0f} MiB fp32{extra}, {torch.get_num_threads()} torch threads, "
          f"best of {args.repeats}; wall (CPU) ms per pass")
    head = f"{'rows':>5} | {'F.linear':>17} | {'native':>17} | {'ratio':>6} | {'GFLOP/s':>7} {'GB/s':>6}"
    print(head + (f" | {'blocks':>17} | {'native/blocks':>13}" if args.blocks else ""))
    for M in args.rows:
        xs = {k: torch.randn(M, k, generator=g) for k in {k for _, k in SHAPES}}
        for w in weights[:4] + weights[-1:]:
            ref, out = F.linear(xs[w.shape[1]], w), native(xs[w.shape[1]], w)
            assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), "native and F.linear disagree"
            if args.blocks:
                assert torch.equal(sides["blocks"](xs[w.shape[1]], w).view(torch.int32), out.view(torch.int32)), \
                    "the blocks kernel and the native fp32 kernel disagree"
        best = {name: min((one_pass(fn, weights, xs) for _ in range(args.repeats)), key=lambda t: t[0])
                for name, fn in sides.items()}
        (tw, tc), (nw, nc) = best["torch"], best["native"]
        flops = 2 * M * nbytes / 4
        line = (f"{M:>5} | {tw * 1e3:>7.1f} ({tc * 1e3:>7.1f}) | {nw * 1e3:>7.1f} ({nc * 1e3:>7.1f}) | "
                f"{tw / nw:>5.2f}x | {flops / nw / 1e9:>7.1f} {nbytes / nw / 1e9:>6.1f}")
        if args.blocks:
            qw, qc = best["blocks"]
            line += f" | {qw * 1e3:>7.1f} ({qc * 1e3:>7.1f}) | {nw / qw:>12.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
