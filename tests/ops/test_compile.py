import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ponder.ops as ops
from ponder.ops import _registry


def _step(x, w, cos_sin, kv, slots, positions, block_tables, seq_lens, query_indptr, keys, temperature, top_k, top_p):
    """One decode step of a toy one-layer model, through every op of the contract."""
    h = ops.rms_norm(x, w, 1e-6)  # [B, 32]
    q, k = ops.rotary(h.view(-1, 4, 8), h[:, :16].reshape(-1, 2, 8), positions, cos_sin)
    ops.append_kv(kv, 0, k, k * 0.5, slots)
    attn = ops.paged_attention(q, kv, 0, block_tables, seq_lens, query_indptr, 8**-0.5)
    logits = attn.reshape(x.shape[0], 32) @ w.diag()[:, :20]  # [B, V=20]
    return ops.sample(logits, keys, temperature, top_k, top_p)


def _inputs():
    g = torch.Generator().manual_seed(0)
    B, S = 3, 4
    kv = torch.randn(1, 2, 6, S, 2, 8, generator=g)
    seq_lens = torch.tensor([5, 2, 8], dtype=torch.int32)
    block_tables = torch.tensor([[0, 1], [2, 3], [4, 5]], dtype=torch.int32)
    positions = seq_lens.long() - 1
    slots = block_tables.long().gather(1, (positions // S)[:, None]).squeeze(1) * S + positions % S
    return (
        torch.randn(B, 32, generator=g), torch.rand(32, generator=g) + 0.5, ops.rope_cache(8, 16, 10000.0), kv,
        slots, positions, block_tables, seq_lens, torch.arange(B + 1, dtype=torch.int32),
        torch.randint(0, 100, (B, 4), generator=g), torch.tensor([0.0, 0.8, 1.2]),
        torch.tensor([0, 5, 0], dtype=torch.int32), torch.tensor([1.0, 1.0, 0.9]),
    )


def test_ops_compile_into_one_graph():
    """torch.compile traces every op as one opaque custom op (no graph breaks) and gives the
    eager results; the cache mutation of append_kv is kept."""
    eager_in, compiled_in = _inputs(), _inputs()
    expected = _step(*eager_in)
    torch._dynamo.reset()
    got = torch.compile(_step, backend="aot_eager", fullgraph=True)(*compiled_in)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=0, rtol=0)
    assert torch.equal(compiled_in[3], eager_in[3])  # the KV cache was written the same way


def test_fake_tensors_go_through_the_fake_implementations():
    with FakeTensorMode():
        q = torch.empty(5, 4, 8)
        kv = torch.empty(2, 2, 3, 4, 2, 8)
        out = ops.paged_attention(
            q, kv, 1, torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2, dtype=torch.int32),
            torch.zeros(3, dtype=torch.int32), 0.1,
        )
        tokens, logprobs = ops.sample(
            torch.empty(3, 11), torch.zeros(3, 4, dtype=torch.int64), torch.ones(3),
            torch.zeros(3, dtype=torch.int32), torch.ones(3),
        )
    assert out.shape == (5, 4, 8) and out.dtype == torch.float32
    assert tokens.shape == (3,) and tokens.dtype == torch.int64 and logprobs.dtype == torch.float32


def test_direct_call_only_for_plain_eager_tensors():
    t = torch.zeros(2)
    assert _registry.direct_call(t)
    with FakeTensorMode():
        assert not _registry.direct_call(torch.zeros(2))
    assert _registry.direct_call(t, torch.nn.Parameter(t))

    class Tagged(torch.Tensor):
        pass

    assert not _registry.direct_call(t.as_subclass(Tagged))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_explicit_and_auto_backends_agree(backend, monkeypatch):
    monkeypatch.setenv("PONDER_BACKEND", "torch")
    a = _step(*_inputs())
    monkeypatch.delenv("PONDER_BACKEND")
    args = _inputs()
    x, w = args[0], args[1]
    assert torch.equal(ops.rms_norm(x, w, 1e-6, backend=backend), ops.rms_norm(x, w, 1e-6))
    assert torch.equal(_step(*args)[0], a[0])


def test_a_cpu_engine_does_not_import_triton():
    # Triton only runs on CUDA tensors or under TRITON_INTERPRET=1; importing it costs about
    # half a second of every CPU command (ponder solve takes 3)
    import os
    import subprocess
    import sys

    code = ("import sys, ponder\nfrom ponder.ops import available_backends, resolve_backend\n"
            "assert available_backends('cpu') == ('torch',), available_backends('cpu')\n"
            "resolve_backend('auto', 'cpu')\nprint('triton' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PONDER_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]
