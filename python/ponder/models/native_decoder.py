"""A fp32 CPU decoder's whole decode step in one native call (``ponder._core.DecoderCpu``).

A small model's decode step is mostly op overhead: the countdown policy (4 layers, hidden size
128) runs about 170 PyTorch ops and host-kernel calls per forward, each a few microseconds of
Python and dispatch around less work. :class:`NativeDecoder` runs every layer of a decode
batch (one new token per sequence) in C++: the same host kernels as
:meth:`DecoderLM.forward <ponder.models.llama.DecoderLM.forward>` (``linear_cpu``,
``linear_blocked_cpu`` in the BLAS's order, ``rotary_cpu``, ``append_kv_cpu``,
``paged_attention_cpu``, or ``shared_prefix_attention_cpu`` through a step's plan over the
rows that run), and PyTorch's rms_norm sum and SiLU redone in PyTorch's order
(``csrc/torch_order_cpu.h``). So the hidden rows and the K/V written are the same bits as the
eager forward's, which ``tests/models/test_native_decoder.py`` checks over model shapes, batch
sizes, shared rows and thread counts.

Where a bit could differ, the eager forward runs instead:

- the PyTorch-order computations are matched against PyTorch on random data once per
  (hidden size, intermediate size, eps, thread count); a PyTorch whose order differs from the
  one reproduced (another vector width, another summation) keeps the eager forward;
- every matrix must run on ``linear_cpu`` in the eager forward too (fp32 weights of at least
  ``ops.linear.NATIVE_MIN_WEIGHT_BYTES``) or have a BLAS order (``ops.linear.blocked_weight``);
- an elementwise op over more than PyTorch's grain (32,768 elements) is split over its threads,
  and a split inside a row moves which elements take PyTorch's scalar exp: with more than one
  torch thread, a step whose SiLU would split off the vector boundaries runs eagerly;
- the ops must resolve to the host implementations (no backend override, no tracing);
- a plan must cover exactly the rows that run: one over all rows of a batch with row groups
  (where every row attends and a group may split) keeps the eager loop.

``DecoderLM.native_decode = False`` turns the path off for a model (benchmarks compare both).
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ponder.ops import linear
from ponder.ops import _registry
from ponder.ops._registry import implementation
from ponder.ops._threads import native_threads

try:
    from ponder import _core
except ImportError:  # a source tree without the built extension
    _core = None

# PyTorch's at::internal::GRAIN_SIZE: elementwise ops of fewer elements run on one thread
TORCH_GRAIN = 32768
TORCH_WIDTHS = (8, 16)  # Vectorized<float>::size() with AVX2 / AVX-512

# With more than one torch thread, a step of more rows than this through small matrices runs
# eagerly: there MKL's threaded products beat linear_blocked_cpu with its rows split over the
# threads (the countdown policy at 2 threads, AMD EPYC: native / eager step time 0.95 at 128
# rows, 1.12 at 400; at 1 thread the native step is faster at every row count measured, up
# to 400)
THREADED_MAX_ROWS = 192
# (hidden, intermediate, eps, torch threads) -> the matching width, or None
_WIDTHS: dict = {}


def available() -> bool:
    """Whether the extension has the native decode step."""
    return _core is not None and hasattr(_core, "DecoderCpu")


HOST_OPS = ("rms_norm", "rotary", "append_kv")


def host_ops_active(shared: bool = False) -> bool:
    """Whether the eager forward's per-layer ops resolve to their host implementations on the
    CPU (the kernels the native step runs), with no backend override; its attention is
    ``shared_prefix_attention`` through a plan (``shared``), else ``paged_attention``."""
    attention = "shared_prefix_attention" if shared else "paged_attention"
    return all(implementation(op, "auto", "cpu") is _registry._HOST_IMPLS.get(op) for op in HOST_OPS + (attention,))


def _probe_values(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Random fp32 rows over many magnitudes, with zeros, signed zeros, subnormals and values
    past the exp cut-offs mixed in."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.pow(10.0, torch.randint(-6, 4, (rows, 1), generator=g).float())
    x = torch.randn(rows, cols, generator=g) * scale
    special = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 87.0, -87.0, 88.8, -88.8, 103.9, -104.1, 200.0, -200.0,
                            1e30, -1e30])
    flat = x.view(-1)
    idx = torch.randint(0, flat.numel(), (special.numel(),), generator=g)
    flat[idx] = special
    return x


def torch_order_width(hidden: int, intermediate: int, eps: float) -> Optional[int]:
    """The vector width (8 or 16) for which ``_core.rms_norm_torch_order`` and
    ``_core.silu_mul_torch_order`` give the bits of the eager forward's rms_norm (the registered
    CPU implementation) and ``F.silu(gate) * up`` at the current torch thread count, or None.
    Found once per (hidden, intermediate, eps, thread count) on random rows."""
    key = (int(hidden), int(intermediate), float(eps), torch.get_num_threads())
    if key in _WIDTHS:
        return _WIDTHS[key]
    width = None
    if available():
        C, I = key[0], key[1]
        norm = implementation("rms_norm", "auto", "cpu")
        x = _probe_values(41, C, 7 + C)
        w = torch.randn(C, generator=torch.Generator().manual_seed(C))
        gu = _probe_values(43, 2 * I, 11 + I) / 1e3
        gate, up = gu.chunk(2, dim=-1)
        with torch.inference_mode():
            want_norm = norm(x, w, eps).view(torch.int32)
            want_silu = (F.silu(gate) * up).view(torch.int32)
        for candidate in TORCH_WIDTHS:
            out = torch.empty(x.shape)
            _core.rms_norm_torch_order(x.data_ptr(), x.shape[0], C, C, w.data_ptr(), eps, candidate, out.data_ptr(), C)
            if not torch.equal(out.view(torch.int32), want_norm):
                continue
            act = torch.empty(gate.shape)
            _core.silu_mul_torch_order(gu.data_ptr(), gu.data_ptr() + 4 * I, gu.shape[0], I, 2 * I, candidate,
                                       act.data_ptr(), I)
            if torch.equal(act.view(torch.int32), want_silu):
                width = candidate
                break
    _WIDTHS[key] = width
    return width


def silu_split_ok(rows: int, intermediate: int, width: int, threads: int) -> bool:
    """Whether PyTorch's SiLU over ``[rows, intermediate]`` gives each element the exp it gives
    it on one thread: no split (one thread, or fewer elements than the grain), or splits at
    multiples of ``2 * width`` with rows that are themselves multiples of it."""
    numel = rows * intermediate
    if threads <= 1 or numel < TORCH_GRAIN:
        return True
    step = 2 * width
    parts = min(threads, -(-numel // TORCH_GRAIN))
    chunk = -(-numel // parts)
    return intermediate % step == 0 and chunk % step == 0


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


_LAYER_PARAMS = ("attn_norm", "qkv_weight", "qkv_bias", "o_weight", "o_bias", "mlp_norm", "gate_up_weight",
                 "down_weight")


def _layer_params(model) -> List[Optional[torch.Tensor]]:
    """Every layer's weights in ``_LAYER_PARAMS`` order, then the final norm (read from the
    modules' parameter dicts: this runs every decode step)."""
    out: List[Optional[torch.Tensor]] = []
    for layer in model.layers:
        params = layer._parameters
        out += [params.get(name) for name in _LAYER_PARAMS]
    out.append(model._parameters["norm"])
    return out


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


class NativeDecoder:
    """One model's native decode step; build with :func:`for_model` (cached per model)."""

    __slots__ = ("core", "width", "threads", "intermediate", "params", "pointers", "watched", "keep", "quant_epoch",
                 "blocked", "__weakref__")

    def __init__(self, core, width: int, params, watched, keep) -> None:
        self.core = core
        self.width = width
        self.threads = torch.get_num_threads()
        self.params = params  # strong references: the pointers stay valid while this lives
        self.pointers = [_ptr(p) for p in params]
        self.watched = watched  # (index into params, version) of weights with a transposed copy or GGUF blocks
        self.keep = keep  # the transposed copies and the blocks
        self.intermediate = 0
        self.quant_epoch = 0  # ops.linear.quant_epoch() when built: GGUF blocks attached or dropped since
        self.blocked = False  # whether some matrix runs on linear_blocked_cpu

    @staticmethod
    @torch.no_grad()
    def build(model) -> Optional["NativeDecoder"]:
        """The native step for ``model``'s current weights, or None where it cannot give the
        eager forward's bits (see the module docstring). The step only runs inside the model's
        inference-mode forward, so it is decided without gradients whatever the caller's mode."""
        cfg = model.config
        if not available() or model.device.type != "cpu" or model.dtype != torch.float32:
            return None
        width = torch_order_width(cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps)
        if width is None:
            return None
        params = _layer_params(model)
        if any(p is not None and (p.dtype != torch.float32 or not p.is_contiguous() or p.device.type != "cpu")
               for p in params):
            return None
        watched, keep, layers = [], [], []
        blocked = False
        for i in range(cfg.num_layers):
            base = 8 * i
            an, qw, qb, ow, ob, mn, gw, dw = params[base:base + 8]
            specs = []
            for j, (w, b) in ((base + 1, (qw, qb)), (base + 3, (ow, ob)), (base + 6, (gw, None)),
                              (base + 7, (dw, None))):
                N, K = w.shape
                if linear.native_eligible(w):  # the eager forward's decode rows take linear_cpu
                    quant = linear.quantized_blocks(w)  # or, for few rows, its GGUF blocks (same bits)
                    if quant is None:
                        specs.append((w.data_ptr(), 0, 0, 0, _ptr(b), 0, False, N, K, 0, 0, 0))
                        continue
                    blocks, type_id = quant
                    watched.append((j, _version(w)))  # changed in place: the blocks no longer hold
                    keep.append(blocks)
                    specs.append((w.data_ptr(), 0, 0, 0, _ptr(b), 0, False, N, K, blocks.data_ptr(), type_id,
                                  linear.QUANT_MAX_ROWS))
                    continue
                found = linear.blocked_weight(w, b is not None)
                if found is None:
                    return None
                wt, block, bias_first = found
                blocked = True
                watched.append((j, _version(w)))
                keep.append(wt)
                specs.append((0, wt.data_ptr(), 16, 16 * K, _ptr(b), block, bias_first, N, K, 0, 0, 0))  # strips
            layers.append((an.data_ptr(), specs[0], specs[1], mn.data_ptr(), specs[2], specs[3]))
        core = _core.DecoderCpu(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                cfg.intermediate_size, cfg.rms_norm_eps, width, layers, model.norm.data_ptr())
        decoder = NativeDecoder(core, width, params, watched, keep)
        decoder.intermediate = cfg.intermediate_size
        decoder.quant_epoch = linear.quant_epoch()  # after quantized_blocks() dropped any stale blocks
        decoder.blocked = blocked
        return decoder

    def current(self, model) -> bool:
        """Whether this step still matches ``model``: the same parameter tensors at the same
        addresses, unchanged where a transposed copy was taken, and the same thread count."""
        if torch.get_num_threads() != self.threads or linear.quant_epoch() != self.quant_epoch:
            return False
        params = _layer_params(model)
        if len(params) != len(self.params):
            return False
        for p, q, ptr in zip(params, self.params, self.pointers):
            if p is not q or (p is not None and p.data_ptr() != ptr):
                return False
        return all(_version(params[j]) == v for j, v in self.watched)

    def accepts(self, rows: int) -> bool:
        """Whether a step of ``rows`` distinct rows runs natively: it must give the eager
        forward's bits here, and with more than one thread at most ``THREADED_MAX_ROWS`` rows
        go through matrices on ``linear_blocked_cpu`` (beyond, MKL's threaded products win)."""
        if self.blocked and self.threads > 1 and rows > THREADED_MAX_ROWS:
            return False
        return silu_split_ok(rows, self.intermediate, self.width, self.threads)

    def decode(self, x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
               slot_mapping: torch.Tensor, groups: Optional[torch.Tensor], block_tables: torch.Tensor,
               seq_lens: torch.Tensor, plan=None) -> torch.Tensor:
        """x ``[U, C]`` token embeddings (a fresh contiguous tensor, overwritten) -> the
        final-normed hidden rows ``[U, C]``; see ``_core.DecoderCpu.decode``. ``plan``: None,
        or the step's :class:`~ponder.attention_plan.DeviceAttentionPlan` (CPU) over the U rows.
        The caller has checked shapes, dtypes and devices (``DecoderLM.forward``); indices are
        checked here."""
        U, T = x.shape[0], slot_mapping.shape[0]
        _, _, P, S, _, _ = kv_cache.shape
        pos, slots, tables, lens, table = (t.contiguous() for t in (positions, slot_mapping, block_tables, seq_lens,
                                                                    cos_sin))
        grp = None if groups is None else groups.contiguous()
        arrays = None
        if plan is not None:
            a = [t.contiguous() for t in (plan.item_page_indptr, plan.item_pages, plan.item_num_tokens,
                                          plan.item_query_indptr, plan.item_queries)]
            num_items = a[2].shape[0]
            if a[0].shape[0] != num_items + 1 or a[3].shape[0] != num_items + 1:
                raise ValueError(f"plan.item_page_indptr and plan.item_query_indptr must have {num_items + 1} "
                                 f"entries (one more than plan.item_num_tokens), got {a[0].shape[0]} and "
                                 f"{a[3].shape[0]}")
            if any(t.dtype != torch.int32 or t.device.type != "cpu" for t in a):
                raise ValueError("the plan's arrays must be int32 CPU tensors")
            arrays = (a[0].data_ptr(), a[1].data_ptr(), a[2].data_ptr(), num_items, a[1].shape[0], a[3].data_ptr(),
                      a[4].data_ptr(), a[4].shape[0])
        self.core.decode(x.data_ptr(), U, pos.data_ptr(), table.data_ptr(), table.shape[0], kv_cache.data_ptr(), P, S,
                         slots.data_ptr(), _ptr(grp), T, tables.data_ptr(), tables.shape[1], lens.data_ptr(), arrays,
                         native_threads())
        return x


# model -> (None, its NativeDecoder) or (what its None was decided on, None)
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def for_model(model) -> Optional[NativeDecoder]:
    """``model``'s native decode step, built on first use and rebuilt when its weights or the
    thread count change; None where the eager forward must run (see the module docstring)."""
    hit = _CACHE.get(model)
    if hit is not None:
        key, decoder = hit
        if decoder is not None and decoder.current(model):
            return decoder
        if decoder is None and key == _none_key(model):
            return None
    decoder = NativeDecoder.build(model)
    _CACHE[model] = (None if decoder is not None else _none_key(model), decoder)
    return decoder


def _none_key(model) -> Tuple:
    return (torch.get_num_threads(), tuple(_ptr(p) for p in _layer_params(model)))
