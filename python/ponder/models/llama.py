"""``DecoderLM``: the Llama / Qwen2 / Mistral / SmolLM decoder on ponder's paged KV cache.

One flattened ragged forward serves prefill, decode and mixed batches (``forward_dense`` is the
same decoder without a cache, for training): ``T`` query rows from
``B`` sequences, each sequence's K/V living in pages of one ``[L, 2, P, S, Hk, D]`` tensor.
Every layer is ``rms_norm -> qkv -> rotary -> append_kv -> paged_attention -> o_proj ->
residual -> rms_norm -> SwiGLU -> residual``; the math is ``transformers``' LlamaModel /
Qwen2Model, so logits match it on the same weights.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ponder import ops
from ponder.ops import reference
from ponder.ops._registry import direct_call, implementation
from ponder.ops.linear import RowRoute, linear_rows
from ponder.models import inputs, native_decoder
from ponder.models.config import ModelConfig
from ponder.models.value_head import ValueHeadModule


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtype(name: str, dtype) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")


def zeros_on_first_touch(shape, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed, contiguous CPU tensor (64-byte aligned, like PyTorch's allocator) whose memory
    is zeroed by the operating system one page at a time when first touched.

    ``torch.zeros`` writes every byte up front: for the default engine pool (8,192 pages of a
    small model, 268 MB) that is about 0.1 s per engine, and all of it becomes resident. numpy's
    ``zeros`` asks for ``calloc`` memory instead, which fresh pages satisfy without a write. The
    values are the same zeros."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    raw = np.zeros(nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return torch.from_numpy(raw[start:start + nbytes]).view(dtype).view(shape)


def _split_groups(rows: torch.Tensor, firsts: torch.Tensor, groups: torch.Tensor, x: torch.Tensor):
    """Rows ``rows [T, ...]`` of a step's groups (``firsts [U]``, ``groups [T]``): each row whose
    values differ in any bit from its group's first row's becomes a group of its own, with a
    copy of its group's row of ``x [U, C]`` (equal until now). Returns (firsts, groups, x)."""
    lead = firsts[groups]  # [T]
    apart = (rows != rows[lead]).reshape(rows.shape[0], -1).any(dim=1)  # [T]; NaN counts as different
    apart[firsts] = False
    idx = apart.nonzero().flatten()
    if idx.numel() == 0:
        return firsts, groups, x
    U = firsts.shape[0]
    x = torch.cat([x, x[groups[idx]]])
    groups = groups.clone()
    groups[idx] = torch.arange(U, U + idx.numel(), dtype=groups.dtype, device=groups.device)
    return torch.cat([firsts, idx]), groups, x


class DecoderLayer(nn.Module):
    """Weights of one block. q/k/v and gate/up are stored fused: one matmul each instead of
    three / two (the loaders concatenate the Hugging Face tensors)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        C, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * D
        kw = dict(dtype=dtype, device=device)
        self.attn_norm = nn.Parameter(torch.empty(C, **kw))
        self.qkv_weight = nn.Parameter(torch.empty(qkv_rows, C, **kw))
        self.qkv_bias = nn.Parameter(torch.empty(qkv_rows, **kw)) if cfg.attention_bias else None
        self.o_weight = nn.Parameter(torch.empty(C, cfg.num_heads * D, **kw))
        self.o_bias = nn.Parameter(torch.empty(C, **kw)) if cfg.attention_out_bias else None
        self.mlp_norm = nn.Parameter(torch.empty(C, **kw))
        self.gate_up_weight = nn.Parameter(torch.empty(2 * I, C, **kw))
        self.down_weight = nn.Parameter(torch.empty(C, I, **kw))


class DecoderLM(nn.Module):
    """A Llama-family causal LM whose attention reads and writes a paged KV cache.

    Construct from a :class:`ModelConfig` (weights drawn like ``transformers`` initialises
    them: normal(0, ``init_std``) matrices, unit norms, zero biases) or load one with
    :func:`ponder.models.load`. ``value_head=True`` attaches a fresh :class:`ValueHeadModule`.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, value_head: bool = False,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        check_dtype("dtype", dtype)
        self.config = config
        kw = dict(dtype=dtype, device=device)
        self.embed = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size, **kw))
        self.layers = nn.ModuleList(DecoderLayer(config, dtype, device) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.empty(config.hidden_size, **kw))
        self.lm_head = (None if config.tie_word_embeddings
                        else nn.Parameter(torch.empty(config.vocab_size, config.hidden_size, **kw)))
        self.value_head: Optional[ValueHeadModule] = None
        # decode batches run as one native call where that gives the same bits
        # (ponder.models.native_decoder); False: always the eager layer loop
        self.native_decode = True
        if value_head:
            self.attach_value_head()
        self.register_buffer("cos_sin", torch.empty(0), persistent=False)
        self.refresh_rope()
        if self.embed.device.type != "meta":
            self.init_weights(init_std)

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Re-draw every weight: normal(0, ``std``) matrices, unit norms, zero biases."""
        for name, p in self.named_parameters():
            if name.startswith("value_head."):
                continue
            if p.dim() == 1:
                p.fill_(1.0 if name.endswith("norm") else 0.0)
            else:
                p.normal_(0.0, std, generator=generator)

    def attach_value_head(self) -> ValueHeadModule:
        """Attach (or replace) a fresh value head on the final hidden state and return it."""
        self.value_head = ValueHeadModule(self.config.hidden_size, self.config.rms_norm_eps,
                                    dtype=self.embed.dtype, device=self.embed.device)
        return self.value_head

    def refresh_rope(self) -> None:
        # The table is derived data: it is rebuilt in fp32 on the weights' device whenever the
        # module moves, so a bf16 cast of the model never rounds the angles.
        cfg = self.config
        device = self.embed.device
        if device.type == "meta":
            self.cos_sin = torch.empty(cfg.max_position_embeddings, cfg.head_dim, device="meta")
            return
        table = ops.rope_cache(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.cos_sin = table.to(device)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.refresh_rope()
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies across all layers, in the model's dtype."""
        cfg = self.config
        return 2 * cfg.num_layers * cfg.kv_dim * self.embed.element_size()

    def allocate_kv_cache(self, num_pages: int, page_size: int, dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None) -> torch.Tensor:
        """A zeroed KV cache ``[L, 2, num_pages, page_size, Hk, D]`` (default: model dtype and device).

        Zeroed rather than empty so that padding slots never hold NaNs a kernel could touch. On
        the CPU the zeros come from the operating system page by page on first touch
        (:func:`zeros_on_first_touch`), so a large pool costs nothing until its pages are used.
        """
        for name, value in (("num_pages", num_pages), ("page_size", page_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dtype is not None:
            check_dtype("dtype", dtype)
        cfg = self.config
        shape = (cfg.num_layers, 2, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim)
        device = torch.device(device if device is not None else self.device)
        if device.type == "cpu":
            return zeros_on_first_touch(shape, dtype or self.dtype)
        return torch.zeros(shape, dtype=dtype or self.dtype, device=device)

    # ---------------------------------------------------------------- compute
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                slot_mapping: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                query_indptr: torch.Tensor, *, check: Optional[bool] = None, decode_plan=None,
                row_groups=None) -> torch.Tensor:
        """Run ``T`` new tokens of ``B`` sequences; returns the final-normed hidden ``[T, C]``.

        input_ids ``[T]`` int64; positions ``[T]`` int64 (absolute position of each token);
        kv_cache ``[L, 2, P, S, Hk, D]`` (written at ``slot_mapping``, ``-1`` skips a row);
        slot_mapping ``[T]`` int64 (``page * S + offset``); block_tables ``[B, max_pages]``
        int32; seq_lens ``[B]`` int32 (cached + new tokens); query_indptr ``[B+1]`` int32
        (rows ``query_indptr[b]:query_indptr[b+1]`` are sequence ``b``'s new tokens, in order).
        check: validate index values and their consistency (token ids, positions, slots, pages;
        device syncs) before anything is written. Default: on CPU tensors only, like the ops.
        Shapes, dtypes and devices are always checked.
        decode_plan: for a decode batch (one new token per sequence), the step's
        :class:`~ponder.attention_plan.DeviceAttentionPlan` from ``ops.plan_shared_prefix_attention``
        over the same block tables and lengths; every layer then runs
        ``ops.shared_prefix_attention``, reading each KV segment shared by several sequences once.
        row_groups: for a decode batch, ``(firsts [U], groups [T])`` int64 marking rows whose
        results are the same: rows with equal ``groups`` feed the same token at the same position
        on the same cached context (the same K/V values), and ``firsts[g]`` is a row of group
        ``g`` (``groups[firsts] == arange(U)``). Only the ``U`` first rows run (embedding, norms,
        projections, rotary, attention over their own pages, MLP); every row still writes its
        own K/V slot. ``decode_plan`` may cover all T rows: every row then attends (a plan's
        items depend on which pages rows share, so rows with the same keys can round
        differently), and a row whose attention output differs in any bit from its group's
        first row's goes on as a group of its own. Or it covers the U first rows alone, in
        ``firsts`` order (``AttentionPlan.for_queries``), when the caller knows the kernel's
        rows are independent and each row's items match its first row's (the engine's
        ``split_by_items``). For fp32 weights on the CPU the result is the same bits as without
        ``row_groups``: the linears give a row the same bits whatever its batch
        (``ops/linear.py``), and per-sequence attention reads a row's own keys and values alone
        (bf16 / fp16 and GPU products may round a row by its batch). The caller vouches for the
        shared context: values checks cover the tokens, positions and index ranges, not the
        cache contents.

        A decode batch of an fp32 CPU model runs as one native call
        (:mod:`ponder.models.native_decoder`, off with ``model.native_decode = False``) where
        that gives the same bits as the layer loop below.

        Example, page size 4: sequence 0 has 5 cached tokens in pages [2, 0] and decodes one;
        sequence 1 prefills 3 tokens into page 1::

            input_ids=[t5, u0, u1, u2]  positions=[5, 0, 1, 2]  slot_mapping=[1, 4, 5, 6]
            block_tables=[[2, 0], [1, -1]]  seq_lens=[6, 3]  query_indptr=[0, 1, 4]
        """
        cfg = self.config
        batch = (input_ids, positions, kv_cache, slot_mapping, block_tables, seq_lens, query_indptr)
        inputs.check_metadata(cfg, self.device, *batch)
        if input_ids.shape[0] and (self.device.type == "cpu" if check is None else check):
            inputs.check_values(cfg, *batch)
        T = input_ids.shape[0]
        if decode_plan is not None and row_groups is not None and decode_plan.num_queries != T:
            pass  # a plan cut down to the groups' first rows (checked below)
        elif decode_plan is not None and block_tables.shape[0] != T:
            raise ValueError(f"decode_plan serves decode batches (one new token per sequence); got {T} tokens "
                             f"for {block_tables.shape[0]} sequences")
        if T == 0:
            return torch.empty(0, cfg.hidden_size, dtype=self.dtype, device=self.device)
        H, Hk, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        scale = 1.0 / math.sqrt(D)
        firsts = groups = None
        if row_groups is not None:
            firsts, groups = inputs.check_row_groups(row_groups, input_ids, positions, block_tables, query_indptr,
                                                     self.device.type == "cpu" if check is None else check)
            if decode_plan is not None and decode_plan.num_queries not in (T, firsts.shape[0]):
                raise ValueError(f"with row_groups, decode_plan must cover all T={T} rows or the "
                                 f"{firsts.shape[0]} first rows, got {decode_plan.num_queries} queries")
            if firsts.shape[0] == T:  # every row its own group
                firsts = groups = None
        rows = T if firsts is None else firsts.shape[0]
        if (getattr(self, "native_decode", True) and block_tables.shape[0] == T
                and (decode_plan is None or decode_plan.num_queries == rows)):
            step = self._native_step(kv_cache, query_indptr, rows, decode_plan is not None, input_ids, positions,
                                     slot_mapping, block_tables, seq_lens)
            if step is not None:
                if firsts is not None:
                    input_ids, positions = input_ids[firsts], positions[firsts]
                    block_tables, seq_lens = block_tables[firsts], seq_lens[firsts]
                x = F.embedding(input_ids, self.embed)  # [U, C]
                out = step.decode(x, positions, self.cos_sin, kv_cache, slot_mapping, groups, block_tables,
                                  seq_lens, decode_plan)  # [U, C]
                return out if groups is None else out[groups]  # [T, C]
        norm, rotate, append, attend = self._layer_ops(decode_plan is not None, input_ids, kv_cache)
        meta = decode_plan if decode_plan is not None else (block_tables, seq_lens, query_indptr)
        all_positions = positions
        if firsts is None:
            route = RowRoute(query_indptr, T)  # decode rows: the native linear kernel (ops/linear.py)
            U = T
            x = F.embedding(input_ids, self.embed)  # [T, C]
        else:  # a decode batch: U distinct rows, each a sequence of one new token
            U = firsts.shape[0]
            route = RowRoute(query_indptr[:U + 1], U)
            x = F.embedding(input_ids[firsts], self.embed)  # [U, C]
            positions = positions[firsts]  # [U]
            if decode_plan is None:
                # per-sequence attention: a row's output depends on its own keys and values
                # alone, and a group's rows hold the same ones, so the first row attends for all
                meta = (block_tables[firsts], seq_lens[firsts], query_indptr[:U + 1])
        for i, layer in enumerate(self.layers):
            h = norm(x, layer.attn_norm, cfg.rms_norm_eps)  # [U, C]
            qkv = route(h, layer.qkv_weight, layer.qkv_bias)  # [U, (H + 2Hk) * D]
            q, k, v = qkv.split([H * D, Hk * D, Hk * D], dim=-1)  # [U, H*D], [U, Hk*D], [U, Hk*D]
            q = q.reshape(U, H, D)  # [U, H, D]
            k = k.reshape(U, Hk, D)  # [U, Hk, D]
            v = v.reshape(U, Hk, D)  # [U, Hk, D]
            q, k = rotate(q, k, positions, self.cos_sin)  # [U, H, D], [U, Hk, D]
            if groups is not None:  # every row writes its own K/V slot
                k, v = k[groups], v[groups]  # [T, Hk, D] each
            append(kv_cache, i, k.to(kv_cache.dtype), v.to(kv_cache.dtype), slot_mapping)
            if groups is None or decode_plan is None or decode_plan.num_queries == U:
                attn = attend(q, kv_cache, i, meta, scale)  # [U, H, D]
            else:
                # through the plan every row attends: its items depend on the pages it shares,
                # so equal rows can round differently; a row whose output differs from its
                # group's first row's goes on as a group of its own
                attn = attend(q[groups], kv_cache, i, meta, scale)  # [T, H, D]
                firsts, groups, x = _split_groups(attn, firsts, groups, x)
                if firsts.shape[0] != U:
                    U = firsts.shape[0]
                    route = RowRoute(query_indptr[:U + 1], U)
                    positions = all_positions[firsts]
                attn = attn[firsts]  # [U, H, D]
            x = x + route(attn.reshape(U, H * D), layer.o_weight, layer.o_bias)  # [U, C]
            h = norm(x, layer.mlp_norm, cfg.rms_norm_eps)  # [U, C]
            gate, up = route(h, layer.gate_up_weight).chunk(2, dim=-1)  # [U, I] each
            x = x + route(F.silu(gate) * up, layer.down_weight)  # [U, C]
        out = norm(x, self.norm, cfg.rms_norm_eps)  # [U, C]
        return out if groups is None else out[groups]  # [T, C]

    def _native_step(self, kv_cache: torch.Tensor, query_indptr: torch.Tensor, rows: int, shared: bool,
                     *tensors: torch.Tensor) -> Optional["native_decoder.NativeDecoder"]:
        """The native decode step (:mod:`ponder.models.native_decoder`) when it gives this
        decode batch (one new token per sequence; ``shared``: through a plan over its ``rows``
        distinct rows) the eager forward's bits: an fp32 CPU model and cache, plain eager
        tensors, the ops' host implementations, rows that PyTorch's SiLU handles as on one
        thread; else None."""
        if (self.device.type != "cpu" or kv_cache.dtype != torch.float32 or not kv_cache.is_contiguous()
                or not native_decoder.host_ops_active(shared)
                or not direct_call(self.embed, kv_cache, query_indptr, *tensors)
                or not bool((np.diff(query_indptr.numpy()) == 1).all())):
            return None
        step = native_decoder.for_model(self)
        return step if step is not None and step.accepts(rows) else None

    def _layer_ops(self, shared: bool, *tensors: torch.Tensor):
        """The four per-layer ops of :meth:`forward` as ``(rms_norm, rotary, append_kv, attend)``.

        ``forward`` has already checked every shape, dtype and device, so a plain eager call
        resolves each op's implementation once per forward and calls it directly: a decode step
        makes 5 op calls per layer, and the public wrappers' argument checks and backend lookup
        cost more than the ops themselves on a small model. Anything that traces (compile,
        export, fake tensors, dispatch modes) goes through the public ops and their custom-op
        schemas instead. Both routes run the same implementation, so the results are the same
        bits. ``attend(q, kv_cache, layer, meta, scale)`` takes the decode plan when ``shared``,
        else ``(block_tables, seq_lens, query_indptr)``.
        """
        if not direct_call(self.embed, *tensors):
            def attend_op(q, kv, layer, meta, scale):
                if shared:
                    return ops.shared_prefix_attention(q, kv, layer, meta, scale, check=False)
                return ops.paged_attention(q, kv, layer, *meta, scale, check=False)

            return (ops.rms_norm, functools.partial(ops.rotary, check=False),
                    functools.partial(ops.append_kv, check=False), attend_op)
        dev = self.device
        if shared:
            attend = implementation("shared_prefix_attention", "auto", dev)
        else:
            paged = implementation("paged_attention", "auto", dev)

            def attend(q, kv, layer, meta, scale):
                return paged(q, kv, layer, *meta, scale)

        return (implementation("rms_norm", "auto", dev), implementation("rotary", "auto", dev),
                implementation("append_kv", "auto", dev), attend)

    def forward_dense(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The same decoder without a KV cache, differentiable (training, offline scoring):
        ``input_ids [B, T]`` int64 (row b's token t at position t) -> final-normed hidden
        ``[B, T, C]`` in the model's dtype.

        Same math as :meth:`forward` (the ops' PyTorch references for rms_norm / rotary, fp32
        softmax attention), with a causal ``[T, T]`` mask instead of paged KV. Right padding is
        harmless: padded positions come after every real one, so no real row attends to them.
        """
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.int64:
            raise ValueError(f"input_ids must be an int64 tensor [B, T], got "
                             f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} "
                             f"{tuple(getattr(input_ids, 'shape', ()))}")
        B, T = input_ids.shape
        if T > cfg.max_position_embeddings:
            raise ValueError(f"input_ids has T={T} tokens, more than max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        H, Hk, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        positions = torch.arange(T, device=input_ids.device).repeat(B)  # [B*T]
        x = F.embedding(input_ids, self.embed)  # [B, T, C]
        for layer in self.layers:
            h = reference.rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)  # [B, T, C]
            qkv = F.linear(h, layer.qkv_weight, layer.qkv_bias)  # [B, T, (H + 2Hk) * D]
            q, k, v = qkv.split([H * D, Hk * D, Hk * D], dim=-1)
            q, k = reference.rotary(q.reshape(B * T, H, D), k.reshape(B * T, Hk, D), positions, self.cos_sin)
            q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
            k = k.view(B, T, Hk, D).transpose(1, 2)  # [B, Hk, T, D]
            v = v.reshape(B, T, Hk, D).transpose(1, 2)  # [B, Hk, T, D]
            attn = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                                  scale=1.0 / math.sqrt(D), enable_gqa=H != Hk)  # [B, H, T, D]
            attn = attn.to(x.dtype).transpose(1, 2).reshape(B, T, H * D)  # [B, T, H*D]
            x = x + F.linear(attn, layer.o_weight, layer.o_bias)  # [B, T, C]
            h = reference.rms_norm(x, layer.mlp_norm, cfg.rms_norm_eps)  # [B, T, C]
            gate, up = F.linear(h, layer.gate_up_weight).chunk(2, dim=-1)  # [B, T, I] each
            x = x + F.linear(F.silu(gate) * up, layer.down_weight)  # [B, T, C]
        return reference.rms_norm(x, self.norm, cfg.rms_norm_eps)  # [B, T, C]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[B, C]`` (only the rows that need a next-token distribution) -> ``[B, V]`` fp32."""
        self._check_hidden(hidden)
        weight = self.embed if self.lm_head is None else self.lm_head
        return linear_rows(hidden, weight).float()  # [B, V]; fp32: each row's bits alone (ops/linear.py)

    @torch.inference_mode()
    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[B, C]`` -> value-head scores ``[B]`` fp32 in (0, 1)."""
        if self.value_head is None:
            raise ValueError("this model has no value head: call attach_value_head() or load a "
                             "checkpoint that has value_head.* weights")
        self._check_hidden(hidden)
        return self.value_head(hidden)

    # ------------------------------------------------------------- validation
    def _check_hidden(self, hidden: torch.Tensor) -> None:
        C = self.config.hidden_size
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or hidden.shape[1] != C:
            shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"hidden must have shape [B, {C}], got {shape}")
        if hidden.dtype != self.dtype or hidden.device != self.device:
            raise ValueError(f"hidden must be {self.dtype} on {self.device}, got {hidden.dtype} on {hidden.device}")
