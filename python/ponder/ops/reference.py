"""Pure-PyTorch reference implementations of ponder's device ops.

These are the CPU path of the engine, the oracle every kernel is tested against, and the
baseline every benchmark measures. They are vectorised (no Python loop per token or head) but
otherwise favour clarity over speed. They do not validate their inputs: the public wrappers in
``ponder.ops`` do.
"""

from __future__ import annotations

import functools
from typing import Tuple

import torch

# Attention scores are built in chunks of query rows so that one chunk's fp32 score tensor
# stays under this many elements (2**25 floats = 128 MiB) even for long prefills.
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


def _gather_kv(kv_cache: torch.Tensor, layer: int, block_tables: torch.Tensor, max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """K and V of every sequence through its block table, padded: two ``[B, max_len, Hk, D]``."""
    _, _, P, S, Hk, D = kv_cache.shape
    B = block_tables.shape[0]
    num_pages = (max_len + S - 1) // S
    # Entries past a sequence's last page are padding and may hold anything (often -1):
    # clamp them to a real page so the gather is safe; those positions are masked later.
    pages = block_tables[:, :num_pages].long().clamp(0, P - 1)  # [B, num_pages]
    k = kv_cache[layer, 0][pages].view(B, num_pages * S, Hk, D)[:, :max_len]
    v = kv_cache[layer, 1][pages].view(B, num_pages * S, Hk, D)[:, :max_len]
    return k, v


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

    Gathers every sequence's KV into a padded ``[B, max_len, Hk, D]`` tensor and runs one masked
    softmax attention in fp32, grouped so a KV head serves its G query heads without being
    repeated. Query rows are padded per sequence to ``[B, max_q, H, D]`` (decode: max_q = 1).
    """
    T, H, D = q.shape
    Hk = kv_cache.shape[4]
    G = H // Hk
    B = seq_lens.shape[0]
    if T == 0 or B == 0:
        return q.new_zeros(q.shape)
    lens = seq_lens.long()
    indptr = query_indptr.long()
    num_q = indptr[1:] - indptr[:-1]  # [B]
    max_len = int(lens.max())
    max_q = int(num_q.max())

    k, v = _gather_kv(kv_cache, layer, block_tables, max_len)
    key_pos = torch.arange(max_len, device=q.device)
    key_valid = key_pos[None, :] < lens[:, None]  # [B, max_len], True = real token
    kf = k.float()
    # Slots past a sequence's length may hold uninitialised memory (NaN/inf); zero them so a
    # zero attention weight cannot turn into 0 * NaN.
    vf = v.float().masked_fill(~key_valid[:, :, None, None], 0.0)

    decode = max_q == 1 and T == B
    if decode:
        q_pad = q.view(B, 1, H, D)
    else:
        row_seq = torch.repeat_interleave(torch.arange(B, device=q.device), num_q, output_size=T)  # [T]
        row_j = torch.arange(T, device=q.device) - indptr[row_seq]  # [T]
        q_pad = q.new_zeros(B, max_q, H, D)
        q_pad[row_seq, row_j] = q
    # Row j of sequence b sits at position len_b - n_b + j; padding rows are clamped onto the
    # last real position so their (discarded) softmax never sees an all-masked row.
    q_pos = lens[:, None] - num_q[:, None] + torch.arange(max_q, device=q.device)[None, :]
    q_pos = torch.minimum(q_pos, (lens[:, None] - 1).clamp_min(0))  # [B, max_q]

    out_pad = torch.empty(B, max_q, Hk, G, D, dtype=torch.float32, device=q.device)
    rows_per_chunk = max(1, _MAX_SCORE_ELEMENTS // max(1, B * H * max_len))
    for q0 in range(0, max_q, rows_per_chunk):
        q1 = min(max_q, q0 + rows_per_chunk)
        qc = q_pad[:, q0:q1].float().view(B, q1 - q0, Hk, G, D)
        scores = torch.einsum("bqhgd,blhd->bhgql", qc, kf) * scale  # [B, Hk, G, Qc, max_len]
        allowed = key_pos[None, None, :] <= q_pos[:, q0:q1, None]  # [B, Qc, max_len]
        scores.masked_fill_(~allowed[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out_pad[:, q0:q1] = torch.einsum("bhgql,blhd->bqhgd", probs, vf)
    out_pad = out_pad.view(B, max_q, H, D)
    if decode:
        return out_pad.view(T, H, D).to(q.dtype)
    return out_pad[row_seq, row_j].to(q.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x**2) + eps))``, normalised in fp32 and cast back to x's dtype
    before the weight multiply, exactly as transformers' LlamaRMSNorm. Result in x's dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * normed.to(x.dtype)).to(x.dtype)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``(a * c) mod 2**32`` for uint32 values a in int64 and a uint32 constant c, overflow-free."""
    lo = a * (c & 0xFFFF)  # < 2**48
    hi = ((a * (c >> 16)) & 0xFFFF) << 16  # only the low 16 bits of the high product survive mod 2**32
    return (lo + hi) & _M32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection on uint32 with full avalanche)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def sampling_row_hash(keys: torch.Tensor) -> torch.Tensor:
    """uint32 hash (in int64) of each key row ``(seed, node_id, child_index, position)``: ``[B]``.

    ``h = 0x9E3779B9``; for each of the 8 words (low then high 32 bits of seed, node_id,
    child_index, position, in that order; negative values taken in two's complement):
    ``h = fmix32(h ^ word)``.
    """
    h = torch.full(keys.shape[:1], _ROW_INIT, dtype=torch.int64, device=keys.device)
    for i in range(4):
        col = keys[:, i]
        h = fmix32(h ^ (col & _M32))
        h = fmix32(h ^ ((col >> 32) & _M32))
    return h


@functools.lru_cache(maxsize=8)
def _vocab_hash(vocab_size: int, device: str) -> torch.Tensor:
    v = torch.arange(vocab_size, dtype=torch.int64, device=device)
    return fmix32((v + _VOCAB_SALT) & _M32)


def sampling_uniforms(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The uniform in (0, 1) that row key b assigns vocab index v: ``[B, V]`` fp32.

    ``bits = fmix32(row_hash(key) ^ fmix32((v + 0x632BE5AB) mod 2**32))`` and
    ``u = ((bits >> 8) | 1) * 2**-24``: an odd multiple of 2**-24, exact in fp32, never 0 or 1.
    """
    vh = _vocab_hash(vocab_size, str(keys.device))
    bits = fmix32(sampling_row_hash(keys)[:, None] ^ vh[None, :])
    return ((bits >> 8) | 1).to(torch.float32) * (2.0**-24)


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
        probs = torch.softmax(scaled.masked_fill(~allowed, float("-inf")), dim=-1)
        sorted_p = probs.sort(dim=-1, descending=True).values
        mass_before = sorted_p.cumsum(-1) - sorted_p
        # keep the highest-probability tokens until the mass before them reaches top_p
        num_keep = (mass_before < top_p[:, None]).sum(-1).clamp_min(1)  # [B]
        p_thresh = sorted_p.gather(1, (num_keep - 1)[:, None])
        allowed &= (probs >= p_thresh) | ~use_p[:, None]
    return allowed


def sample(
    logits: torch.Tensor, keys: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token per row by Gumbel-max; see ``ponder.ops.sample`` for the exact definition."""
    B, V = logits.shape
    lf = logits.float()
    logprobs_all = torch.log_softmax(lf, dim=-1)
    greedy_tok = lf.argmax(dim=-1)
    greedy = (temperature <= 0) | (top_k == 1)
    if B == 0 or bool(greedy.all()):
        tokens = greedy_tok
    else:
        t = torch.where(greedy, torch.ones_like(temperature), temperature)
        scaled = lf / t[:, None]
        allowed = _allowed_mask(lf, scaled, top_k, top_p)
        gumbel = -torch.log(-torch.log(sampling_uniforms(keys, V)))
        perturbed = (scaled + gumbel).masked_fill_(~allowed, float("-inf"))
        tokens = torch.where(greedy, greedy_tok, perturbed.argmax(dim=-1))
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
