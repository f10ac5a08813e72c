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

from ponder.ops.reference_attention import paged_attention, shared_prefix_attention  # noqa: F401  (re-exported)


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` of float32 tensors rounded once to float32, as a fused multiply-add does.
    The product is exact in float64; the sum is rounded to float64 "to odd" (TwoSum gives its
    error; an inexact result with an even last bit moves one ulp toward the error), which makes
    the final rounding to float32 the correct one (53 >= 24 + 2 bits). Finite inputs only."""
    p = a.double() * b.double()
    c = c.double()
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    fix = (err != 0) & ((s.view(torch.int64) & 1) == 0)
    toward = torch.where(err > 0, torch.full_like(s, float("inf")), torch.full_like(s, float("-inf")))
    return torch.where(fix, torch.nextafter(s, toward), s).float()


def linear_blocked(x: torch.Tensor, weight: torch.Tensor, bias, block: int, bias_first: bool) -> torch.Tensor:
    """``x [M, K] · weight [N, K]ᵀ (+ bias [N])`` summed like ``ponder._core.linear_blocked_cpu``:
    per output, a fused multiply-add chain over ascending k from 0, in blocks of ``block`` k's
    whose sums are added in order; the bias before the first block (bias_first) or after the
    last. float32 in and out; one vectorised step per k."""
    M, K = x.shape
    N = weight.shape[0]
    total = None
    for b0 in range(0, max(K, 1), block):
        part = torch.zeros(M, N, dtype=torch.float32)
        for k in range(b0, min(K, b0 + block)):
            part = fma32(x[:, k:k + 1].expand(M, N), weight[:, k].expand(M, N), part)
        if total is None:
            total = bias + part if (bias is not None and bias_first) else part
        else:
            total = total + part
    if bias is not None and not bias_first:
        total = total + bias
    return total


def linear_lanes(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``x [M, K] · weight [N, K]ᵀ (+ bias [N])`` summed like ``ponder._core.linear_cpu``'s
    fused multiply-add paths (AVX2, AVX-512): per output, 16 lanes, lane l a fused multiply-add
    chain over k = l mod 16 ascending from 0; then lanes l and l + 8 added, then l and l + 4, then
    (0 + 2) + (1 + 3); the bias last. float32 in and out; one vectorised step per 16 k's."""
    M, K = x.shape
    N = weight.shape[0]
    pad = (-K) % 16
    xs = torch.nn.functional.pad(x.float(), (0, pad)).view(M, 1, -1, 16)
    ws = torch.nn.functional.pad(weight.float(), (0, pad)).view(1, N, -1, 16)
    acc = torch.zeros(M, N, 16, dtype=torch.float32)
    for c in range(xs.shape[2]):  # a zero-padded product adds +0, which leaves a sum unchanged
        acc = fma32(xs[:, :, c].expand(M, N, 16), ws[:, :, c].expand(M, N, 16), acc)
    h = acc[..., :8] + acc[..., 8:]
    q = h[..., :4] + h[..., 4:]
    out = (q[..., 0] + q[..., 2]) + (q[..., 1] + q[..., 3])
    return out if bias is None else out + bias


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
    # index_select / index_copy_ on the page axis move whole pages; advanced-index assignment
    # (kv_cache[:, :, dst] = ...) took 15 ms for 40 pages of an 8,192-page CPU cache, this 0.3 ms.
    kv_cache.index_copy_(2, dst, kv_cache.index_select(2, src))


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


def allowed_mask(logits: torch.Tensor, scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
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
        allowed = allowed_mask(lf, scaled, top_k, top_p)
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
    # A per-row product and sum, not a matrix-vector product: BLAS gemv may split the sum
    # differently for different M, and a step's score must not depend on the rows scored with it.
    score = torch.sigmoid((h.float() * direction.float()).sum(dim=-1) + bias)  # [M] fp32
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
