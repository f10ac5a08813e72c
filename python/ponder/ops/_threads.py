"""How many threads a native CPU kernel of ponder splits one call over."""

from __future__ import annotations

import torch

import ponder


def native_threads() -> int:
    """``torch.get_num_threads()``, or 1 while torch's OpenMP threads spin between ops.

    The native kernels split large calls over their own helper threads. OpenMP reads its wait
    policy once, when torch loads: when ponder was imported first it sets ``PASSIVE`` and idle
    OpenMP threads sleep. When torch came first (or the user chose another policy) they spin for
    a while after every torch op, on the same cores, and a helper thread waits its turn behind
    them: SmolLM2 decoding 64 branches over 2,048 tokens took 880 ms per step at 2 threads with
    spinning against 452 ms with passive waiting and 704 ms at 1 thread. So with spinning
    threads a native call runs on the calling thread alone (the results are the same bits at
    any thread count).
    """
    return 1 if ponder._OMP_SPINS else torch.get_num_threads()
