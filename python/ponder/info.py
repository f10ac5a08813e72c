"""What this installation of ponder can do: build flags, devices, backends."""

from __future__ import annotations

import platform
from typing import Dict


def collect() -> Dict[str, object]:
    """A dictionary describing the installation (used by ``ponder info``)."""
    import torch

    import ponder
    from ponder import __version__
    from ponder.ops import available_backends, resolve_backend
    from ponder.ops._threads import native_threads

    info: Dict[str, object] = {"ponder": __version__, "python": platform.python_version(), "torch": torch.__version__}
    try:
        from ponder import _core

        info["native core"] = "loaded"
        info["cuda kernels built"] = bool(_core.CUDA_BUILT)
    except ImportError as exc:  # reported, not raised: info must work on a broken install
        info["native core"] = f"missing ({exc})"
        info["cuda kernels built"] = False
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    info["visible gpus"] = ", ".join(gpus) if gpus else "none"
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        info["triton"] = f"not importable ({type(exc).__name__})"
    idle = "spin" if ponder._OMP_SPINS else "sleep"  # the wait policy OpenMP loaded with
    info["cpu threads"] = (f"torch {torch.get_num_threads()}, native kernels {native_threads()}; "
                           f"idle OpenMP threads {idle}")
    device = "cuda" if gpus else "cpu"
    info["available backends"] = ", ".join(available_backends(device))
    try:
        info["active backend"] = f"{resolve_backend('auto', device)} (on {device})"
    except ValueError as exc:
        info["active backend"] = f"invalid: {exc}"
    return info
