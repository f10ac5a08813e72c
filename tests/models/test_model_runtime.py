"""DecoderLM plumbing: KV allocation, dtype moves, empty batches and input validation."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from paged_batch import PagedSequences
from ponder import ops
from ponder.models import DecoderLM, ModelConfig
from ponder.models.llama import zeros_on_first_touch

CFG = ModelConfig(vocab_size=53, hidden_size=30, intermediate_size=44, num_layers=3, num_heads=6,
                  num_kv_heads=2, head_dim=10, max_position_embeddings=64, model_type="llama")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DecoderLM(CFG)


def _batch(model, lens=(5, 3)):
    seqs = PagedSequences(num_pages=8, page_size=4)
    kv = model.allocate_kv_cache(8, 4)
    ids = [seqs.new() for _ in lens]
    batch = seqs.step(ids, [[(7 * n + i) % CFG.vocab_size for i in range(n)] for n in lens])
    return kv, batch


def test_fresh_weights_follow_the_transformers_init(model):
    assert torch.equal(model.norm, torch.ones(30)) and torch.equal(model.layers[0].attn_norm, torch.ones(30))
    std = model.layers[0].qkv_weight.std().item()
    assert 0.015 < std < 0.025  # normal(0, 0.02) over 3000 entries: sample std within ~2%
    assert model.lm_head is not None and model.value_head is None


def test_allocate_kv_cache_and_bytes_per_token(model):
    kv = model.allocate_kv_cache(5, 4)
    assert kv.shape == (3, 2, 5, 4, 2, 10) and kv.dtype == torch.float32 and not kv.any()
    assert model.allocate_kv_cache(1, 2, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert model.kv_bytes_per_token == 2 * 3 * 2 * 10 * 4
    with pytest.raises(ValueError, match="num_pages must be a positive int, got 0"):
        model.allocate_kv_cache(0, 4)
    with pytest.raises(ValueError, match="page_size must be a positive int, got 2.5"):
        model.allocate_kv_cache(3, 2.5)
    with pytest.raises(TypeError, match="dtype must be .* got torch.int64"):
        model.allocate_kv_cache(3, 2, dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 2, 5, 4, 2, 10), (1, 2, 1, 1, 1, 1), (2, 2, 0, 4, 1, 8)])
def test_zeros_on_first_touch_are_aligned_writable_zeros(dtype, shape):
    t = zeros_on_first_touch(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"
    assert torch.equal(t, torch.zeros(shape, dtype=dtype))
    if t.numel():
        assert t.data_ptr() % 64 == 0  # like PyTorch's allocator: page rows start on cache lines
        t[-1, -1, -1, -1, -1, -1] = 2.0
        t.view(-1)[0] = 1.0
        assert float(t.sum()) == 3.0


def _resident_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_a_large_cpu_pool_becomes_resident_only_where_written(model):
    before = _resident_kib()
    kv = model.allocate_kv_cache(100_000, 16)  # 3 layers x 2 x 100k pages x 16 x 2 x 10 fp32 = 768 MB
    assert _resident_kib() - before < 64 * 1024  # torch.zeros would write (and map) all 768 MB here
    kv[:, :, :10].fill_(1.0)
    assert float(kv[:, :, :10].sum()) == kv[:, :, :10].numel() and not kv[:, :, 10:20].any()


def test_bf16_cast_keeps_the_rope_table_in_fp32():
    m = DecoderLM(CFG).to(torch.bfloat16)
    assert m.dtype == torch.bfloat16 and m.kv_bytes_per_token == 2 * 3 * 2 * 10 * 2
    assert m.cos_sin.dtype == torch.float32
    assert torch.equal(m.cos_sin, ops.rope_cache(10, 64, 10000.0))


def test_output_shapes_and_dtypes(model):
    kv, batch = _batch(model)
    hidden = model(kv_cache=kv, **batch)
    assert hidden.shape == (8, 30) and hidden.dtype == torch.float32
    logits = model.logits(hidden[[4, 7]])
    assert logits.shape == (2, 53) and logits.dtype == torch.float32
    assert kv[:, :, :, :, :, :].abs().sum() > 0


def test_logits_of_a_row_do_not_depend_on_the_rest_of_the_batch(model):
    """Sequence 0 alone and sequence 0 next to another sequence give the same hidden state."""
    kv, batch = _batch(model, lens=(5,))
    alone = model(kv_cache=kv, **batch)
    kv, batch = _batch(model, lens=(5, 3))
    together = model(kv_cache=kv, **batch)
    torch.testing.assert_close(together[:5], alone, rtol=0, atol=1e-6)  # fp32, same math per row


class _ObservedOps(torch.overrides.TorchFunctionMode):
    """A pass-through function mode that records the ponder custom ops it sees. While it is
    active the ops cannot be called directly, so the model goes through their custom ops."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = str(getattr(func, "_name", getattr(func, "__name__", "")))
        if name.startswith("ponder::"):
            self.seen.add(name)
        return func(*args, **(kwargs or {}))


def _prefill_then_decode(model, shared: bool, mode=None):
    """A 9-token prompt, forked into 3 branches that decode one token each (through a decode
    plan when ``shared``). Returns (prefill hidden, decode hidden, KV cache)."""
    seqs = PagedSequences(num_pages=12, page_size=4, seed=3)
    kv = model.allocate_kv_cache(12, 4)
    root = seqs.new()
    prompt = seqs.step([root], [[(5 * i + 2) % CFG.vocab_size for i in range(9)]])
    with mode if mode is not None else contextlib.nullcontext():
        first = model(kv_cache=kv, **prompt)
        kids = [seqs.fork(kv, root) for _ in range(3)]
        step = seqs.step(kids, [[11], [12], [13]])
        plan = None
        if shared:
            plan = ops.plan_shared_prefix_attention(step["block_tables"], step["seq_lens"], kv, CFG.num_heads)
        second = model(kv_cache=kv, **step, decode_plan=plan)
    return first, second, kv


@pytest.mark.parametrize("shared", [False, True], ids=["paged", "decode_plan"])
def test_direct_calls_and_custom_ops_give_the_same_bits(model, shared):
    """An eager forward calls the ops' implementations directly; under a function mode it goes
    through their custom ops. Both run the same implementation: same hidden rows, same cache."""
    direct = _prefill_then_decode(model, shared)
    mode = _ObservedOps()
    traced = _prefill_then_decode(model, shared, mode)
    attention = "ponder::shared_prefix_attention" if shared else "ponder::paged_attention"
    assert {"ponder::rms_norm", "ponder::rotary", "ponder::append_kv", attention} <= mode.seen
    for a, b in zip(direct, traced):
        assert torch.equal(a, b)


def test_empty_batch_is_a_no_op(model):
    kv, batch = _batch(model)
    empty = {k: (v[:0] if k in ("input_ids", "positions", "slot_mapping") else v) for k, v in batch.items()}
    empty["query_indptr"] = torch.zeros_like(batch["query_indptr"])
    out = model(kv_cache=kv, **empty)
    assert out.shape == (0, 30) and not kv.any()


def _bad(batch, **changes):
    out = dict(batch)
    out.update(changes)
    return out


@pytest.mark.parametrize("change, error, match", [
    (lambda b: _bad(b, input_ids=b["input_ids"].int()), TypeError, "input_ids must be a 1-D torch.int64"),
    (lambda b: _bad(b, input_ids=b["input_ids"] + 50), ValueError, r"input_ids must lie in \[0, 53\)"),
    (lambda b: _bad(b, positions=b["positions"][:-1]), ValueError, "positions must have T=8 entries"),
    (lambda b: _bad(b, positions=b["positions"] + 1), ValueError, r"positions\[0\] = 1, expected 0"),
    (lambda b: _bad(b, slot_mapping=b["slot_mapping"] + 1), ValueError, r"slot_mapping\[0\] = \d+, expected -1"),
    (lambda b: _bad(b, block_tables=b["block_tables"][:1]), ValueError, r"B=1 \(block_tables rows\)"),
    (lambda b: _bad(b, seq_lens=b["seq_lens"] + 9), ValueError, r"seq_lens\[0\] = 14 must lie in \[5, 8\]"),
    (lambda b: _bad(b, query_indptr=torch.tensor([0, 2, 9], dtype=torch.int32)), ValueError,
     r"query_indptr must be non-decreasing from 0 to T=8, got \[0, 2, 9\]"),
    (lambda b: _bad(b, seq_lens=b["seq_lens"].long()), TypeError, "seq_lens must be a 1-D torch.int32"),
    (lambda b: _bad(b, block_tables=torch.full_like(b["block_tables"], 9)), IndexError,
     r"block_tables\[0, 0\] = 9 must be a page id in \[0, 8\)"),
])
def test_bad_inputs_raise_before_touching_the_cache(model, change, error, match):
    kv, batch = _batch(model)
    with pytest.raises(error, match=match):
        model(kv_cache=kv, **change(batch))
    assert not kv.any()
    kv, batch = _batch(model)
    assert model(kv_cache=kv, **batch).shape == (8, 30)  # still usable


def test_positions_past_the_rope_table_are_refused(model):
    seqs = PagedSequences(num_pages=20, page_size=4)
    kv = model.allocate_kv_cache(20, 4)
    batch = seqs.step([seqs.new()], [[1] * 65])
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 65 must lie in \[65, 64\]"):
        model(kv_cache=kv, **batch)


def test_two_sequences_writing_one_shared_slot_are_refused(model):
    """Forked without copy-on-write: both branches would append into the shared partial page."""
    seqs = PagedSequences(num_pages=8, page_size=4)
    kv = model.allocate_kv_cache(8, 4)
    root = seqs.new()
    model(kv_cache=kv, **seqs.step([root], [[3, 4, 5]]))
    twin = seqs.new()
    seqs.pages[twin], seqs.lens[twin] = list(seqs.pages[root]), seqs.lens[root]
    before = kv.clone()
    with pytest.raises(ValueError, match="writes slot .* more than once"):
        model(kv_cache=kv, **seqs.step([root, twin], [[6], [7]]))
    assert torch.equal(kv, before)


def test_bad_cache_and_hidden(model):
    kv, batch = _batch(model)
    with pytest.raises(ValueError, match=r"kv_cache must have shape \[3, 2, P, S, 2, 10\]"):
        model(kv_cache=kv[:2], **batch)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor, got list"):
        model(kv_cache=kv, **_bad(batch, input_ids=[1, 2]))
    with pytest.raises(ValueError, match=r"hidden must have shape \[B, 30\], got \(2, 31\)"):
        model.logits(torch.zeros(2, 31))
    with pytest.raises(ValueError, match="hidden must be torch.float32"):
        model.logits(torch.zeros(2, 30, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="no value head"):
        model.value(torch.zeros(2, 30))


def test_constructor_validates():
    with pytest.raises(TypeError, match="config must be a ModelConfig, got dict"):
        DecoderLM({"vocab_size": 3})
    with pytest.raises(TypeError, match="dtype must be"):
        DecoderLM(CFG, dtype=torch.int32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    """Same weights and batch on CUDA and CPU. fp32: cuBLAS and CPU BLAS sum in different
    orders (TF32 is off by default for matmuls), ~1e-6 relative per layer, so 1e-4. bf16: one
    bf16 rounding difference (0.4%) of logits of magnitude ~1 after a few layers, so 5e-2."""
    torch.manual_seed(0)
    cpu = DecoderLM(CFG, dtype=dtype, init_std=0.2)
    gpu = DecoderLM(CFG, dtype=dtype, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    assert gpu.cos_sin.device.type == "cuda" and gpu.cos_sin.dtype == torch.float32
    kv_cpu, batch = _batch(cpu)
    kv_gpu = gpu.allocate_kv_cache(8, 4)
    assert kv_gpu.device.type == "cuda" and kv_gpu.dtype == dtype
    batch_gpu = {k: v.cuda() for k, v in batch.items()}
    want = cpu.logits(cpu(kv_cache=kv_cpu, **batch))
    got = gpu.logits(gpu(kv_cache=kv_gpu, **batch_gpu, check=True)).cpu()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="input_ids is on cpu but the model is on cuda"):
        gpu(kv_cache=kv_gpu, **dict(batch_gpu, input_ids=batch["input_ids"]))
