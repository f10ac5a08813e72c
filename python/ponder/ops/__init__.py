"""Device ops of ponder, one module per op family, each with a pure-PyTorch reference.

Shape letters, fixed project-wide:

====  ==========================================================
B     batch of branches (decode rows)
T     tokens
N     nodes of a search forest
P     pages of the KV pool
S     page size (tokens per page)
L     layers
H     query heads
Hk    KV heads (H is a multiple of Hk; G = H // Hk)
D     head dim
V     vocabulary size
====  ==========================================================

The KV cache of one model is one tensor ``[L, 2, P, S, Hk, D]`` (index 0 of the second axis is
K, 1 is V). Every op takes ``backend="auto" | "torch" | "triton" | "cuda"``; ``"auto"`` honours
the ``PONDER_BACKEND`` environment variable, then picks the fastest implementation available for
the tensors' device. ``ponder.ops.reference`` holds the pure-PyTorch versions: the CPU path, the
test oracle and the benchmark baseline.

Ops (one module per family; each a ``torch.library.custom_op("ponder::<name>")`` with a fake
implementation, so they trace under ``torch.compile`` and capture in CUDA graphs):

- ``kv``: ``copy_pages`` (copy-on-write of pages), ``append_kv`` (write new tokens' K/V to slots)
- ``attention``: ``paged_attention`` (causal attention of ragged query rows over paged KV),
  ``shared_prefix_attention`` (decode attention through an attention plan: each run of pages
  shared by several branches is read once for all of them) and ``plan_shared_prefix_attention``
  (the plan of one decode step from block tables, built once and reused in every layer;
  ``plan_item_options`` gives the item shapes a backend wants, for plans built natively by
  ``PageTable.decode_step``). On CPU tensors ``paged_attention`` runs a native kernel from
  ``ponder._core`` for fp32 decode rows and short prefills (the reference stays the oracle)
- ``norm``: ``rms_norm``;  ``rotary``: ``rotary``, ``rope_cache``
- ``linear``: ``linear`` (``F.linear``, or on the CPU a native fp32 kernel that reads each
  weight once per block of rows and gives each row the same bits at any row count; ``RowRoute``
  picks the model's rows that take it, ``linear_rows`` runs the LM head with it). Not a
  ``custom_op``: under compilation and autograd it is ``F.linear``
- ``sampling``: ``sample`` (reproducible greedy / temperature / top-k / top-p, with logprobs) and
  ``sample_shared`` (the same for batch rows that share logits rows)

Every wrapper checks shapes, dtypes and devices on each call (metadata only, no device sync).
Checks of tensor values (index ranges, parameter ranges) need the values on the host: they
run by default for CPU tensors and otherwise only with ``check=True``. ``DecoderLM.forward``
checks its whole batch once and then, in eager mode, calls the implementations of its layer
ops directly (``DecoderLM._layer_ops``); under tracing it goes through the custom ops.
"""

from ponder.ops._registry import BACKENDS, available_backends, resolve_backend
from ponder.ops.attention import paged_attention, plan_item_options, plan_shared_prefix_attention, shared_prefix_attention
from ponder.ops.kv import append_kv, copy_pages
from ponder.ops.norm import rms_norm
from ponder.ops.rotary import rope_cache, rotary
from ponder.ops.sampling import sample, sample_shared
from ponder.ops.value_score import value_score
from ponder.ops import triton_backend as _triton_backend  # noqa: F401  (registers the "triton" backend of each op)
from ponder.ops import cuda_backend as _cuda_backend  # noqa: F401  (registers the "cuda" backend of its ops)

__all__ = [
    "BACKENDS",
    "append_kv",
    "available_backends",
    "copy_pages",
    "paged_attention",
    "plan_item_options",
    "plan_shared_prefix_attention",
    "resolve_backend",
    "rms_norm",
    "rope_cache",
    "rotary",
    "sample",
    "sample_shared",
    "shared_prefix_attention",
    "value_score",
]
