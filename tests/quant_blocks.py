"""Random GGUF blocks for the quantised linear tests: every nibble / byte value occurs, with fp16
scales (and Q4_1 minimums) of both signs over several orders of magnitude."""

from __future__ import annotations

import numpy as np

from ponder.ops import linear as lin


def random_blocks(type_name: str, N: int, K: int, seed: int) -> np.ndarray:
    """uint8 bytes of N weight rows of K / 32 blocks of ``type_name`` (``lin.QUANT_TYPES``)."""
    rng = np.random.default_rng(seed)
    _, block_bytes = lin.QUANT_TYPES[type_name]
    n = N * (K // 32)
    blocks = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    scale = (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 1, size=n)).astype(np.float16)
    blocks[:, 0:2] = scale.view(np.uint8).reshape(n, 2)
    if type_name == "Q4_1":
        blocks[:, 2:4] = (rng.standard_normal(n) * 0.1).astype(np.float16).view(np.uint8).reshape(n, 2)
    return blocks.reshape(-1)
