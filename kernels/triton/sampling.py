"""Token sampling kernel: greedy / temperature / top-k / top-p with the counter-based Gumbel draw
of ``ponder.ops.reference.sample``, without sorting the vocabulary.

One program per row streams the logits a few times:

1. max, first argmax, log-sum-exp (for the raw log-probability) and min;
2. top-k: the k-th largest logit is the largest key ``kappa`` with ``#{v : key(z_v) >= kappa} >= k``,
   where ``key`` maps a float's bits to an int32 with the same order; a 16-way search over the
   key range narrows it by 4 bits per pass (at most 8 passes);
3. top-p: with ``p`` the softmax of ``z / temperature`` over the top-k set, the nucleus is
   ``{v : p_v >= x}`` for the largest probability ``x`` whose mass at or above it reaches top_p
   (the value the reference finds by sorting and a cumulative sum); the same 16-way search over
   the bits of p finds it;
4. the draw: argmax over the allowed tokens of ``z / temperature - log(-log(u))`` with ``u`` from
   the same 32-bit hash as the reference (MurmurHash3's fmix32 in uint32 arithmetic).

Ties go to the lowest token id, as in ``torch.argmax``.
"""

import triton
import triton.language as tl



@triton.jit
def _fmix32(h):
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _row_hash(keys_ptr, row):
    """uint32 hash of the row key (seed, node, child, position): fmix32 over its 8 32-bit words."""
    h = tl.full([], 0x9E3779B9, tl.uint32)
    for i in tl.static_range(4):
        word = tl.load(keys_ptr + row * 4 + i)  # int64
        h = _fmix32(h ^ (word & 0xFFFFFFFF).to(tl.uint32))
        h = _fmix32(h ^ ((word >> 32) & 0xFFFFFFFF).to(tl.uint32))
    return h


@triton.jit
def _order_key(x):
    """int32 with the order of the float32 x (negative floats have their magnitude bits flipped)."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _load_row(logits_ptr, row_off, offs, V):
    return tl.load(logits_ptr + row_off + offs, mask=offs < V, other=float("-inf")).to(tl.float32)


@triton.jit
def _probs(z, allowed, temperature, s_max, total):
    """Softmax of z / temperature over the allowed tokens (0 elsewhere), as the reference computes it."""
    return tl.where(allowed, tl.exp(tl.math.div_rn(z, temperature) - s_max) / total, 0.0)


@triton.jit
def _largest_key(
    logits_ptr, row_off, V, lo, hi, target, thresh, temperature, s_max, total,
    MASS: tl.constexpr, BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr,
):  # fmt: skip
    """Largest kappa in [lo, hi] with W(kappa) >= target, or lo if none, where W is non-increasing:
    MASS False: W(kappa) = #{v : order_key(z_v) >= kappa} (top-k);
    MASS True:  W(kappa) = sum of p_v over v with bits(p_v) >= kappa (top-p).
    Each pass counts W at NUM_PIVOTS keys spread over the interval and keeps the sub-interval
    where W crosses the target."""
    lo = tl.zeros([], tl.int64) + lo  # accepts ints and int32 scalars alike
    hi = tl.zeros([], tl.int64) + hi
    pivot = tl.arange(0, NUM_PIVOTS).to(tl.int64) + 1
    while lo < hi:
        step = tl.maximum((hi - lo + NUM_PIVOTS - 1) // NUM_PIVOTS, 1)
        cand = tl.minimum(lo + pivot * step, hi)  # ascending, all > lo
        w = tl.zeros([NUM_PIVOTS], tl.float32)
        # Helpers are inlined in this hot loop: the interpreter pays per helper call.
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(logits_ptr + row_off + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            if MASS:
                e = tl.exp(tl.math.div_rn(z, temperature) - s_max) / total
                p = tl.where((offs < V) & (z >= thresh), e, 0.0)
                key = p.to(tl.int32, bitcast=True).to(tl.int64)
                weight = p
            else:
                bits = z.to(tl.int32, bitcast=True)
                key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)
                weight = tl.where(offs < V, 1.0, 0.0)
            hit = key[None, :] >= cand[:, None]  # [NUM_PIVOTS, BLOCK_V]
            w += tl.sum(tl.where(hit, weight[None, :], 0.0), axis=1)
        ok = w >= target
        lo = tl.max(tl.where(ok, cand, lo), axis=0)
        hi = tl.min(tl.where(ok, hi, cand - 1), axis=0)
    return lo


@triton.jit
def _sample_kernel(
    logits_ptr, keys_ptr, temperature_ptr, top_k_ptr, top_p_ptr, tokens_ptr, logprobs_ptr,
    V, stride_row,
    BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr,
):  # fmt: skip
    """Grid (B,): one row per program; writes tokens[row] (int64) and logprobs[row] (fp32)."""
    row = tl.program_id(0)
    row_off = row.to(tl.int64) * stride_row
    # Pass 1: max, first argmax, min and the log-sum-exp of the raw logits.
    z_max = tl.full([], float("-inf"), tl.float32)
    arg = tl.zeros([], tl.int32)
    z_min = tl.full([], float("inf"), tl.float32)
    run_max = tl.full([], float("-inf"), tl.float32)
    run_sum = tl.zeros([], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        z = _load_row(logits_ptr, row_off, offs, V)
        b_max = tl.max(z, axis=0)
        b_arg = tl.argmax(z, axis=0, tie_break_left=True) + v0
        arg = tl.where(b_max > z_max, b_arg, arg)
        z_max = tl.maximum(z_max, b_max)
        z_min = tl.minimum(z_min, tl.min(tl.where(offs < V, z, float("inf")), axis=0))
        new_max = tl.maximum(run_max, b_max)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)

    temperature = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    token = arg
    if (temperature > 0) & (top_k != 1):
        # Top-k threshold on the raw logits (every logit passes when top-k is off).
        thresh = z_min
        if (top_k > 0) & (top_k < V):
            kappa = _largest_key(
                logits_ptr, row_off, V, _order_key(z_min), _order_key(z_max), top_k.to(tl.float32), thresh,
                temperature, 0.0, 1.0, False, BLOCK_V, NUM_PIVOTS,
            )  # fmt: skip
            kappa = kappa.to(tl.int32)
            thresh = (kappa ^ ((kappa >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        s_max = tl.math.div_rn(z_max, temperature)
        total = tl.full([], 1.0, tl.float32)
        p_key = tl.zeros([], tl.int32)
        use_p = top_p < 1.0
        if use_p:
            total = tl.zeros([], tl.float32)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                z = _load_row(logits_ptr, row_off, offs, V)
                e = tl.exp(tl.math.div_rn(z, temperature) - s_max)
                total += tl.sum(tl.where((offs < V) & (z >= thresh), e, 0.0), axis=0)
            p_key = _largest_key(
                logits_ptr, row_off, V, 0, 0x3F800000, top_p, thresh, temperature, s_max, total,
                True, BLOCK_V, NUM_PIVOTS,
            ).to(tl.int32)  # fmt: skip
        # The Gumbel-max draw over the allowed tokens.
        h_row = _row_hash(keys_ptr, row)
        best = tl.full([], float("-inf"), tl.float32)
        token = tl.zeros([], tl.int32)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            z = _load_row(logits_ptr, row_off, offs, V)
            allowed = (offs < V) & (z >= thresh)
            if use_p:
                p = _probs(z, allowed, temperature, s_max, total)
                allowed = allowed & (p.to(tl.int32, bitcast=True) >= p_key)
            h_vocab = _fmix32(offs.to(tl.uint32) + 0x632BE5AB)
            bits = _fmix32(h_row ^ h_vocab)
            u = ((bits >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08  # 2**-24, exact
            val = tl.math.div_rn(z, temperature) - tl.log(-tl.log(u))
            val = tl.where(allowed, val, float("-inf"))
            b_best = tl.max(val, axis=0)
            b_arg = tl.argmax(val, axis=0, tie_break_left=True) + v0
            token = tl.where(b_best > best, b_arg, token)
            best = tl.maximum(best, b_best)
    z_tok = tl.load(logits_ptr + row_off + token).to(tl.float32)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(logprobs_ptr + row, z_tok - lse)
