import os
import sys

import pytest


def _import_triton_for_the_interpreter() -> None:
    """Without a GPU the Triton kernel tests run in Triton's CPU interpreter, which only works
    if Triton was first imported with TRITON_INTERPRET=1. Import it here, before any test module
    (or transformers) can import it for compiling, then restore the environment so the rest of
    the suite keeps resolving ``backend="auto"`` to the torch reference; tests/triton sets the
    variable again per test."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() or "triton" in sys.modules:
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401

        os.environ["PONDER_TRITON_IMPORTED_INTERPRETED"] = "1"  # read by tests/triton/conftest.py
    except Exception:  # Triton missing or broken: tests/triton reports it
        pass
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_for_the_interpreter()

try:
    from hypothesis import HealthCheck, settings

    # CI runs derandomized so a failure reproduces on the next run; locally hypothesis explores.
    settings.register_profile(
        "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # hypothesis is part of the test extra; without it only its tests fail
    pass


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
