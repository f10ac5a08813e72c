"""Triton kernels of ponder, installed as ``ponder.triton``.

Device code only: each module holds ``@triton.jit`` kernels; launchers and the torch integration
live in ``ponder.ops``. Importing this package never requires a GPU.

- ``attention``: ``paged_attention`` (per row, split-KV decode) and ``shared_prefix_attention``
  (through an attention plan), and the log-sum-exp merge of partial outputs;
- ``kv``: ``append_kv`` and ``copy_pages``;
- ``sampling``: temperature / top-k / top-p sampling with the counter-based Gumbel draw;
- ``value_score``: fused step scoring (gather, RMSNorm, head dot, sigmoid, path aggregation).
"""
