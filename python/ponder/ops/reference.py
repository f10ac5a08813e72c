"""Pure-PyTorch reference implementations of ponder's device ops.

These are the CPU path of the engine, the oracle every kernel is tested against, and the
baseline every benchmark measures. They are vectorised (no Python loop per token or head) but
otherwise favour clarity over speed. They do not validate their inputs: the public wrappers in
``ponder.ops`` do.
"""

from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
# Attention runs in chunks of query rows so that one chunk's fp32 score tensor (materialised
# by SDPA's fallback paths) stays under 2**25 floats = 128 MiB even for long prefills.
_MAX_SCORE_ELEMENTS = 1 << 25


def copy_pages(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
    """Copy page ``src_pages[i]`` onto page ``dst_pages[i]`` in every layer, for K and V.

    kv_cache: ``[L, 2, P, S, Hk, D]`` any dtype, modified in place.
    src_pages, dst_pages: ``[num_pairs]`` int32. Destinations must be distinct and must not be
    sources (copy-on-write targets are fresh pages), so the order of the copies does not matter.
    """
    if src_pages.numel() == 0:
        return
    src = src_pages.to(device=kv_cache.device, dtype=torch.long)
    dst = dst_pages.to(device=kv_cache.device, dtype=torch.long)
    kv_cache[:, :, dst] = kv_cache[:, :, src]


def append_kv(kv_cache: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write ``k[t]`` / ``v[t]`` into slot ``slot_mapping[t]`` of ``layer``; slot -1 skips row t.

    kv_cache: ``[L, 2, P, S, Hk, D]`` contiguous, modified in place. k, v: ``[T, Hk, D]`` in the
    cache's dtype. slot_mapping: ``[T]`` int64, slot = page_id * S + offset, distinct when >= 0.
    """
    _, _, P, S, Hk, D = kv_cache.shape
    k_flat = kv_cache[layer, 0].view(P * S, Hk, D)
    v_flat = kv_cache[layer, 1].view(P * S, Hk, D)
    slots = slot_mapping
    if bool((slots < 0).any()):
        keep = slots >= 0
        slots, k, v = slots[keep], k[keep], v[keep]
    k_flat.index_copy_(0, slots, k)
    v_flat.index_copy_(0, slots, v)


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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x**2) + eps))``, normalised in fp32 and cast back to x's dtype
    before the weight multiply, exactly as transformers' LlamaRMSNorm. Result in x's dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * normed.to(x.dtype)).to(x.dtype)


def rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``[T, H, D]`` and k ``[T, Hk, D]`` by the angles of ``positions`` (rotate_half
    convention). cos/sin are cast to the input's dtype first, as transformers does, so the
    result equals ``apply_rotary_pos_emb`` bit for bit."""
    half = q.shape[-1] // 2
    cs = cos_sin[positions]  # [T, D]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        c = cs[:, None, :half].to(x.dtype)  # [T, 1, D/2]
        s = cs[:, None, half:].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    return rotate(q), rotate(k)


# ---- counter-based random numbers for sampling ------------------------------------------------
# All arithmetic is on uint32 values held in int64 tensors; every product is split so it stays
# below 2**63, hence the same bits come out of torch, Triton (uint32) and CUDA (uint32_t).
_M32 = 0xFFFFFFFF
_ROW_INIT = 0x9E3779B9
_VOCAB_SALT = 0x632BE5AB
_FMIX_C1 = 0x85EBCA6B
_FMIX_C2 = 0xC2B2AE35


def _mul32_(h: torch.Tensor, c: int, tmp: torch.Tensor) -> None:
    """``h = (h * c) mod 2**32`` in place, for uint32 values in int64: the product is split at
    16 bits of c so no intermediate reaches 2**49."""
    torch.mul(h, c & 0xFFFF, out=tmp)
    h.mul_(c >> 16).bitwise_and_(0xFFFF).bitwise_left_shift_(16).add_(tmp).bitwise_and_(_M32)


def _xorshift_(h: torch.Tensor, s: int, tmp: torch.Tensor) -> None:
    torch.bitwise_right_shift(h, s, out=tmp)
    h.bitwise_xor_(tmp)


def fmix32_(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser, in place on uint32 values held in an int64 tensor:
    ``h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16`` (mod 2**32).
    A bijection on uint32 with full avalanche. Works in place because the hash runs over
    ``[B, V]`` every decode step and allocations dominate its cost on the CPU."""
    tmp = torch.empty_like(h)
    _xorshift_(h, 16, tmp)
    _mul32_(h, _FMIX_C1, tmp)
    _xorshift_(h, 13, tmp)
    _mul32_(h, _FMIX_C2, tmp)
    _xorshift_(h, 16, tmp)
    return h


def _fmix32_np(h: np.ndarray) -> np.ndarray:
    # uint64 holds every 32 x 32-bit product exactly; numpy's unsigned arithmetic is defined.
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(_FMIX_C1)) & np.uint64(_M32)
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(_FMIX_C2)) & np.uint64(_M32)
    return h ^ (h >> np.uint64(16))


def sampling_row_hash(keys: torch.Tensor) -> torch.Tensor:
    """uint32 hash (in int64) of each key row ``(seed, node_id, child_index, position)``: ``[B]``.

    ``h = 0x9E3779B9``; for each of the 8 words (low then high 32 bits of seed, node_id,
    child_index, position, in that order; negative values taken in two's complement):
    ``h = fmix32(h ^ word)``.
    """
    if keys.device.type == "cpu":
        # 80 dependent operations on B values: numpy runs them ~10x faster than torch here
        words = keys.detach().contiguous().numpy().view(np.uint64)
        h = np.full(words.shape[0], _ROW_INIT, dtype=np.uint64)
        for i in range(4):
            h = _fmix32_np(h ^ (words[:, i] & np.uint64(_M32)))
            h = _fmix32_np(h ^ (words[:, i] >> np.uint64(32)))
        return torch.from_numpy(h.astype(np.int64))
    return _row_hash_torch(keys)


def _row_hash_torch(keys: torch.Tensor) -> torch.Tensor:
    h = torch.full(keys.shape[:1], _ROW_INIT, dtype=torch.int64, device=keys.device)
    for i in range(4):
        col = keys[:, i]
        h = fmix32_(h ^ (col & _M32))
        h = fmix32_(h ^ ((col >> 32) & _M32))
    return h


@functools.lru_cache(maxsize=8)
def _vocab_hash(vocab_size: int, device: str) -> torch.Tensor:
    """``fmix32((v + 0x632BE5AB) mod 2**32)`` for every vocab index v: ``[V]`` int64, cached."""
    v = torch.arange(vocab_size, dtype=torch.int64, device=device)
    return fmix32_(v.add_(_VOCAB_SALT).bitwise_and_(_M32))


def _uniforms_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """uint32 bits -> ``((bits >> 8) | 1) * 2**-24``: fp32, exact, in (0, 1). Destroys bits."""
    return bits.bitwise_right_shift_(8).bitwise_or_(1).to(torch.float32).mul_(2.0**-24)


def sampling_uniforms(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The uniform in (0, 1) that row key b assigns vocab index v: ``[B, V]`` fp32.

    ``bits = fmix32(row_hash(key) ^ fmix32((v + 0x632BE5AB) mod 2**32))`` and
    ``u = ((bits >> 8) | 1) * 2**-24``: an odd multiple of 2**-24, exact in fp32, never 0 or 1.
    """
    vh = _vocab_hash(vocab_size, str(keys.device))
    return _uniforms_from_bits(fmix32_(sampling_row_hash(keys)[:, None] ^ vh[None, :]))


# Gumbel noise -log(-log u) for u in [2**-24, 1 - 2**-24] lies in [-2.81, 16.64]: a token whose
# scaled logit is more than the spread (19.45) below the row's best allowed one can never win the
# Gumbel-max. 1.0 of margin covers fp32 rounding of the sums; skipping those tokens' hashes gives
# bit-identical tokens and makes peaked (typical language-model) rows cheap.
_GUMBEL_SPREAD = 19.45 + 1.0
# Below this fraction of surviving (row, token) pairs, the noise is hashed only for them.
_SPARSE_FRACTION = 0.25
# Nucleus thresholds are first searched among this many top tokens; rows whose nucleus is wider
# fall back to a full sort (rare for language-model rows, common for flat random ones).
_TOP_P_PROBE = 256


def _nucleus_threshold(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``[R]`` smallest kept probability of each row's nucleus (``probs [R, V]``, ``top_p [R]``)."""
    R, V = probs.shape
    thresh = torch.empty(R, dtype=probs.dtype, device=probs.device)
    todo = torch.arange(R, device=probs.device)
    for k in (min(_TOP_P_PROBE, V), V):
        sub = probs.index_select(0, todo)
        sorted_p = sub.topk(k, dim=-1).values if k < V else sub.sort(dim=-1, descending=True).values
        mass = sorted_p.cumsum(-1)
        p = top_p.index_select(0, todo)
        # keep the highest-probability tokens while the mass before them is < top_p
        num_keep = ((mass - sorted_p) < p[:, None]).sum(-1).clamp_min(1)
        # decided when the probed tokens already hold top_p: every later token has mass before it >= top_p
        done = mass[:, -1] >= p if k < V else torch.ones_like(p, dtype=torch.bool)
        thresh[todo[done]] = sorted_p.gather(1, (num_keep - 1)[:, None]).squeeze(1)[done]
        todo = todo[~done]
        if todo.numel() == 0:
            break
    return thresh


def _allowed_mask(logits: torch.Tensor, scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` bool, True = token may be drawn (top-k set, then nucleus within it)."""
    B, V = logits.shape
    allowed = torch.ones(B, V, dtype=torch.bool, device=logits.device)
    k = top_k.long()
    use_k = (k > 0) & (k < V)
    if bool(use_k.any()):
        kmax = int(k[use_k].max())
        kth = logits.topk(kmax, dim=-1).values  # [B, kmax], descending
        thresh = kth.gather(1, (k.clamp(1, kmax) - 1)[:, None])  # [B, 1]
        allowed &= (logits >= thresh) | ~use_k[:, None]
    use_p = top_p < 1.0
    if bool(use_p.any()):
        rows = use_p.nonzero().squeeze(1)
        probs = torch.softmax(scaled.index_select(0, rows).masked_fill_(~allowed[rows], float("-inf")), dim=-1)
        p_thresh = _nucleus_threshold(probs, top_p.index_select(0, rows))
        allowed[rows] &= probs >= p_thresh[:, None]
    return allowed


def _gumbel_argmax(scaled: torch.Tensor, candidate: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``argmax over candidate v of scaled[v] - log(-log u[v])`` per row: ``[B]`` int64."""
    B, V = scaled.shape
    num_cand = int(candidate.sum())
    if num_cand < _SPARSE_FRACTION * B * V:
        rows, cols = candidate.nonzero(as_tuple=True)
        vh = _vocab_hash(V, str(keys.device))
        u = _uniforms_from_bits(fmix32_(sampling_row_hash(keys)[rows] ^ vh[cols]))
        perturbed = torch.full_like(scaled, float("-inf"))
        perturbed[rows, cols] = scaled[rows, cols] - u.log_().neg_().log_()
    else:
        u = sampling_uniforms(keys, V)
        perturbed = (scaled - u.log_().neg_().log_()).masked_fill_(~candidate, float("-inf"))
    return perturbed.argmax(dim=-1)


def sample(
    logits: torch.Tensor, keys: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token per row by Gumbel-max; see ``ponder.ops.sample`` for the exact definition."""
    lf = logits.float()
    logprobs_all = torch.log_softmax(lf, dim=-1)
    greedy_tok = lf.argmax(dim=-1)
    greedy = (temperature <= 0) | (top_k == 1)
    if bool(greedy.all()):
        tokens = greedy_tok
    else:
        t = torch.where(greedy, torch.ones_like(temperature), temperature)
        scaled = lf / t[:, None]
        allowed = _allowed_mask(lf, scaled, top_k, top_p)
        best = scaled.masked_fill(~allowed, float("-inf")).amax(dim=-1, keepdim=True)
        candidate = allowed & (scaled >= best - _GUMBEL_SPREAD) & ~greedy[:, None]
        tokens = torch.where(greedy, greedy_tok, _gumbel_argmax(scaled, candidate, keys))
    return tokens, logprobs_all.gather(1, tokens[:, None]).squeeze(1)


def value_score(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    norm_weight,
    eps: float,
    direction: torch.Tensor,
    bias: float,
    parent_score: torch.Tensor,
    depth: torch.Tensor,
    mode: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step scores and aggregated path scores; see ``ponder.ops.value_score`` for the definition."""
    h = hidden[rows]  # [M, C]
    if norm_weight is not None:
        h = rms_norm(h, norm_weight, eps)
    score = torch.sigmoid(h.float() @ direction.float() + bias)  # [M] fp32
    parent = parent_score.float()
    if mode == "last":
        path = score
    elif mode == "min":
        path = torch.minimum(parent, score)
    elif mode == "prod":
        path = parent * score
    else:  # "mean": parent holds the mean of the depth - 1 earlier steps
        d = depth.float()
        path = (parent * (d - 1) + score) / d
    return score, torch.where(depth <= 1, score, path)
