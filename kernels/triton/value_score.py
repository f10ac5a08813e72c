"""Fused step scoring: gather the step-end hidden states, RMSNorm, dot with a head direction,
sigmoid, and aggregate into the path score with the parent's score (``ponder.ops.value_score``)."""

import triton
import triton.language as tl

# MODE constexpr: 0 last, 1 min, 2 prod, 3 mean (the order of ponder.ops.value_score.MODES).


@triton.jit
def _value_score_kernel(
    hidden_ptr, rows_ptr, norm_weight_ptr, direction_ptr, parent_score_ptr, depth_ptr,
    score_ptr, path_score_ptr,
    C, stride_hidden, eps, bias,
    HAS_NORM: tl.constexpr, MODE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grid (M,): one scored node per program."""
    m = tl.program_id(0)
    row = tl.load(rows_ptr + m)
    base = hidden_ptr + row * stride_hidden  # rows are int64
    rstd = 1.0
    if HAS_NORM:
        sq = tl.zeros([BLOCK_C], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs = c0 + tl.arange(0, BLOCK_C)
            x = tl.load(base + offs, mask=offs < C, other=0.0).to(tl.float32)
            sq += x * x
        rstd = 1.0 / tl.sqrt_rn(tl.sum(sq, axis=0) / C + eps)
    acc = tl.zeros([BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        mask = offs < C
        x_raw = tl.load(base + offs, mask=mask, other=0.0)
        x = x_raw.to(tl.float32)
        if HAS_NORM:
            # LlamaRMSNorm rounding: normalise in fp32, cast to the hidden dtype, then scale.
            normed = (x * rstd).to(x_raw.dtype).to(tl.float32)
            w = tl.load(norm_weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x = (w * normed).to(x_raw.dtype).to(tl.float32)
        d = tl.load(direction_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += x * d
    logit = tl.sum(acc, axis=0) + bias
    score = 1.0 / (1.0 + tl.exp(-logit))
    parent = tl.load(parent_score_ptr + m)
    depth = tl.load(depth_ptr + m)
    if MODE == 0:
        path = score
    elif MODE == 1:
        path = tl.minimum(parent, score)
    elif MODE == 2:
        path = parent * score
    else:
        path = tl.math.div_rn(parent * (depth - 1).to(tl.float32) + score, depth.to(tl.float32))
    path = tl.where(depth <= 1, score, path)
    tl.store(score_ptr + m, score)
    tl.store(path_score_ptr + m, path)
