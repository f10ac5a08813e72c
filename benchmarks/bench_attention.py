"""Shared-prefix decode attention vs per-branch paged decode, on a GPU (Triton) or the CPU (PyTorch).

One decode step of one layer: B branches share a prompt of P tokens and each owns s tokens
(``s`` includes the decode token).

On a GPU, four ways to compute the same attention:

- cuda:    ``cuda_backend.shared_prefix_attention``, the CUDA kernel, through an attention plan
           shaped for it (``cuda_backend.plan_options``; each segment of the tree read once per
           64 query rows); present when ponder was built with its CUDA kernels;
- shared:  ``triton_backend.shared_prefix_attention`` through an attention plan (each segment of
           the tree read once);
- paged:   ``triton_backend.paged_attention``, per-branch split-KV decode over the block tables
           (reads the prompt once per branch);
- sdpa:    ``torch.nn.functional.scaled_dot_product_attention`` on each branch's KV gathered
           into a contiguous tensor beforehand (the gather is not timed; skipped when it does
           not fit in memory).

Bandwidth is reported against the fewest bytes any method must read (BENCHMARKS.md), for the
faster of the two shared-prefix kernels; every ratio is another method's time over that one's:
``beta * (P + B * s)`` with ``beta = 2 * Hk * D * bytes`` per token and layer; reading the prompt
per branch costs ``beta * B * (P + s)``.

On the CPU (``--device cpu``, or no GPU), fp32 (or ``--cpu-dtype bf16``) with SmolLM2-135M's
heads (H=9, Hk=3, D=64), four ways: the native CPU kernel of ``ops.shared_prefix_attention``
(each plan item read once, branches split over the torch threads: the engine's path when a step is planned) and
``reference.shared_prefix_attention``, both through the plan of ``plan_shared_prefix_attention``;
the native CPU kernel of ``ops.paged_attention`` (per branch, reading every branch's pages in
place, rows split over the torch threads: the engine's path when a step is not planned) and
``reference.paged_attention`` (per branch, gathering the prompt for every branch), the baseline
of every ratio. The plan is built once per decode step and serves every layer, so it is timed
on its own. Each line gives wall time (median) and process CPU time per call and the ratios;
the header names the torch thread count (``--threads``).

Every configuration is checked for agreement before it is timed. ``--quick`` runs a short
sweep; ``--dry-run`` runs only the Triton correctness check on tiny shapes on the CPU (Triton
interpreter), so the GPU script is exercised without a GPU.

    python benchmarks/bench_attention.py [--quick | --dry-run] [--dtype bf16|fp16]
    python benchmarks/bench_attention.py --device cpu [--quick] [--threads 1] [--cpu-dtype bf16]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import ponder  # noqa: F401  (before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)

# Measured HBM bandwidth of the lent machines (BENCHMARKS.md), GB/s, matched by device name.
_MEASURED_HBM = {"H100": 3000.0, "H200": 4300.0}


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a short sweep")
    mode.add_argument("--dry-run", action="store_true", help="tiny correctness check on the CPU, no timing")
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: the GPU when there is one")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the CPU mode (default: torch's)")
    p.add_argument("--cpu-dtype", choices=("fp32", "bf16"), default="fp32", help="KV and query dtype of the CPU mode")
    return p.parse_args()


def _cdiv(a, b):
    return -(-a // b)


def _batch(torch, B, P, s, Hk, G, D, S, dtype, device, seed=0):
    """KV cache [1, 2, pages, S, Hk, D] with a shared prompt of P tokens and B tails of s tokens."""
    g = torch.Generator(device=device).manual_seed(seed)
    prefix_pages, tail_pages = _cdiv(P, S), _cdiv(s, S)
    num_pages = prefix_pages + B * tail_pages
    kv = torch.randn(1, 2, num_pages, S, Hk, D, generator=g, device=device, dtype=torch.float32).to(dtype)
    shared = torch.arange(prefix_pages, dtype=torch.int32, device=device).expand(B, prefix_pages)
    own = prefix_pages + torch.arange(B * tail_pages, dtype=torch.int32, device=device).view(B, tail_pages)
    # A prompt that ends mid-page continues in each branch's first own page at the same offset,
    # so the tails are placed right after the prompt's last full page.
    assert P % S == 0, "the sweep uses prompts of whole pages"
    block_tables = torch.cat((shared, own), dim=1).contiguous()
    seq_lens = torch.full((B,), P + s, dtype=torch.int32, device=device)
    q = torch.randn(B, Hk * G, D, generator=g, device=device, dtype=torch.float32).to(dtype)
    return q, kv, block_tables, seq_lens


def _sdpa_inputs(torch, kv, block_tables, seq_lens, Hk, D):
    B = block_tables.shape[0]
    n = int(seq_lens[0])
    S = kv.shape[3]
    pages = block_tables[:, : _cdiv(n, S)].long()
    k = kv[0, 0][pages].view(B, -1, Hk, D)[:, :n].transpose(1, 2).contiguous()  # [B, Hk, n, D]
    v = kv[0, 1][pages].view(B, -1, Hk, D)[:, :n].transpose(1, 2).contiguous()
    return k, v


def _sdpa(torch, q, k, v, scale):
    B, H, D = q.shape
    return torch.nn.functional.scaled_dot_product_attention(
        q.view(B, H, 1, D), k, v, scale=scale, enable_gqa=H != k.shape[1]
    ).view(B, H, D)


def _check(torch, name, got, expected, dtype):
    # 16-bit outputs: the kernels round the softmax probabilities to 16 bits before P.V, SDPA and
    # the reference differ in their own ways; 2e-2 covers bf16's 8-bit mantissa on values ~1.
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def _dry_run():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    import torch

    from ponder.attention_plan import plan_attention
    from ponder.ops import reference, triton_backend as tb

    for Hk, G in ((2, 2), (1, 4)):
        B, P, s, D, S = 3, 16, 7, 16, 4
        q, kv, bt, sl = _batch(torch, B, P, s, Hk, G, D, S, torch.float32, "cpu")
        qi = torch.arange(B + 1, dtype=torch.int32)
        expected = reference.paged_attention(q, kv, 0, bt, sl, qi, D**-0.5)
        plan = plan_attention(bt, sl, S, **tb.plan_options(S, G, tokens_per_item=2 * S))
        _check(torch, "shared", tb.shared_prefix_attention(q, kv, 0, plan.to("cpu"), D**-0.5), expected, torch.float32)
        _check(torch, "paged", tb.paged_attention(q, kv, 0, bt, sl, qi, D**-0.5, num_splits=2), expected, torch.float32)
        k, v = _sdpa_inputs(torch, kv, bt, sl, Hk, D)
        _check(torch, "sdpa", _sdpa(torch, q, k, v, D**-0.5), expected, torch.float32)
        print(f"dry run Hk={Hk} G={G} B={B} P={P} s={s}: shared, paged and sdpa agree with the reference "
              f"(plan reads {plan.pages_read()} pages, per branch {B * _cdiv(P + s, S)})")  # fmt: skip
    return 0


def _bench(args):
    import torch

    if not torch.cuda.is_available():
        print("bench_attention: no CUDA GPU; run with --device cpu for the CPU comparison")
        return 1
    import triton.testing

    from ponder.attention_plan import plan_attention
    from ponder.ops import cuda_backend as cb, reference, triton_backend as tb
    from ponder.ops._registry import available_backends

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    nbytes = 2
    S, dev = args.page_size, "cuda"
    use_cuda = "cuda" in available_backends(dev)
    name = torch.cuda.get_device_name()
    hbm = next((v for k, v in _MEASURED_HBM.items() if k in name), None)
    print(f"# {name}, {args.dtype}, page size {S}; GB/s = beta*(P + B*s) / time of the faster shared kernel, "
          f"beta = 2*Hk*D*{nbytes} B/token" + (f"; % of measured HBM {hbm:.0f} GB/s" if hbm else "")
          + ("" if use_cuda else "; no CUDA kernels in this build"))  # fmt: skip
    # (Hk, G, D): Llama-3-8B GQA, Llama-2-7B-like MHA, SmolLM2-135M
    shapes = [(8, 4, 128), (32, 1, 128), (3, 3, 64)]
    if args.quick:
        sweep = [(2048, 64, 32), (4096, 64, 256), (16384, 64, 256)]
    else:
        sweep = list(itertools.product((4096, 16384, 32768), (16, 64, 256), (64, 256, 1024)))

    for Hk, G, D in shapes:
        # Against the reference once per shape, on a batch small enough to gather in fp32.
        q, kv, bt, sl = _batch(torch, 4, 512, 64, Hk, G, D, S, dtype, dev)
        qi = torch.arange(5, dtype=torch.int32, device=dev)
        expected = reference.paged_attention(q, kv, 0, bt, sl, qi, D**-0.5)
        plan = plan_attention(bt, sl, S, **tb.plan_options(S, G)).to(dev)
        _check(torch, "shared vs reference", tb.shared_prefix_attention(q, kv, 0, plan, D**-0.5), expected, dtype)
        _check(torch, "paged vs reference", tb.paged_attention(q, kv, 0, bt, sl, qi, D**-0.5), expected, dtype)
        if use_cuda:
            plan = plan_attention(bt, sl, S, **cb.plan_options(S, G)).to(dev)
            _check(torch, "cuda vs reference", cb.shared_prefix_attention(q, kv, 0, plan, D**-0.5), expected, dtype)
        q = kv = expected = None  # free the check tensors before the sweep

        for P, B, s in sweep:
            q, kv, bt, sl = _batch(torch, B, P, s, Hk, G, D, S, dtype, dev)
            qi = torch.arange(B + 1, dtype=torch.int32, device=dev)
            scale = D**-0.5
            bt_host, sl_host = bt.cpu().numpy(), sl.cpu().numpy()
            t0 = time.perf_counter()
            plan = plan_attention(bt_host, sl_host, S, **tb.plan_options(S, G)).to(dev)
            torch.cuda.synchronize()
            plan_ms = (time.perf_counter() - t0) * 1e3
            out_shared = torch.empty_like(q)
            out_paged = torch.empty_like(q)
            tb.shared_prefix_attention(q, kv, 0, plan, scale, out=out_shared)
            tb.paged_attention(q, kv, 0, bt, sl, qi, scale, out=out_paged)
            _check(torch, f"shared vs paged P={P} B={B} s={s}", out_shared, out_paged, dtype)
            t_cuda = None
            if use_cuda:
                cplan = plan_attention(bt_host, sl_host, S, **cb.plan_options(S, G)).to(dev)
                out_cuda = torch.empty_like(q)
                cb.shared_prefix_attention(q, kv, 0, cplan, scale, out=out_cuda)
                _check(torch, f"cuda vs paged P={P} B={B} s={s}", out_cuda, out_paged, dtype)
                t_cuda = triton.testing.do_bench(
                    lambda: cb.shared_prefix_attention(q, kv, 0, cplan, scale, out=out_cuda), return_mode="median"
                )
            kv_gather_bytes = 2 * B * (P + s) * Hk * D * nbytes
            k = v = None
            if kv_gather_bytes < 0.5 * torch.cuda.mem_get_info()[0]:
                k, v = _sdpa_inputs(torch, kv, bt, sl, Hk, D)
                _check(torch, f"sdpa vs shared P={P} B={B} s={s}", _sdpa(torch, q, k, v, scale), out_shared, dtype)

            t_shared = triton.testing.do_bench(
                lambda: tb.shared_prefix_attention(q, kv, 0, plan, scale, out=out_shared), return_mode="median"
            )
            t_paged = triton.testing.do_bench(
                lambda: tb.paged_attention(q, kv, 0, bt, sl, qi, scale, out=out_paged), return_mode="median"
            )
            t_sdpa = None
            if k is not None:
                t_sdpa = triton.testing.do_bench(lambda: _sdpa(torch, q, k, v, scale), return_mode="median")
            best = min(t for t in (t_shared, t_cuda) if t is not None)
            fewest = 2 * Hk * D * nbytes * (P + B * s)
            gbs = fewest / (best * 1e-3) / 1e9
            pct = f" {100 * gbs / hbm:3.0f}%" if hbm else ""
            line = f"Hk={Hk:2d} G={G} D={D:3d} P={P:5d} B={B:3d} s={s:4d} | {gbs:6.0f} GB/s{pct}"
            if t_cuda is not None:
                line += f" | cuda {t_cuda * 1e3:8.1f} us x{t_cuda / best:4.1f}"
            line += (f" | triton shared {t_shared * 1e3:8.1f} us x{t_shared / best:4.1f}"
                     f" | paged {t_paged * 1e3:8.1f} us x{t_paged / best:5.1f}")  # fmt: skip
            if t_sdpa is not None:
                line += f" | sdpa {t_sdpa * 1e3:8.1f} us x{t_sdpa / best:5.1f}"
            else:
                line += " | sdpa  (gathered KV does not fit)"
            line += f" | plan {plan_ms:6.2f} ms ({plan.num_items} items)"
            print(line, flush=True)
            q = kv = k = v = plan = cplan = out_shared = out_paged = out_cuda = None  # free this shape before the next
            torch.cuda.empty_cache()
    return 0


def _time_cpu(fn, repeats):
    """(median wall ms, median process CPU ms) of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return 1e3 * sorted(wall)[repeats // 2], 1e3 * sorted(cpu)[repeats // 2]


def _bench_cpu(args):
    import torch

    import ponder.ops as ops
    from ponder.ops import reference

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    S = args.page_size
    Hk, G, D = 3, 3, 64  # SmolLM2-135M: 9 query heads, 3 KV heads, head dim 64
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.cpu_dtype]
    if args.quick:
        sweep, repeats = [(2048, 64, 32), (2048, 8, 32)], 5
    else:
        sweep, repeats = list(itertools.product((512, 2048, 8192), (8, 16, 64), (32, 256))), 9
    print(f"# CPU, {args.cpu_dtype} KV and queries, page size {S}, H={Hk * G} Hk={Hk} D={D}, {threads} torch "
          "thread(s) (native shared splits its branches over them, native paged its rows); ms per call: wall median (process CPU); x = per-branch "
          "reference / that method")  # fmt: skip
    print(f"{'P':>5} {'B':>3} {'s':>4} | {'native shared':>19} {'x':>6} | {'reference shared':>19} {'x':>6} | "
          f"{'native paged':>19} {'x':>6} | {'reference paged':>19} | plan")
    for P, B, s in sweep:
        q, kv, bt, sl = _batch(torch, B, P, s, Hk, G, D, S, dtype, "cpu")
        qi = torch.arange(B + 1, dtype=torch.int32)
        scale = D**-0.5
        plan_ms, _ = _time_cpu(lambda: ops.plan_shared_prefix_attention(bt, sl, kv, Hk * G, "torch"), repeats)
        plan = ops.plan_shared_prefix_attention(bt, sl, kv, num_heads=Hk * G, backend="torch")
        methods = {
            # the CPU host kernel of ops.shared_prefix_attention: each plan item read once, branches over threads
            "native shared": lambda: ops.shared_prefix_attention(q, kv, 0, plan, scale, backend="auto"),
            "reference shared": lambda: reference.shared_prefix_attention(q, kv, 0, plan, scale),
            # the CPU host kernel of ops.paged_attention (per branch, pages read in place, rows split
            # over the threads; fp32 and bf16 caches)
            "native paged": lambda: ops.paged_attention(q, kv, 0, bt, sl, qi, scale, backend="auto"),
            "reference paged": lambda: reference.paged_attention(q, kv, 0, bt, sl, qi, scale),
        }
        expected = methods["reference paged"]()
        for name, fn in methods.items():
            _check(torch, f"{name} vs reference paged P={P} B={B} s={s}", fn(), expected, dtype)
        times = {name: _time_cpu(fn, repeats) for name, fn in methods.items()}
        base = times["reference paged"][0]
        cells = [f"{times[n][0]:8.2f} ({times[n][1]:8.2f}) x{base / times[n][0]:5.1f}" for n in list(methods)[:3]]
        print(f"{P:>5} {B:>3} {s:>4} | " + " | ".join(cells) + f" | {base:8.2f} ({times['reference paged'][1]:8.2f}) | "
              f"{plan_ms:5.2f} ms, {plan.num_items} items, once per step", flush=True)  # fmt: skip
    return 0


def main() -> int:
    args = _args()
    if args.dry_run:
        return _dry_run()
    if args.device == "cpu":
        return _bench_cpu(args)
    import torch

    if args.device == "auto" and not torch.cuda.is_available():
        return _bench_cpu(args)
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
