"""Linear layers: ``linear`` (``x · Wᵀ + b``) with a native host kernel for decode rows.

A decode step of a few rows through a model of a few hundred MB reads every weight once and is
bound by memory bandwidth. On the CPU, PyTorch's BLAS (MKL) reads fp32 weights well below the
bandwidth for few rows; ``ponder._core.linear_cpu`` reads each weight once per block of rows.
Over SmolLM2-135M's 121 matrices (``benchmarks/bench_linear.py``, one pass, F.linear time /
native time): 1.75x / 2.04x / 1.87x / 1.53x / 1.25x at 1 / 4 / 8 / 16 / 64 rows on one thread,
2.14x / 1.31x / 0.81x at 1 / 8 / 64 rows on two, and 0.80x / 0.74x at 528 rows (prefill),
where MKL's packed kernels win (AVX-512 CPU).

A search's tokens must not depend on how its sequences were batched, so a row's fp32 product
must not depend on the rows beside it. The native kernel computes every output the same way at
any row count (``csrc/linear_cpu.h``). MKL does not: it takes other kernels for 1-3 rows than
for more, with different sums, and ``MKL_CBWR`` (which ``import ponder`` sets) makes it
row-count independent on some CPUs (AVX-512 Intel) but not on others (AMD EPYC with AVX2: rows
1-3 differ under every setting). From 16 rows up MKL's result per row was the same at every row
count measured (1-2 threads, 11 shapes, up to 400 rows, both CPUs). So :class:`RowRoute`, the
model's rule, sends the rows of every sequence that adds at most ``NATIVE_MAX_SEQUENCE_TOKENS``
tokens in a forward (every decode row, short appends) through the native kernel for matrices of
at least ``NATIVE_MIN_WEIGHT_BYTES``, and every other fp32 CPU product through ``F.linear`` with
at least ``MIN_BLAS_ROWS`` rows (zero rows appended when there are fewer, then dropped; but see
below for 1-15 rows of a small matrix): small matrices, where MKL is faster than the native
kernel at many rows (a 2-layer model with hidden size 256, 256 decode rows: 32.6 ms per step
against 43.4 ms native, AMD EPYC, 1 thread), and long sequences' rows (prefill).
:func:`linear_rows` applies the same rule to the LM head.

Padding a small matrix's 1-15 rows to 16 costs up to 16 times the work (a small model's decode
step, with siblings' shared rows computed once, often has fewer than 16 distinct rows). So such
products run on ``ponder._core.linear_blocked_cpu`` instead, which sums each output as MKL's
micro-kernel does: one fused multiply-add chain over k, in blocks of k whose sums are added in
order, the bias before or after. :func:`blas_block_rule` finds the block size and bias order
that reproduce ``F.linear``'s 16-row bits for a (K, N) shape and thread count, once, by
comparing every bit on random rows; without a match (or without a vector FMA on the CPU), the
rows are padded as before. So the rows get the BLAS's bits either way. On the AMD EPYC above,
for a 128 x 768 matrix: 1 row 67 -> 18 us, 4 rows 67 -> 23 us, 11 rows 68 -> 42 us.

``linear(..., backend="auto")``, the general entry point, takes the native kernel by the same
size rule (smaller matrices fit in cache, so there is no weight traffic to save) for all its
rows, and ``F.linear`` as it is otherwise. bf16 / fp16 weights always use PyTorch's kernels
(oneDNN's are fast), with no row-count guarantee. ``F.linear`` is the reference the native
kernel is tested against.

GGUF blocks (:func:`attach_quantized`, which ``ponder.models.load_gguf`` calls): a weight may
carry its Q4_0 / Q4_1 / Q8_0 blocks; native products of up to ``QUANT_MAX_ROWS`` rows then read
those (``ponder._core.linear_quant_cpu``) instead of the fp32 weight, with the same bits
(``csrc/linear_quant_cpu.h``), and ``ops.reference.linear_lanes`` is their exact reference.
"""

from __future__ import annotations

import weakref
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ponder.ops import _checks
from ponder.ops._threads import native_threads

try:
    from ponder import _core
except ImportError:  # a source tree without the built extension
    _core = None

# backend="auto": fp32 weights smaller than this (1 MiB: about half an L2 cache) stay with
# PyTorch's BLAS
NATIVE_MIN_WEIGHT_BYTES = 1 << 20
# RowRoute: sequences adding at most this many tokens in a forward take the native kernel
NATIVE_MAX_SEQUENCE_TOKENS = 15
# RowRoute / linear_rows: fp32 CPU products through F.linear get at least this many rows (MKL's
# per-row result varies with the row count below 4 rows on some CPUs)
MIN_BLAS_ROWS = 16
# products of fewer rows than this with weights below NATIVE_MIN_WEIGHT_BYTES run on
# linear_blocked_cpu in the BLAS's own summation order (blas_block_rule) instead of being padded
# to MIN_BLAS_ROWS; from 16 rows up MKL is as fast or faster (AMD EPYC, 1 thread)
BLOCKED_MAX_ROWS = MIN_BLAS_ROWS
LINEAR_BACKENDS = ("auto", "torch", "native")


def native_available() -> bool:
    """Whether the extension has the native linear kernel."""
    return _core is not None and hasattr(_core, "linear_cpu")


def native_capable(weight: torch.Tensor) -> bool:
    """Whether the native kernel can run ``weight``: a contiguous fp32 CPU matrix, outside
    autograd and compilation (any size)."""
    return (native_available() and weight.device.type == "cpu" and weight.dtype == torch.float32
            and weight.dim() == 2 and weight.is_contiguous()
            and not (torch.is_grad_enabled() and weight.requires_grad)
            and not torch.compiler.is_compiling())


def native_eligible(weight: torch.Tensor) -> bool:
    """Whether ``linear(..., backend="auto")`` runs ``weight`` natively: :func:`native_capable`
    and at least ``NATIVE_MIN_WEIGHT_BYTES``."""
    return weight.numel() * 4 >= NATIVE_MIN_WEIGHT_BYTES and native_capable(weight)


def _native_ok(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """The model's rule for the native kernel: an eligible weight, fp32 x and bias, no gradient."""
    return (native_eligible(weight) and x.dtype == torch.float32 and x.device.type == "cpu"
            and (bias is None or bias.dtype == torch.float32) and not _needs_grad(x, bias))


def _blas_rows(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear`` of the rows of x ``[M, K]``, each row with the bits it gets in a product of
    at least MIN_BLAS_ROWS rows: an fp32 CPU product of 1 to BLOCKED_MAX_ROWS - 1 rows runs on
    ``linear_blocked_cpu`` where :func:`blas_block_rule` found the BLAS's summation order for
    K (the same bits, without padding); otherwise one of fewer than MIN_BLAS_ROWS rows runs on
    MIN_BLAS_ROWS rows (x's, then zeros), so each row takes the kernel it would take in a
    larger batch."""
    M = x.shape[0]
    if 0 < M < BLOCKED_MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2:
        out = _blocked(x, weight, bias)
        if out is not None:
            return out
    if 0 < M < MIN_BLAS_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 \
            and weight.dtype == torch.float32:
        padded = x.new_zeros(MIN_BLAS_ROWS, x.shape[1])
        padded[:M] = x
        return F.linear(padded, weight, bias)[:M]
    return F.linear(x, weight, bias)


# id(weight) -> (weak reference, weight._version, data_ptr, Wᵀ padded to 16 columns)
_TRANSPOSED: dict = {}


def _blocked(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``x [M, K]`` (fp32, CPU) ``· weightᵀ + bias`` through ``linear_blocked_cpu`` in the BLAS's
    summation order, or None where that order is unknown or the kernel cannot run these tensors
    (then the caller takes ``F.linear``)."""
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return None
    if bias is not None and (bias.dtype != torch.float32 or bias.device.type != "cpu"):
        return None
    found = blocked_weight(weight, bias is not None)
    if found is None:
        return None
    wt, block, bias_first = found
    N, K = weight.shape
    if x.stride(-1) != 1 or (x.shape[0] > 1 and x.stride(0) < K):
        x = x.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    out = torch.empty(x.shape[0], N, dtype=torch.float32)
    _core.linear_blocked_cpu(x.data_ptr(), x.shape[0], K, x.stride(0) if x.shape[0] > 1 else K, wt.data_ptr(), N,
                             16, 0 if bias is None else bias.data_ptr(), bias_first, block, out.data_ptr(), N,
                             wt_strip_stride=16 * K)
    return out


def blocked_weight(weight: torch.Tensor, with_bias: bool) -> Optional[Tuple[torch.Tensor, int, bool]]:
    """For a small fp32 CPU weight ``[N, K]`` whose products with at least ``MIN_BLAS_ROWS`` rows
    ``linear_blocked_cpu`` reproduces at the current thread count: ``(wt, block, bias_first)``,
    the cached transposed weight in strips of 16 columns, ``[ceil(N / 16), K, 16]``
    (``wt_row_stride`` 16, ``wt_strip_stride`` 16 K; rebuilt when the weight changes), and
    :func:`blas_block_rule`'s order. None where the kernel does not take the weight or no order
    matches."""
    hit = _TRANSPOSED.get(id(weight))
    if hit is None or hit[0]() is not weight or hit[2] != weight.data_ptr() or hit[1] != _version(weight):
        hit = _transpose(weight)
        if hit is None:
            return None
    N, K = weight.shape
    rule = _BLOCK_RULES.get((K, N, with_bias, torch.get_num_threads()), False)
    if rule is False:
        rule = blas_block_rule(K, N, with_bias)
    if rule is None or torch.compiler.is_compiling():
        return None
    return hit[3], rule[0], rule[1]


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


def _transpose(weight: torch.Tensor):
    """Cache and return ``weight [N, K]`` transposed in strips of 16 output columns,
    ``[ceil(N / 16), K, 16]`` (zero columns after N): a kernel tile's weights in consecutive
    memory. Kept while the weight lives and has not changed (version counter and storage); None
    for weights the kernel does not take (not a contiguous fp32 CPU matrix below
    ``NATIVE_MIN_WEIGHT_BYTES``, an inference tensor, or no vector path on this CPU)."""
    if not (_core is not None and hasattr(_core, "linear_blocked_cpu") and native_capable(weight)
            and weight.numel() * 4 < NATIVE_MIN_WEIGHT_BYTES and _core.linear_blocked_cpu_fast()):
        return None
    version = _version(weight)
    if version < 0:
        return None
    key = id(weight)
    N, K = weight.shape
    strips = -(-N // 16)
    padded = torch.zeros(strips * 16, K, dtype=torch.float32)
    with torch.no_grad():
        padded[:N] = weight
    wt = padded.view(strips, 16, K).transpose(1, 2).contiguous()  # [strips, K, 16]

    def forget(ref, key=key):
        if _TRANSPOSED.get(key, (None,))[0] is ref:
            del _TRANSPOSED[key]

    hit = _TRANSPOSED[key] = (weakref.ref(weight, forget), version, weight.data_ptr(), wt)
    return hit


# (K, N, with bias, torch threads) -> (block, bias_first) or None
_BLOCK_RULES: dict = {}


def blas_block_rule(in_features: int, out_features: int, with_bias: bool) -> Optional[Tuple[int, bool]]:
    """How ``F.linear`` (the BLAS under it) sums an fp32 ``[N, K]`` product of at least
    ``MIN_BLAS_ROWS`` rows on this CPU at the current thread count, as ``linear_blocked_cpu``'s
    ``(block, bias_first)``; None when no candidate reproduces it bit for bit, or when the BLAS
    itself gives the first 16 rows other bits in a product of 16 rows than in one of 32 (then
    products keep ``F.linear`` on at least 16 rows, as before). Found once per (K, N, bias,
    thread count) by running both on random rows and comparing every bit; a wrong order agreeing
    on all of them by chance is out of the question. Measured on an AMD EPYC (MKL, AVX2): one
    block up to K = 192, two halves up to 383, blocks of 192 beyond; with a bias, the bias
    first; at 2 threads, a 16-row product with N = 20 is split another way (no rule)."""
    key = (int(in_features), int(out_features), bool(with_bias), torch.get_num_threads())
    if key in _BLOCK_RULES:
        return _BLOCK_RULES[key]
    K, N = key[0], key[1]
    rule = None
    if K > 0 and N > 0 and _core is not None and hasattr(_core, "linear_blocked_cpu"):
        g = torch.Generator().manual_seed(1234 + K)
        x = torch.randn(2 * MIN_BLAS_ROWS, K, generator=g)
        w = torch.randn(N, K, generator=g)
        b = torch.randn(N, generator=g) if with_bias else None
        with torch.no_grad():
            want = F.linear(x, w, b)[:MIN_BLAS_ROWS].view(torch.int32)
            alone = F.linear(x[:MIN_BLAS_ROWS], w, b).view(torch.int32)
        if torch.equal(want, alone):
            stride = -(-N // 16) * 16
            wt = torch.zeros(K, stride)
            wt[:, :N] = w.t()
            blocks = [K] + sorted({K // 2, 64, 96, 128, 144, 160, 176, 192, 256, 384, 512} - {0}, reverse=True)
            out = torch.empty(MIN_BLAS_ROWS, N)
            for block in dict.fromkeys(b for b in blocks if b <= K):
                for bias_first in ((False, True) if with_bias else (False,)):
                    _core.linear_blocked_cpu(x.data_ptr(), MIN_BLAS_ROWS, K, K, wt.data_ptr(), N, stride,
                                             0 if b is None else b.data_ptr(), bias_first, block, out.data_ptr(), N)
                    if torch.equal(out.view(torch.int32), want):
                        rule = (block, bias_first)
                        break
                if rule is not None:
                    break
    _BLOCK_RULES[key] = rule
    return rule


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x [M, K] · weightᵀ + bias`` with each fp32 row's result independent of the other rows
    (the LM head's rule; see the module docstring): the native kernel for fp32 CPU weights of at
    least ``NATIVE_MIN_WEIGHT_BYTES`` when nothing needs a gradient, else the bits of ``F.linear``
    on at least ``MIN_BLAS_ROWS`` rows (see ``_blas_rows``). Shapes are not checked here (the
    model's calls are well-formed)."""
    if _native_ok(x, weight, bias):
        return _native(x, weight, bias)
    return _blas_rows(x, weight, bias)


def _native(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    N, K = weight.shape
    lead = x.shape[:-1]
    rows = x.reshape(-1, K)
    M = rows.shape[0]
    # the kernel reads M rows of K dense floats, rows stride(0) apart and not overlapping
    if M and (rows.stride(-1) != 1 or (M > 1 and rows.stride(0) < K)):
        rows = rows.contiguous()
    out = torch.empty(M, N, dtype=torch.float32)
    if bias is not None:
        bias = bias.contiguous()
    stride = rows.stride(0) if M > 1 else K
    quant = quantized_blocks(weight) if M <= QUANT_MAX_ROWS else None
    if quant is not None:  # the same bits from the GGUF blocks (csrc/linear_quant_cpu.h)
        blocks, type_id = quant
        _core.linear_quant_cpu(rows.data_ptr(), M, K, stride, blocks.data_ptr(), type_id, N,
                               0 if bias is None else bias.data_ptr(), out.data_ptr(), N, native_threads())
    else:
        _core.linear_cpu(rows.data_ptr(), M, K, stride, weight.data_ptr(), N,
                         0 if bias is None else bias.data_ptr(), out.data_ptr(), N, native_threads(), 0)
    return out.reshape(*lead, N)


# ggml block formats linear_quant_cpu reads: name -> (ggml type id, bytes per 32 weights)
QUANT_TYPES = {"Q4_0": (2, 18), "Q4_1": (3, 20), "Q8_0": (8, 34)}
# products of at most this many rows read a weight's GGUF blocks where it has them; more rows take
# the fp32 weights (the same bits). SmolLM2-135M's 121 matrices, 1 thread, blocks vs the fp32
# kernel (bench_linear.py --blocks): AVX2 machine 3.35x at 1 row, 2.30x at 4, 1.39x at 8, 1.20x
# at 16, 1.11x at 24; AVX-512 machine (both kernels' AVX-512 paths) 3.33x at 1 row, 2.81x at 4,
# 1.84x at 8, 1.43x at 16, 1.16x at 24, 1.06x at 32.
QUANT_MAX_ROWS = 24
# id(weight) -> (weak reference, weight._version, data_ptr, blocks (uint8 CPU tensor), type id)
_QUANTIZED: dict = {}
# bumped whenever blocks are attached or dropped (the native decode step rebuilds then)
_QUANT_EPOCH = [0]


def quant_epoch() -> int:
    """A counter that changes whenever GGUF blocks are attached to or dropped from a weight."""
    return _QUANT_EPOCH[0]


def quant_available() -> bool:
    """Whether this build and CPU run ``linear_quant_cpu`` (x86-64 with AVX2, FMA and F16C)."""
    return _core is not None and hasattr(_core, "linear_quant_cpu") and _core.linear_quant_cpu_available()


def attach_quantized(weight: torch.Tensor, blocks, type_name: str, verify: bool = True) -> None:
    """Keep a weight's GGUF blocks next to it: products of up to ``QUANT_MAX_ROWS`` rows that run
    natively on ``weight`` (decode rows, the LM head) then read the blocks, 3.8x (Q8_0) to 6.4x
    (Q4_1) fewer bytes than fp32, with the same bits (``csrc/linear_quant_cpu.h``).

    weight: contiguous fp32 CPU ``[N, K]``, K a multiple of 32, the exact de-quantisation of the
    blocks. blocks: uint8 numpy array or tensor of ``N * K / 32`` blocks of ``type_name``
    (``"Q4_0"``, ``"Q4_1"`` or ``"Q8_0"``), weight row after weight row (GGUF's layout). verify:
    de-quantise the blocks and compare every bit with ``weight`` (ValueError if any differs).
    The blocks are dropped when the weight changes in place or is freed. Raises ValueError /
    TypeError naming the argument, and RuntimeError where the CPU lacks the kernel."""
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32 or weight.dim() != 2 \
            or weight.device.type != "cpu" or not weight.is_contiguous():
        desc = f"{weight.dtype} {tuple(weight.shape)} on {weight.device}" if isinstance(weight, torch.Tensor) \
            else type(weight).__name__
        raise TypeError(f"weight must be a contiguous float32 CPU matrix [N, K], got {desc}")
    if type_name not in QUANT_TYPES:
        raise ValueError(f"type_name must be one of {sorted(QUANT_TYPES)}, got {type_name!r}")
    N, K = weight.shape
    if K % 32:
        raise ValueError(f"weight's in_features must be a multiple of 32 (the block size), got {K}")
    type_id, block_bytes = QUANT_TYPES[type_name]
    if isinstance(blocks, torch.Tensor):
        data = blocks
    else:  # a private copy (a file map's bytes may be read-only)
        data = torch.from_numpy(np.array(blocks, copy=True, order="C"))
    if data.dtype != torch.uint8 or data.device.type != "cpu":
        raise TypeError(f"blocks must be uint8 bytes on the CPU, got {data.dtype} on {data.device}")
    want = N * (K // 32) * block_bytes
    if data.numel() != want:
        raise ValueError(f"blocks must hold {want} bytes ({N} x {K // 32} {type_name} blocks of {block_bytes}), "
                         f"got {data.numel()}")
    version = _version(weight)
    if version < 0:
        raise ValueError("weight is an inference tensor: its changes cannot be tracked, so blocks cannot be "
                         "kept for it")
    if not quant_available():
        raise RuntimeError("this build or CPU has no linear_quant_cpu (x86-64 with AVX2, FMA and F16C)")
    data = data.reshape(-1).contiguous()
    if data.data_ptr() == (blocks.data_ptr() if isinstance(blocks, torch.Tensor) else -1):
        data = data.clone()  # never share the caller's tensor
    if verify:
        from ponder.models.gguf_file import dequantize

        exact = torch.from_numpy(dequantize(data.numpy(), type_name, (N, K), "blocks"))
        if not torch.equal(exact.view(torch.int32), weight.detach().view(torch.int32)):
            raise ValueError(f"blocks do not de-quantise to weight bit for bit ({type_name}, [{N}, {K}])")
    key = id(weight)

    def forget(ref, key=key):
        if _QUANTIZED.get(key, (None,))[0] is ref:
            del _QUANTIZED[key]
            _QUANT_EPOCH[0] += 1

    _QUANTIZED[key] = (weakref.ref(weight, forget), version, weight.data_ptr(), data, type_id)
    _QUANT_EPOCH[0] += 1


def detach_quantized(weight: torch.Tensor) -> None:
    """Drop the blocks :func:`attach_quantized` kept for ``weight`` (no-op if none)."""
    hit = _QUANTIZED.get(id(weight))
    if hit is not None and hit[0]() is weight:
        del _QUANTIZED[id(weight)]
        _QUANT_EPOCH[0] += 1


def quantized_blocks(weight: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
    """``(blocks, ggml type id)`` kept for ``weight`` by :func:`attach_quantized`, or None (none
    kept, or the weight changed since: then they are dropped)."""
    hit = _QUANTIZED.get(id(weight))
    if hit is None:
        return None
    if hit[0]() is not weight or hit[2] != weight.data_ptr() or hit[1] != _version(weight):
        if hit[0]() is weight or hit[0]() is None:
            del _QUANTIZED[id(weight)]
            _QUANT_EPOCH[0] += 1
        return None
    return hit[3], hit[4]


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check(x, weight, bias, backend) -> None:
    _checks.tensor("x", x, None, _checks.FLOAT_DTYPES, "[..., K] float")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension [..., K], got a 0-d tensor")
    _checks.tensor("weight", weight, 2, _checks.FLOAT_DTYPES, "[N, K] float")
    _checks.dim_size("weight", weight, 1, x.shape[-1], "K, the last dimension of x")
    if bias is not None:
        _checks.tensor("bias", bias, 1, _checks.FLOAT_DTYPES, "[N] float")
        _checks.dim_size("bias", bias, 0, weight.shape[0], "N, the rows of weight")
        _checks.same_device("x", x, bias=bias)
    _checks.same_device("x", x, weight=weight)
    if backend not in LINEAR_BACKENDS:
        raise ValueError(f"backend must be one of {LINEAR_BACKENDS}, got {backend!r}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           backend: str = "auto") -> torch.Tensor:
    """``x · weightᵀ + bias`` like ``torch.nn.functional.linear``.

    x: ``[..., K]`` float; weight: ``[N, K]``; bias: ``[N]`` or None; same device.
    backend: ``"torch"`` (``F.linear``), ``"native"`` (``ponder._core.linear_cpu``: fp32 CPU
    tensors only, else a TypeError / ValueError naming the argument) or ``"auto"`` (native when
    :func:`native_eligible` holds for weight, x and bias are fp32 too and nothing needs a
    gradient; else ``F.linear``).

    The native kernel sums each output in one fixed order (16 partial sums over K, then a fixed
    pairwise tree; see ``csrc/linear_cpu.h``): a row's result does not depend on the number of
    rows, the other rows or the thread count, and differs from ``F.linear`` by float rounding
    only. It splits large products over ``ops._threads.native_threads()`` threads.
    """
    _check(x, weight, bias, backend)
    if backend == "torch":
        return F.linear(x, weight, bias)
    fp32 = x.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if backend == "auto":
        if fp32 and native_eligible(weight) and not _needs_grad(x, bias):
            return _native(x, weight, bias)
        return F.linear(x, weight, bias)
    if not native_available():
        raise RuntimeError("backend='native' needs ponder._core with linear_cpu: rebuild the extension")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(f"backend='native' needs float32 CPU tensors; {name} is {t.dtype} on {t.device}")
    if _needs_grad(x, weight, bias):
        raise ValueError("backend='native' has no backward: x, weight and bias must not require grad "
                         "(use backend='torch' or torch.no_grad())")
    return _native(x, weight.contiguous(), bias)


class RowRoute:
    """Which rows of one forward take the native kernel: the rows of sequences that add at most
    ``NATIVE_MAX_SEQUENCE_TOKENS`` tokens (every decode row).

    Built once per forward from ``query_indptr`` ``[B+1]`` (CPU int32 / int64); ``route(x, w, b)``
    then runs one linear layer over all ``T`` rows of ``x [T, K]``: those rows through the native
    kernel for fp32 weights of at least ``NATIVE_MIN_WEIGHT_BYTES``, the rest (or, for smaller
    weights, all rows) with the bits of one ``F.linear`` call of at least ``MIN_BLAS_ROWS`` rows
    (``linear_blocked_cpu`` in the BLAS's order for 1-15 rows of a small matrix), so a row gets
    the same bits whatever else is in its batch. bf16 / fp16
    weights, autograd and other devices take plain ``F.linear``.
    """

    __slots__ = ("single", "multi", "kind")

    def __init__(self, query_indptr: torch.Tensor, num_rows: int):
        self.single = self.multi = None
        if query_indptr.device.type != "cpu" or not native_available() or num_rows == 0:
            self.kind = "torch"
            return
        lens = np.diff(query_indptr.numpy())  # numpy: microseconds, where four tiny torch ops take ~25
        short = lens <= NATIVE_MAX_SEQUENCE_TOKENS
        count = int(short.sum())
        if count == lens.size:
            self.kind = "native"
        elif count == 0:
            self.kind = "torch"
        else:
            self.kind = "split"
            rows = torch.from_numpy(np.repeat(short, lens))
            self.single = rows.nonzero().flatten()
            self.multi = (~rows).nonzero().flatten()

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.kind == "torch" or not _native_ok(x, weight, bias):
            return _blas_rows(x, weight, bias)
        if self.kind == "native":
            return _native(x, weight, bias)
        out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
        out[self.single] = _native(x[self.single], weight, bias)
        out[self.multi] = _blas_rows(x[self.multi], weight, bias)
        return out
