"""Validation of a ragged paged batch before :meth:`DecoderLM.forward` touches the KV cache.

Metadata (types, shapes, devices) is always checked. Values need device-to-host copies, so
they are checked on CPU tensors by default and elsewhere on request (``check=True``), the
same policy as ``ponder.ops``. The value checks cover every index the ops will use *and* the
invariants tying them together (a row's position, its slot and its sequence's block table must
agree), because a violated invariant would not crash anything: it would silently attend to
the wrong keys.
"""

from __future__ import annotations

import torch

from ponder.models.config import ModelConfig


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dim()}-D {t.dtype} on {t.device}"
    return type(t).__name__


def check_metadata(cfg: ModelConfig, device: torch.device, input_ids, positions, kv_cache, slot_mapping,
                   block_tables, seq_lens, query_indptr) -> None:
    expect = {
        "input_ids": (input_ids, torch.int64, 1), "positions": (positions, torch.int64, 1),
        "slot_mapping": (slot_mapping, torch.int64, 1), "block_tables": (block_tables, torch.int32, 2),
        "seq_lens": (seq_lens, torch.int32, 1), "query_indptr": (query_indptr, torch.int32, 1),
    }
    for name, (t, dtype, ndim) in expect.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype or t.dim() != ndim:
            raise TypeError(f"{name} must be a {ndim}-D {dtype} tensor, got {_describe(t)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the model is on {device}")
    T = input_ids.shape[0]
    for name, t in (("positions", positions), ("slot_mapping", slot_mapping)):
        if t.shape[0] != T:
            raise ValueError(f"{name} must have T={T} entries like input_ids, got {t.shape[0]}")
    B = block_tables.shape[0]
    if seq_lens.shape[0] != B or query_indptr.shape[0] != B + 1:
        raise ValueError(f"seq_lens must be [B] and query_indptr [B+1] with B={B} (block_tables rows), "
                         f"got {tuple(seq_lens.shape)} and {tuple(query_indptr.shape)}")
    want = (cfg.num_layers, 2, cfg.num_kv_heads, cfg.head_dim)
    if not isinstance(kv_cache, torch.Tensor) or kv_cache.dim() != 6 or \
            (kv_cache.shape[0], kv_cache.shape[1], kv_cache.shape[4], kv_cache.shape[5]) != want:
        shape = tuple(kv_cache.shape) if isinstance(kv_cache, torch.Tensor) else type(kv_cache).__name__
        raise ValueError(f"kv_cache must have shape [{want[0]}, 2, P, S, {want[2]}, {want[3]}], got {shape}")
    if kv_cache.device != device:
        raise ValueError(f"kv_cache is on {kv_cache.device} but the model is on {device}")


def check_values(cfg: ModelConfig, input_ids, positions, kv_cache, slot_mapping, block_tables, seq_lens,
                 query_indptr) -> None:
    T, B = input_ids.shape[0], block_tables.shape[0]
    P, S = kv_cache.shape[2], kv_cache.shape[3]
    lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(f"input_ids must lie in [0, {cfg.vocab_size}), got values in [{lo}, {hi}]")
    indptr = query_indptr.long()
    num_q = indptr[1:] - indptr[:-1]  # [B]
    if int(indptr[0]) != 0 or int(indptr[-1]) != T or bool((num_q < 0).any()):
        raise ValueError(f"query_indptr must be non-decreasing from 0 to T={T}, got {query_indptr.tolist()}")
    lens = seq_lens.long()
    limit = min(block_tables.shape[1] * S, cfg.max_position_embeddings)
    bad = ((lens < num_q) | (lens > limit)).nonzero()
    if bad.numel():
        b = int(bad[0])
        raise ValueError(f"seq_lens[{b}] = {int(lens[b])} must lie in [{int(num_q[b])}, {limit}]: at least its "
                         f"{int(num_q[b])} query rows, at most min(max_pages * S, max_position_embeddings)")
    num_pages = (lens + S - 1) // S  # [B]
    used = torch.arange(block_tables.shape[1], device=lens.device)[None, :] < num_pages[:, None]  # [B, max_pages]
    bad = (used & ((block_tables < 0) | (block_tables >= P))).nonzero()
    if bad.numel():
        b, i = bad[0].tolist()
        raise IndexError(f"block_tables[{b}, {i}] = {int(block_tables[b, i])} must be a page id in [0, {P})")
    row_seq = torch.repeat_interleave(torch.arange(B, device=lens.device), num_q, output_size=T)  # [T]
    row_j = torch.arange(T, device=lens.device) - indptr[row_seq]  # [T]
    want_pos = lens[row_seq] - num_q[row_seq] + row_j  # [T]
    bad = (positions != want_pos).nonzero()
    if bad.numel():
        t = int(bad[0])
        b = int(row_seq[t])
        raise ValueError(f"positions[{t}] = {int(positions[t])}, expected {int(want_pos[t])}: row {t} is query "
                         f"{int(row_j[t])} of sequence {b}, which sits at seq_lens[{b}] - n_{b} + {int(row_j[t])}")
    pages = block_tables[row_seq, want_pos // S].long()  # [T]
    want_slot = pages * S + want_pos % S  # [T]
    bad = ((slot_mapping != want_slot) & (slot_mapping != -1)).nonzero()
    if bad.numel():
        t = int(bad[0])
        raise ValueError(f"slot_mapping[{t}] = {int(slot_mapping[t])}, expected -1 or {int(want_slot[t])} "
                         f"(block_tables page of position {int(want_pos[t])} * {S} + offset)")
    written = slot_mapping[slot_mapping >= 0]
    unique, counts = written.unique(return_counts=True)
    if bool((counts > 1).any()):
        slot = int(unique[counts > 1][0])
        raise ValueError(f"slot_mapping writes slot {slot} more than once: sequences share the page "
                         f"{slot // S} they append to (copy it on write first)")


def check_row_groups(row_groups, input_ids, positions, block_tables, query_indptr, check_values: bool):
    """``(firsts, groups)`` of ``DecoderLM.forward(row_groups=...)``, checked: metadata always,
    values (index ranges, ``groups[firsts] == arange(U)``, one row per sequence, equal tokens and
    positions within a group) when ``check_values``."""
    if not isinstance(row_groups, (tuple, list)) or len(row_groups) != 2:
        raise TypeError(f"row_groups must be a pair (firsts, groups) of int64 tensors, got "
                        f"{type(row_groups).__name__}")
    firsts, groups = row_groups
    T = input_ids.shape[0]
    for name, t in (("row_groups[0] (firsts)", firsts), ("row_groups[1] (groups)", groups)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D torch.int64 tensor, got {_describe(t)}")
        if t.device != input_ids.device:
            raise ValueError(f"{name} is on {t.device} but input_ids is on {input_ids.device}")
    if groups.shape[0] != T:
        raise ValueError(f"row_groups[1] (groups) must have T={T} entries, one per row, got {groups.shape[0]}")
    U = firsts.shape[0]
    if not 1 <= U <= T:
        raise ValueError(f"row_groups[0] (firsts) must hold 1 to T={T} rows, got {U}")
    if block_tables.shape[0] != T:
        raise ValueError(f"row_groups serves decode batches (one new token per sequence); got {T} tokens for "
                         f"{block_tables.shape[0]} sequences")
    if not check_values:
        return firsts, groups
    if bool((query_indptr.long() != torch.arange(T + 1, device=query_indptr.device)).any()):
        raise ValueError(f"row_groups serves decode batches: query_indptr must be 0, 1, ..., {T}, "
                         f"got {query_indptr.tolist()}")
    lo, hi = torch.stack(torch.aminmax(firsts)).tolist()
    if lo < 0 or hi >= T:
        raise ValueError(f"row_groups[0] (firsts) must hold row indices in [0, {T}), got values in [{lo}, {hi}]")
    lo, hi = torch.stack(torch.aminmax(groups)).tolist()
    if lo < 0 or hi >= U:
        raise ValueError(f"row_groups[1] (groups) must hold group ids in [0, {U}), got values in [{lo}, {hi}]")
    bad = (groups[firsts] != torch.arange(U, device=groups.device)).nonzero()
    if bad.numel():
        g = int(bad[0])
        raise ValueError(f"row_groups[0][{g}] = {int(firsts[g])} is not a row of group {g}: "
                         f"groups[{int(firsts[g])}] = {int(groups[firsts[g]])}")
    for name, t in (("input_ids", input_ids), ("positions", positions)):
        bad = (t != t[firsts][groups]).nonzero()
        if bad.numel():
            r = int(bad[0])
            g = int(groups[r])
            raise ValueError(f"row_groups puts row {r} in group {g}, but {name}[{r}] = {int(t[r])} differs from "
                             f"{name}[{int(firsts[g])}] = {int(t[firsts[g]])} of the group's first row")
    return firsts, groups
