"""Which backend "auto" picks when several can run: the registry's order, with the per-op
exceptions that measurements set (tested with the device's backends stubbed, so on any machine)."""

import pytest
import torch

import ponder.ops as ops
from ponder.ops import _registry, cuda_backend, triton_backend


@pytest.fixture
def gpu_backends(monkeypatch):
    def stub(avail):
        monkeypatch.setattr(_registry, "available_backends", lambda device="cpu": avail)

    return stub


def test_auto_prefers_triton_for_shared_prefix_attention_and_cuda_elsewhere(gpu_backends, monkeypatch):
    monkeypatch.delenv("PONDER_BACKEND", raising=False)
    gpu_backends(("cuda", "triton", "torch"))
    resolve = _registry.resolve_backend
    assert resolve("auto", "cpu", "shared_prefix_attention") == "triton"
    assert resolve("auto", "cpu", "value_score") == "cuda"
    assert resolve("auto", "cpu", "copy_pages") == "cuda"
    assert resolve("auto", "cpu", "paged_attention") == "triton"  # no CUDA implementation
    assert resolve("cuda", "cpu", "shared_prefix_attention") == "cuda"  # an explicit request stands
    gpu_backends(("cuda", "torch"))  # no Triton: the CUDA kernel
    assert resolve("auto", "cpu", "shared_prefix_attention") == "cuda"


def test_plans_are_shaped_for_the_backend_auto_picks(gpu_backends, monkeypatch):
    monkeypatch.delenv("PONDER_BACKEND", raising=False)
    kv = torch.zeros(1, 2, 4, 16, 2, 8)
    gpu_backends(("cuda", "triton", "torch"))
    assert ops.plan_item_options(kv, 6) == triton_backend.plan_options(16, 3)
    gpu_backends(("cuda", "torch"))
    assert ops.plan_item_options(kv, 6) == cuda_backend.plan_options(16, 3) == {
        "max_pages_per_item": 64, "max_queries_per_item": 21}  # fmt: skip
    gpu_backends(("torch",))
    assert ops.plan_item_options(kv, 6) == {"max_pages_per_item": 0, "max_queries_per_item": 0}
