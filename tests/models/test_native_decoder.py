"""The native decode step (``ponder.models.native_decoder``): the same hidden rows and K/V bits
as the eager layer loop, on the eager loop's own inputs (per-row attention, or a shared-prefix
plan of the rows that run); the eager loop wherever it cannot be."""

from __future__ import annotations

import platform
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paged_batch import PagedSequences
from ponder import _core, ops
from ponder.attention_plan import plan_attention
from ponder.kv_store import split_by_items
from ponder.models import DecoderLM, ModelConfig, native_decoder
from ponder.ops._registry import implementation
from ponder.ops import linear

pytestmark = pytest.mark.skipif(not native_decoder.available(), reason="extension built without DecoderCpu")

CASES = {
    # the countdown policy's shapes: every matrix on linear_blocked_cpu in the BLAS's order
    "countdown": ModelConfig(vocab_size=51, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=32, max_position_embeddings=128, model_type="llama"),
    # odd sizes: rows that end in scalar tails of the sum and the SiLU, 3 query heads per KV head
    "odd": ModelConfig(vocab_size=53, hidden_size=60, intermediate_size=44, num_layers=3, num_heads=6,
                       num_kv_heads=2, head_dim=10, max_position_embeddings=128, model_type="llama"),
    # Qwen2's q/k/v biases
    "qkv-bias": ModelConfig(vocab_size=47, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                            num_kv_heads=4, head_dim=16, max_position_embeddings=128, model_type="qwen2",
                            attention_bias=True),
    # matrices of at least 1 MiB: decode rows on linear_cpu, with q/k/v and output biases
    "large": ModelConfig(vocab_size=61, hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=64, max_position_embeddings=128, model_type="llama",
                         attention_bias=True, attention_out_bias=True),
}


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = DecoderLM(cfg, init_std=0.3).eval()
    with torch.no_grad():  # norms and biases away from their initial ones and zeros
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape) * 0.5 + (1.0 if name.endswith("norm") else 0.0))
    return model


def _groups_of(keys):
    _, firsts, groups = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    order = np.argsort(firsts)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return (torch.from_numpy(firsts[order].astype(np.int64)),
            torch.from_numpy(rank[groups.reshape(-1)].astype(np.int64)))


@pytest.fixture
def count_native(monkeypatch):
    """The number of native decode steps run since the fixture was made."""
    calls = [0]
    real = native_decoder.NativeDecoder.decode

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(native_decoder.NativeDecoder, "decode", counted)
    return calls


def _run(model, native: bool, seed: int, branches_per_root: int, use_groups: bool, steps: int = 6,
         plan: str = "none"):
    """Three prompts, forked into branches that decode ``steps`` tokens; siblings often draw the
    same token (so groups have several rows), a few branches fork again mid-way, and branches
    of different prompts have different lengths (pages end mid-way). ``plan``: "none", "rows"
    (every decode step through a shared-prefix plan of the rows that run: all rows, or with
    groups the groups' first rows after rows whose items differ left their groups, as the
    engine does) or "all-rows" (a plan of all rows, with or without groups). Returns every
    forward's hidden rows and the cache."""
    model.native_decode = native
    cfg = model.config
    rng = random.Random(seed)
    seqs = PagedSequences(num_pages=600, page_size=4, seed=seed)
    kv = model.allocate_kv_cache(600, 4)
    roots = [seqs.new() for _ in range(3)]
    prompts = [[rng.randrange(cfg.vocab_size) for _ in range(n)] for n in (9, 5, 14)]
    outs = [model(kv_cache=kv, **seqs.step(roots, prompts))]
    branches = [(seqs.fork(kv, root), (r,)) for r, root in enumerate(roots) for _ in range(branches_per_root)]
    for step in range(steps):
        if step == 2:
            for seq, key in list(branches[::4]):
                branches.append((seqs.fork(kv, seq), key))
        tokens = [rng.choice((3, 4)) if rng.random() < 0.7 else rng.randrange(cfg.vocab_size) for _ in branches]
        first = {}
        for i, (_, key) in enumerate(branches):
            if key in first and rng.random() < 0.8:
                tokens[i] = first[key]
            first.setdefault(key, tokens[i])
        branches = [(seq, key + (t,)) for (seq, key), t in zip(branches, tokens)]
        batch = seqs.step([s for s, _ in branches], [[t] for t in tokens])
        groups = _groups_of([hash(k) for _, k in branches]) if use_groups else None
        decode_plan = None
        if plan == "all-rows" or (plan == "rows" and groups is None):
            decode_plan = ops.plan_shared_prefix_attention(batch["block_tables"], batch["seq_lens"], kv,
                                                           cfg.num_heads)
        elif plan == "rows":
            full = plan_attention(batch["block_tables"], batch["seq_lens"], seqs.page_size)
            cut, _ = split_by_items(full, tuple(g.numpy() for g in groups))
            decode_plan = full.for_queries(cut[0]).to("cpu")
            groups = tuple(torch.from_numpy(g) for g in cut)
        outs.append(model(kv_cache=kv, row_groups=groups, decode_plan=decode_plan, **batch))
    return outs, kv


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("plan", ["none", "rows", "all-rows"])
@pytest.mark.parametrize("use_groups", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_steps_are_the_eager_forward_bit_for_bit(case, use_groups, plan, threads, count_native):
    model = _model(CASES[case])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        eager, kv_eager = _run(model, False, 3, 5, use_groups, plan=plan)
        assert count_native[0] == 0
        native, kv_native = _run(model, True, 3, 5, use_groups, plan=plan)
    finally:
        torch.set_num_threads(before)
    # every decode step (no prefill), except that a plan of all rows with groups keeps the eager loop
    assert count_native[0] == (0 if plan == "all-rows" and use_groups else 6)
    assert len(eager) == len(native)
    for i, (a, b) in enumerate(zip(eager, native)):
        assert _same_bits(a, b), f"forward {i}: hidden rows differ"
    assert _same_bits(kv_eager, kv_native)


def test_many_rows_at_two_threads_split_the_silu_on_its_vector_boundaries(count_native):
    # 3 x 32 branches + forks: over 96 rows x 384 = PyTorch's grain, so its SiLU splits over 2 threads
    model = _model(CASES["countdown"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eager, kv_eager = _run(model, False, 5, 32, False, steps=3)
        native, kv_native = _run(model, True, 5, 32, False, steps=3)
    finally:
        torch.set_num_threads(before)
    assert count_native[0] == 3
    assert all(_same_bits(a, b) for a, b in zip(eager, native))
    assert _same_bits(kv_eager, kv_native)


def test_silu_split_rule():
    # below the grain or on one thread: never split
    assert native_decoder.silu_split_ok(10, 384, 8, 2)
    assert native_decoder.silu_split_ok(1000, 44, 8, 1)
    # 96 x 384 over 2 threads: halves of 18,432 elements, a multiple of 16
    assert native_decoder.silu_split_ok(96, 384, 8, 2)
    # rows of 44 elements end in scalar tails that a split moves
    assert not native_decoder.silu_split_ok(1000, 44, 8, 2)
    # 83 x 400 over 2 threads: halves of 16,600 elements, 8 past a multiple of 16
    assert not native_decoder.silu_split_ok(83, 400, 8, 2)
    assert native_decoder.silu_split_ok(84, 400, 8, 2)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="PyTorch's vector width on x86-64")
def test_torch_order_width_is_found_on_x86():
    width = native_decoder.torch_order_width(128, 384, 1e-6)
    assert width in (8, 16)


@pytest.mark.parametrize("C", [8, 24, 60, 128, 500, 576, 1000, 2048])
def test_rms_norm_in_torch_order(C):
    width = native_decoder.torch_order_width(C, 64, 1e-5)
    if width is None:
        pytest.skip("PyTorch's order is not the one reproduced on this build")
    g = torch.Generator().manual_seed(C)
    x = (torch.randn(19, 2 * C, generator=g) * 10.0)[:, :C]  # rows 2C apart
    w = torch.randn(C, generator=g)
    want = implementation("rms_norm", "auto", "cpu")(x, w, 1e-5)
    out = torch.empty(19, C)
    _core.rms_norm_torch_order(x.data_ptr(), 19, C, 2 * C, w.data_ptr(), 1e-5, width, out.data_ptr(), C)
    assert _same_bits(out, want)


@pytest.mark.parametrize("I", [7, 16, 44, 100, 384, 1536])
def test_silu_mul_in_torch_order(I):
    width = native_decoder.torch_order_width(64, I, 1e-5)
    if width is None:
        pytest.skip("PyTorch's order is not the one reproduced on this build")
    g = torch.Generator().manual_seed(I)
    gu = torch.randn(23, 2 * I, generator=g) * torch.tensor([1.0, 5.0, 30.0, 120.0]).repeat_interleave(
        -(-23 // 4))[:23, None]
    gate, up = gu.chunk(2, dim=-1)
    want = F.silu(gate) * up
    out = torch.empty(23, I)
    _core.silu_mul_torch_order(gu.data_ptr(), gu.data_ptr() + 4 * I, 23, I, 2 * I, width, out.data_ptr(), I)
    assert _same_bits(out, want)


def test_weights_changed_in_place_or_replaced_are_seen(count_native):
    model = _model(CASES["countdown"])
    _run(model, True, 1, 3, True, steps=1)
    first = native_decoder.for_model(model)
    with torch.no_grad():
        model.layers[0].qkv_weight.mul_(1.5)  # a weight the blocked kernel reads transposed
        model.layers[1].mlp_norm.add_(0.25)
    assert not first.current(model)
    eager, kv_eager = _run(model, False, 1, 3, True, steps=2)
    native, kv_native = _run(model, True, 1, 3, True, steps=2)
    assert all(_same_bits(a, b) for a, b in zip(eager, native)) and _same_bits(kv_eager, kv_native)
    model.layers[1].down_weight = torch.nn.Parameter(torch.randn(128, 384) * 0.1)
    assert not native_decoder.for_model(model) is first
    eager, kv_eager = _run(model, False, 2, 3, True, steps=2)
    native, kv_native = _run(model, True, 2, 3, True, steps=2)
    assert all(_same_bits(a, b) for a, b in zip(eager, native)) and _same_bits(kv_eager, kv_native)
    assert count_native[0] == 1 + 2 + 2


def test_plans_bf16_and_the_switch_keep_the_eager_loop(count_native):
    model = _model(CASES["countdown"])
    seqs = PagedSequences(num_pages=64, page_size=4)
    kv = model.allocate_kv_cache(64, 4)
    root = seqs.new()
    model(kv_cache=kv, **seqs.step([root], [[5, 6, 7, 8, 9]]))
    kids = [seqs.fork(kv, root) for _ in range(3)]
    batch = seqs.step(kids, [[1], [1], [3]])
    plan = ops.plan_shared_prefix_attention(batch["block_tables"], batch["seq_lens"], kv, 4)
    # a plan of all three rows, the first two one group: every row must attend, eagerly
    groups = (torch.tensor([0, 2]), torch.tensor([0, 0, 1]))
    model(kv_cache=kv, decode_plan=plan, row_groups=groups, **batch)
    assert count_native[0] == 0
    model.native_decode = False
    model(kv_cache=kv, **seqs.step(kids, [[1], [2], [3]]))
    assert count_native[0] == 0
    model.native_decode = True
    model(kv_cache=kv, **seqs.step(kids, [[1], [2], [3]]))
    assert count_native[0] == 1
    half = _model(CASES["countdown"]).to(torch.bfloat16)
    kv16 = half.allocate_kv_cache(64, 4)
    seqs = PagedSequences(num_pages=64, page_size=4)
    s = seqs.new()
    half(kv_cache=kv16, **seqs.step([s], [[5, 6]]))
    half(kv_cache=kv16, **seqs.step([s], [[7]]))
    assert count_native[0] == 1
    assert native_decoder.for_model(half) is None


def test_bad_indices_raise_before_anything_is_written():
    model = _model(CASES["countdown"])
    seqs = PagedSequences(num_pages=32, page_size=4)
    kv = model.allocate_kv_cache(32, 4)
    a, b = seqs.new(), seqs.new()
    model(kv_cache=kv, **seqs.step([a, b], [[5, 6, 7], [8, 9]]))
    batch = seqs.step([a, b], [[1], [2]])
    saved = kv.clone()
    bad = dict(batch, slot_mapping=batch["slot_mapping"].clone())
    bad["slot_mapping"][1] = 32 * 4  # one past the last slot
    with pytest.raises(IndexError, match=r"slot_mapping\[1\] = 128"):
        model(kv_cache=kv, check=False, **bad)
    assert _same_bits(kv, saved)
    bad = dict(batch, block_tables=batch["block_tables"].clone())
    bad["block_tables"][0, 0] = 99
    with pytest.raises(IndexError, match=r"block_tables\[0, 0\] = 99"):
        model(kv_cache=kv, check=False, **bad)
    assert _same_bits(kv, saved)
    bad = dict(batch, positions=batch["positions"].clone())
    bad["positions"][0] = 500
    with pytest.raises(IndexError, match=r"positions\[0\] = 500"):
        model(kv_cache=kv, check=False, **bad)
    assert _same_bits(kv, saved)
    # the good batch still runs, and as the eager loop does
    out = model(kv_cache=kv, **batch)
    model.native_decode = False
    kv2 = saved.clone()
    assert _same_bits(out, model(kv_cache=kv2, **batch)) and _same_bits(kv, kv2)


def test_decoder_cpu_refuses_mismatched_shapes():
    w = torch.zeros(1)
    lin = (w.data_ptr(), 0, 0, 0, 0, 0, False, 8, 8, 0, 0, 0)
    with pytest.raises(ValueError, match=r"layer 0 qkv must be \[64, 32\], got \[8, 8\]"):
        _core.DecoderCpu(32, 4, 2, 8, 64, 1e-6, 8, [(w.data_ptr(), lin, lin, w.data_ptr(), lin, lin)], w.data_ptr())
    qkv, o, gate_up, down = ((w.data_ptr(), 0, 0, 0, 0, 0, False, n, k, w.data_ptr(), 3, 8)
                             for n, k in ((64, 32), (32, 32), (128, 32), (32, 64)))
    bad_type = qkv[:10] + (5,) + qkv[11:]
    with pytest.raises(ValueError, match=r"type must be 2 \(Q4_0\), 3 \(Q4_1\) or 8 \(Q8_0\), got 5"):
        _core.DecoderCpu(32, 4, 2, 8, 64, 1e-6, 8, [(w.data_ptr(), bad_type, o, w.data_ptr(), gate_up, down)],
                         w.data_ptr())
    blocked = qkv[:5] + (16,) + qkv[6:]
    with pytest.raises(ValueError, match=r"layer 0 qkv: GGUF blocks go with block 0 \(linear_cpu\), got block 16"):
        _core.DecoderCpu(32, 4, 2, 8, 64, 1e-6, 8, [(w.data_ptr(), blocked[:1] + (w.data_ptr(),) + blocked[2:], o,
                                                     w.data_ptr(), gate_up, down)], w.data_ptr())
    with pytest.raises(ValueError, match="torch_width must be 8 or 16"):
        _core.DecoderCpu(32, 4, 2, 8, 64, 1e-6, 4, [], w.data_ptr())
    with pytest.raises(ValueError, match=r"heads \(4\) must be a multiple of kv_heads \(3\)"):
        _core.DecoderCpu(32, 4, 3, 8, 64, 1e-6, 8, [], w.data_ptr())


def test_silu_over_a_sweep_of_all_float_bit_patterns():
    # every 509th of the 2^32 bit patterns: zeros, subnormals, the exp cut-offs, infinities and
    # NaNs included (the whole range, all 2^32, gave 0 mismatches when measured)
    width = native_decoder.torch_order_width(64, 64, 1e-5)
    if width is None:
        pytest.skip("PyTorch's order is not the one reproduced on this build")
    bits = torch.arange(-(1 << 31), 1 << 31, 509, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    n = x.numel()
    gu = torch.stack([x, torch.ones(n)])  # gate, then up = 1 one row later
    got = torch.empty(n)
    _core.silu_mul_torch_order(gu.data_ptr(), gu.data_ptr() + 4 * n, 1, n, 2 * n, width, got.data_ptr(), n)
    want = F.silu(x)
    differ = (got.view(torch.int32) != want.view(torch.int32)) & ~(torch.isnan(got) & torch.isnan(want))
    assert int(differ.sum()) == 0, x[differ][:8]


def test_many_rows_at_several_threads_go_to_mkl():
    model = _model(CASES["countdown"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        step = native_decoder.for_model(model)
        assert step.accepts(native_decoder.THREADED_MAX_ROWS)
        assert not step.accepts(native_decoder.THREADED_MAX_ROWS + 1)
        torch.set_num_threads(1)
        step = native_decoder.for_model(model)  # rebuilt for the thread count
        assert step.threads == 1 and step.accepts(4 * native_decoder.THREADED_MAX_ROWS)
    finally:
        torch.set_num_threads(before)
    # every matrix at least 1 MiB, all on linear_cpu, which splits its own rows: no limit
    large = _model(ModelConfig(vocab_size=32, hidden_size=512, intermediate_size=1024, num_layers=1, num_heads=8,
                               num_kv_heads=8, head_dim=64, max_position_embeddings=64, model_type="llama"))
    try:
        torch.set_num_threads(2)
        assert native_decoder.for_model(large).accepts(4 * native_decoder.THREADED_MAX_ROWS)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not linear.quant_available(), reason="no linear_quant_cpu on this build / CPU")
@pytest.mark.parametrize("threads", [1, 2])
def test_gguf_blocks_give_the_same_decode_steps(threads, monkeypatch):
    """The large case's two matrices of at least 1 MiB (gate_up, down) set to the de-quantisation
    of random Q4_1 / Q8_0 blocks and given those blocks: eager and native decode steps read the
    blocks and give the bits they give without them."""
    from quant_blocks import random_blocks
    from ponder.models.gguf_file import dequantize

    model = _model(CASES["large"])
    params = dict(model.named_parameters())
    attached = []
    for i in range(model.config.num_layers):
        for name, kind in (("gate_up_weight", "Q4_1"), ("down_weight", "Q8_0")):
            w = params[f"layers.{i}.{name}"]
            N, K = w.shape
            blocks = random_blocks(kind, N, K, seed=10 * i + len(name))
            with torch.no_grad():
                w.copy_(torch.from_numpy(dequantize(blocks, kind, (N, K))))
            attached.append((w, blocks, kind))
    calls = [0]
    quant = _core.linear_quant_cpu
    monkeypatch.setattr(_core, "linear_quant_cpu", lambda *a: (calls.__setitem__(0, calls[0] + 1), quant(*a))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plain = [_run(model, native, 4, 3, True, plan="rows") for native in (False, True)]
        for w, blocks, kind in attached:
            linear.attach_quantized(w, blocks, kind)
        eager = _run(model, False, 4, 3, True, plan="rows")
        assert calls[0] > 0  # the eager forward's decode rows read the blocks
        native = _run(model, True, 4, 3, True, plan="rows")
        step = native_decoder.for_model(model)
        assert step is not None and sum(any(t is linear.quantized_blocks(w)[0] for t in step.keep)
                                        for w, _, _ in attached) == len(attached)
    finally:
        torch.set_num_threads(before)
        for w, _, _ in attached:
            linear.detach_quantized(w)
    for outs, kv in (eager, native):
        for want_outs, want_kv in plain:
            assert all(_same_bits(a, b) for a, b in zip(outs, want_outs)) and _same_bits(kv, want_kv)
    assert all(t.dtype == torch.float32 for t in native_decoder.for_model(model).keep)  # rebuilt without blocks
