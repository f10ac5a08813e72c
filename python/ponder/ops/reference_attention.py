"""Pure-PyTorch references of the attention ops (``paged_attention``, ``shared_prefix_attention``),
re-exported by :mod:`ponder.ops.reference`; see there for what the references are for."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
# Attention runs in chunks of query rows so that one chunk's fp32 score tensor (materialised
# by SDPA's fallback paths) stays under 2**25 floats = 128 MiB even for long prefills.
_MAX_SCORE_ELEMENTS = 1 << 25


def _gather_kv(
    kv_cache: torch.Tensor, layer: int, block_tables: torch.Tensor, lens: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """K and V of every sequence through its block table, padded to whole pages and converted to
    fp32: two ``[B, Hk, Lp, D]`` views (Lp = pages of the longest sequence * S), zero past
    each sequence's length."""
    _, _, P, S, Hk, D = kv_cache.shape
    B = block_tables.shape[0]
    num_pages = (int(lens.max()) + S - 1) // S
    Lp = num_pages * S
    # Entries past a sequence's last page are padding and may hold anything (often -1):
    # clamp them to a real page so the gather is safe; those positions are zeroed below.
    pages = block_tables[:, :num_pages].reshape(-1).long().clamp(0, P - 1)  # [B * num_pages]
    # index_select on the page axis is a contiguous gather (several times faster than advanced
    # indexing); .float() is a no-op for fp32 caches and the fp32 upcast for bf16 / fp16 ones.
    k = kv_cache[layer, 0].index_select(0, pages).float().view(B * Lp, Hk * D)
    v = kv_cache[layer, 1].index_select(0, pages).float().view(B * Lp, Hk * D)
    # Slots past a sequence's length may hold uninitialised memory (NaN / inf), and a masked
    # score or a zero softmax weight times NaN is still NaN: zero those slots in the copy.
    invalid = (torch.arange(Lp, device=lens.device)[None, :] >= lens[:, None]).view(-1).nonzero().squeeze(1)
    if invalid.numel():
        k.index_fill_(0, invalid, 0.0)
        v.index_fill_(0, invalid, 0.0)
    return k.view(B, Lp, Hk, D).transpose(1, 2), v.view(B, Lp, Hk, D).transpose(1, 2)


def _grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """q ``[B, H, Q, D]``, k / v ``[B, Hk, L, D]`` fp32, allowed ``[B, 1, Q, L]`` (True = attend)."""
    if _SDPA_HAS_GQA:
        # PyTorch's fused CPU kernel reads each KV head once for its G query heads.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True)
    G = q.shape[1] // k.shape[1]
    if G > 1:  # PyTorch < 2.5 has no grouped SDPA: repeat the KV heads instead
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_indptr: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of ragged query rows over paged KV; see ``ponder.ops.paged_attention``.

    Gathers every sequence's KV into a padded ``[B, Hk, Lp, D]`` fp32 tensor and runs one masked
    softmax attention, grouped so a KV head serves its G query heads. Query rows are padded per
    sequence to ``[B, H, max_q, D]`` (decode: max_q = 1, a plain view).
    """
    T, H, D = q.shape
    B = seq_lens.shape[0]
    if T == 0 or B == 0:
        return q.new_zeros(q.shape)
    lens = seq_lens.long()
    indptr = query_indptr.long()
    num_q = indptr[1:] - indptr[:-1]  # [B]
    max_q = int(num_q.max())
    k, v = _gather_kv(kv_cache, layer, block_tables, lens)  # [B, Hk, Lp, D] each
    Lp = k.shape[2]

    decode = max_q == 1 and T == B
    if decode:
        q_pad = q.unsqueeze(1)  # [B, 1, H, D]
    else:
        row_seq = torch.repeat_interleave(torch.arange(B, device=q.device), num_q, output_size=T)  # [T]
        row_j = torch.arange(T, device=q.device) - indptr[row_seq]  # [T]
        q_pad = q.new_zeros(B, max_q, H, D)
        q_pad[row_seq, row_j] = q
    # Row j of sequence b sits at position len_b - n_b + j; padding rows are clamped onto the
    # last real position so their (discarded) softmax never sees an all-masked row.
    q_pos = lens[:, None] - num_q[:, None] + torch.arange(max_q, device=q.device)[None, :]
    q_pos = torch.minimum(q_pos, (lens[:, None] - 1).clamp_min(0))  # [B, max_q]
    key_pos = torch.arange(Lp, device=q.device)

    out_pad = torch.empty(B, max_q, H, D, dtype=torch.float32, device=q.device)
    rows_per_chunk = max(1, _MAX_SCORE_ELEMENTS // max(1, B * H * Lp))
    for q0 in range(0, max_q, rows_per_chunk):
        q1 = min(max_q, q0 + rows_per_chunk)
        qc = q_pad[:, q0:q1].float().transpose(1, 2)  # [B, H, Qc, D]
        allowed = key_pos[None, None, :] <= q_pos[:, q0:q1, None]  # [B, Qc, Lp]
        out_pad[:, q0:q1] = _grouped_attention(qc, k, v, allowed[:, None], scale).transpose(1, 2)
    if decode:
        return out_pad.view(T, H, D).to(q.dtype)
    return out_pad[row_seq, row_j].to(q.dtype)


def _attend_items(
    q: torch.Tensor, k_plane: torch.Tensor, v_plane: torch.Tensor, pages: torch.Tensor, num_tokens: torch.Tensor,
    rows: torch.Tensor, scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention of n work items of equal shape, each read once for all of its query rows.

    q ``[B, H, D]``; k_plane / v_plane ``[P, S, Hk, D]`` (one layer); pages ``[n, num_pages]``
    and rows ``[n, nq]`` int64; num_tokens ``[n]`` valid tokens of each item (only its last page
    may be partial). Returns partial outputs ``[n * nq, H, D]`` fp32, normalised, and their
    natural-log log-sum-exp ``[n * nq, H]`` fp32, in (item, query) order.
    """
    n, num_pages = pages.shape
    nq = rows.shape[1]
    _, S, Hk, D = k_plane.shape
    H = q.shape[1]
    G = H // Hk
    N = num_pages * S
    # One gather per plane; .float() is a no-op for fp32 caches and the upcast for 16-bit ones.
    k = k_plane.index_select(0, pages.reshape(-1)).float().view(n, N, Hk, D)
    v = v_plane.index_select(0, pages.reshape(-1)).float().view(n, N, Hk, D)
    valid = torch.arange(N, device=q.device)[None, :] < num_tokens[:, None]  # [n, N]
    partial = not bool(valid.all())
    if partial:
        # Slots past an item's tokens may hold uninitialised memory (NaN / inf); a zero softmax
        # weight times NaN is still NaN, so zero them in the gathered copy.
        k.masked_fill_(~valid[:, :, None, None], 0.0)
        v.masked_fill_(~valid[:, :, None, None], 0.0)
    # All nq * G query heads that read KV head h form one row block: [n, Hk, nq * G, D].
    qg = q.index_select(0, rows.reshape(-1)).float().view(n, nq, Hk, G, D)
    qg = qg.permute(0, 2, 1, 3, 4).reshape(n, Hk, nq * G, D)
    scores = torch.matmul(qg, k.permute(0, 2, 3, 1)).mul_(scale)  # [n, Hk, nq * G, N]
    if partial:
        scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    # Every item holds at least one token, so the row maxima are finite. Softmax by hand rather
    # than logsumexp + exp: one exponential pass over the scores instead of two.
    m = scores.amax(dim=-1, keepdim=True)  # [n, Hk, nq * G, 1]
    p = scores.sub_(m).exp_()
    denom = p.sum(dim=-1, keepdim=True)
    out = torch.matmul(p, v.transpose(1, 2)).div_(denom)  # [n, Hk, nq * G, D]
    lse = (m + denom.log()).squeeze(-1)  # [n, Hk, nq * G]
    out = out.view(n, Hk, nq, G, D).permute(0, 2, 1, 3, 4).reshape(n * nq, H, D)
    return out, lse.view(n, Hk, nq, G).permute(0, 2, 1, 3).reshape(n * nq, H)


def _item_groups(page_indptr: np.ndarray, query_indptr: np.ndarray):
    """Items grouped by (pages, queries): yields (num_pages, num_queries, item ids int64)."""
    num_pages = np.diff(page_indptr)
    num_queries = np.diff(query_indptr)
    key = num_pages * (int(num_queries.max(initial=0)) + 1) + num_queries
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    for ids in np.split(order, cuts):
        if ids.size:
            yield int(num_pages[ids[0]]), int(num_queries[ids[0]]), ids


def shared_prefix_attention(q: torch.Tensor, kv_cache: torch.Tensor, layer: int, plan, scale: float) -> torch.Tensor:
    """Decode attention through an attention plan; see ``ponder.ops.shared_prefix_attention``.

    Each work item (a run of pages shared by a set of branches) is read once: one matrix product
    of all its query rows -- nq branches x G query heads per KV head -- against its K, a softmax
    that keeps the log-sum-exp, one product with its V. Items with the same number of pages and
    queries run as one batched product. A query's partial outputs are then merged by weighting
    each with ``exp(lse - max lse)``, for all queries at once. Scores and merges are fp32.
    """
    B, H, D = q.shape
    if B == 0:
        return q.new_zeros(q.shape)
    dev = q.device
    k_plane, v_plane = kv_cache[layer, 0], kv_cache[layer, 1]  # [P, S, Hk, D] views
    page_indptr = plan.item_page_indptr.cpu().numpy().astype(np.int64)
    query_indptr = plan.item_query_indptr.cpu().numpy().astype(np.int64)
    item_pages = plan.item_pages.long()
    item_queries = plan.item_queries.long()
    num_slots = item_queries.shape[0]
    part_out = torch.empty(num_slots, H, D, dtype=torch.float32, device=dev)
    part_lse = torch.empty(num_slots, H, dtype=torch.float32, device=dev)
    S = kv_cache.shape[3]
    for num_pages, nq, ids in _item_groups(page_indptr, query_indptr):
        # Bound the fp32 score tile of one batched product like paged_attention does.
        per_item = H * nq * num_pages * S
        step = max(1, _MAX_SCORE_ELEMENTS // max(1, per_item))
        for c in range(0, ids.size, step):
            sub = ids[c : c + step]
            pages = item_pages[torch.from_numpy(page_indptr[sub][:, None] + np.arange(num_pages)).to(dev)]
            slots = torch.from_numpy(query_indptr[sub][:, None] + np.arange(nq)).to(dev)  # [n, nq]
            tokens = plan.item_num_tokens[torch.from_numpy(sub).to(dev)].long()
            out, lse = _attend_items(q, k_plane, v_plane, pages, tokens, item_queries[slots], scale)
            part_out[slots.reshape(-1)] = out
            part_lse[slots.reshape(-1)] = lse
    # Slot s belongs to query item_queries[s] (the plan's merge lists are these slots, grouped).
    owner = item_queries[:, None].expand(-1, H)  # [num_slots, H]
    m = torch.full((B, H), float("-inf"), device=dev).scatter_reduce_(0, owner, part_lse, "amax")
    w = torch.exp(part_lse - m.index_select(0, item_queries))  # [num_slots, H]
    num = torch.zeros(B, H, D, device=dev).index_add_(0, item_queries, part_out.mul_(w[..., None]))
    # The largest weight of a query is exp(0) = 1, so den >= 1 wherever a query has slots; the
    # clamp only turns a query without any (nothing to attend to) into zeros, as the kernels do.
    den = torch.zeros(B, H, device=dev).index_add_(0, item_queries, w).clamp_min_(1.0)
    return (num / den[..., None]).to(q.dtype)
