"""Triton kernels of ponder, installed as ``ponder.triton``.

Device code only: each module holds ``@triton.jit`` kernels; launchers and the torch integration
live in ``ponder.ops``. Importing this package never requires a GPU.
"""
