"""ponder.ops.sample on the CPU: the native host implementation against the pure-PyTorch
reference, one thread, SmolLM2's vocabulary. Prints one line per setting with both times and
the ratio, after checking that both return the same tokens and log-probabilities.

    python benchmarks/bench_sampling.py
"""

from __future__ import annotations

import time

import ponder  # noqa: F401  (before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from ponder.ops import sample
from ponder.ops._registry import host_implementation

B, V = 64, 49152
SETTINGS = {  # name: (temperature, top_k, top_p)
    "greedy": (0.0, 0, 1.0),
    "temperature 0.8": (0.8, 0, 1.0),
    "top_k 50": (1.0, 50, 1.0),
    "top_p 0.9": (1.0, 0, 0.9),
}


def _best_of(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    if host_implementation("sample") is None:
        raise SystemExit("ponder._core has no sample_cpu: build the extension first")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # language-model-like rows: a few strong tokens over a wide tail
    logits = torch.randn(B, V, generator=g) * 2.5
    logits[:, :64] += 6.0
    keys = torch.randint(0, 2**40, (B, 4), generator=g)
    for name, (t, k, p) in SETTINGS.items():
        args = (logits, keys, torch.full((B,), t), torch.full((B,), k, dtype=torch.int32), torch.full((B,), p))
        native, reference = sample(*args), sample(*args, backend="torch")
        assert torch.equal(native[0], reference[0]) and torch.equal(native[1], reference[1]), name
        t_native = _best_of(lambda: sample(*args))
        t_ref = _best_of(lambda: sample(*args, backend="torch"))
        print(f"sample B={B} V={V} fp32 1 thread {name:16s} native {t_native * 1e3:7.2f} ms  "
              f"reference {t_ref * 1e3:7.2f} ms  speedup {t_ref / t_native:5.1f}x")


if __name__ == "__main__":
    main()
