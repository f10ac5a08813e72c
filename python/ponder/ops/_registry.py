"""Backend registry: which implementation of an op runs for a given device.

Implementations register per (op, backend). Nothing here raises at import time when a GPU,
Triton or the CUDA build is missing: availability is checked when an op is resolved.

Host implementations. Some ops also have a CPU implementation of their own (``register_host``):
native code in ``ponder._core``, or for ``rms_norm`` the reference's arithmetic with fewer
temporaries. It is not a backend: the device backends "cuda" / "triton" name kernels
for accelerators, and "torch" names the pure-PyTorch reference, which stays the test oracle
and the benchmark baseline whatever is installed. The host implementation instead refines
the "torch" choice: it runs exactly when the request is ``"auto"`` (after ``PONDER_BACKEND``),
the tensors are on the CPU, and the op registered one (which its module does only when
``ponder._core`` provides the function). ``backend="torch"`` or ``PONDER_BACKEND=torch``
therefore always selects the reference. A host implementation must return what the reference
returns (each op's docstring states any tolerance).
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Dict

import torch

BACKENDS = ("torch", "triton", "cuda")
_CHOICES = ("auto",) + BACKENDS
_IMPLS: Dict[str, Dict[str, Callable]] = {}
_HOST_IMPLS: Dict[str, Callable] = {}


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend] = fn
        _CHOSEN.clear()
        return fn

    return deco


def register_host(op: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the native CPU implementation of ``op`` (see the module
    docstring for when it runs instead of the "torch" reference)."""

    def deco(fn: Callable) -> Callable:
        _HOST_IMPLS[op] = fn
        _CHOSEN.clear()
        return fn

    return deco


def host_implementation(op: str) -> Callable | None:
    """The native CPU implementation registered for ``op``, or ``None``."""
    return _HOST_IMPLS.get(op)


@functools.lru_cache(maxsize=None)
def _cuda_kernels_built() -> bool:
    try:
        from ponder import _core
    except ImportError:
        return False
    return bool(getattr(_core, "CUDA_BUILT", False))


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # a broken Triton install must not break ponder
        return False
    return True


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends(device: torch.device | str = "cpu") -> tuple:
    """Backends that can run on ``device``, fastest first.

    ``cuda`` needs the CUDA build and a CUDA tensor; ``triton`` needs Triton and either a CUDA
    tensor or ``TRITON_INTERPRET=1`` (the CPU interpreter, for tests); ``torch`` always works.
    """
    dev = torch.device(device)
    out = []
    if dev.type == "cuda" and _cuda_kernels_built():
        out.append("cuda")
    # the device first: importing Triton takes about half a second, and a CPU run without the
    # interpreter never uses it
    if (dev.type == "cuda" or _triton_interpreted()) and _triton_importable():
        out.append("triton")
    out.append("torch")
    return tuple(out)


# Ops whose "auto" order differs from available_backends' (cuda, triton, torch), by measurement.
# shared_prefix_attention: on an H200 (benchmarks/RESULTS.md) the Triton kernel ran the decode
# shapes of 128-dim heads 1.5-2.9x faster than the CUDA kernel; CUDA remains for backend="cuda".
_AUTO_ORDER: Dict[str, tuple] = {"shared_prefix_attention": ("triton", "cuda", "torch")}


def _requested(backend: str) -> str:
    """``backend`` with ``"auto"`` replaced by ``PONDER_BACKEND`` (itself ``auto`` by default)."""
    if backend not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("PONDER_BACKEND", "auto").strip().lower() or "auto"
        if env not in _CHOICES:
            raise ValueError(f"PONDER_BACKEND must be one of {_CHOICES}, got {env!r}")
        backend = env
    return backend


def resolve_backend(backend: str = "auto", device: torch.device | str = "cpu", op: str | None = None) -> str:
    """The backend that will run ``op`` on ``device`` for the requested ``backend``.

    ``"auto"`` reads ``PONDER_BACKEND`` first (itself ``auto`` by default), then takes the first
    backend of ``available_backends(device)`` that implements ``op``, except for ops whose
    measured order differs (``shared_prefix_attention``: Triton before CUDA). An explicit backend
    that cannot run raises ``ValueError`` naming the reason instead of silently falling back.
    """
    backend = _requested(backend)
    avail = available_backends(device)
    registered = _IMPLS.get(op, {}) if op is not None else None
    if backend == "auto":
        order = _AUTO_ORDER.get(op)
        if order is not None:
            avail = tuple(sorted(avail, key=order.index))
        for b in avail:
            if registered is None or b in registered:
                return b
        raise ValueError(f"no implementation of op {op!r} can run on device {device}")
    if backend not in avail:
        raise ValueError(
            f"backend {backend!r} cannot run on device {torch.device(device)}: available here are {avail}"
            + ("" if _cuda_kernels_built() or backend != "cuda" else " (ponder was built without CUDA kernels)")
        )
    if registered is not None and backend not in registered:
        raise ValueError(f"op {op!r} has no {backend!r} implementation; it has {tuple(registered)}")
    return backend


def implementation(op: str, backend: str, device: torch.device | str) -> Callable:
    """The registered function for ``op`` after resolving ``backend`` on ``device``: the host
    implementation for ``"auto"`` on the CPU when ``op`` has one, else the backend's.

    Answers are cached per (op, backend, device, ``PONDER_BACKEND``, ``TRITON_INTERPRET``), the
    inputs of the choice; a choice that raises is never cached."""
    env = os.environ
    key = (op, backend, str(device), env.get("PONDER_BACKEND"), env.get("TRITON_INTERPRET"))
    host = _HOST_IMPLS.get(op)
    hit = _CHOSEN.get(key)
    if hit is not None and hit[1] is host:
        return hit[0]
    fn = _choose(op, backend, device)
    _CHOSEN[key] = (fn, host)
    return fn


_CHOSEN: Dict[tuple, tuple] = {}  # key -> (implementation, host implementation it was chosen with)


def _choose(op: str, backend: str, device: torch.device | str) -> Callable:
    resolved = resolve_backend(backend, device, op)
    host = _HOST_IMPLS.get(op)
    if host is not None and resolved == "torch" and _requested(backend) == "auto" and torch.device(device).type == "cpu":
        return host
    return _IMPLS[op][resolved]


# Parameters are plain tensors in eager mode (model weights reach rms_norm as Parameters);
# any other subclass may override dispatch and must see the op.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def tracing_modes_active() -> bool:
    """Whether a dispatch or function mode (fake tensors, proxy tracing, ...) is active."""
    # Private but long-standing PyTorch hooks; if a release drops them, assume one is active.
    try:
        return torch._C._len_torch_dispatch_stack() + torch._C._len_torch_function_stack() > 0
    except AttributeError:
        return True


def direct_call(*tensors: torch.Tensor) -> bool:
    """Whether a wrapper may call the implementation directly instead of through its custom op.

    A ``torch.library.custom_op`` costs tens of microseconds per call in eager mode, which adds
    up over the ops of every layer in a decode step. Plain eager calls on plain tensors skip it;
    anything that traces (torch.compile, export, fake or functional tensors, dispatch or
    function modes) goes through the op so its fake implementation and schema are used.
    """
    if torch.compiler.is_compiling() or tracing_modes_active():
        return False
    return all(type(t) in _PLAIN_TENSOR_TYPES for t in tensors)
