"""``Engine(dedup_rows=...)``: siblings that have drawn the same tokens so far run the model
once per group, with the same results to the bit as running every row."""

import numpy as np
import pytest
import torch

from ponder import kv_store, ops
from ponder.engine import SamplingParams, StepStop
from test_engine import ALPHABET, PROMPTS, make_engine, tiny_model

STOP = StepStop(strings=("\n",), max_step_tokens=10)


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_pos=512)


def _three_levels(eng, prompts, sampling, allowed=None, distinct=False):
    """Expand the prompts, then up to 6 live children, then up to 8 grandchildren."""
    out = []
    parents = eng.prefill(prompts)
    for width, seed in ((6, 11), (3, 12), (2, 13)):
        steps = None if allowed is None else [allowed] * len(parents)
        exp = eng.expand(parents, width, stop=STOP, sampling=sampling, seed=seed, distinct=distinct,
                         allowed_steps=steps)
        out.append(exp)
        parents = exp.children[~exp.terminal][:8]
        if not parents.size:
            break
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [t.tolist() for t in x.tokens] == [t.tolist() for t in y.tokens]
        for p, q in zip(x.logprobs, y.logprobs):
            assert np.array_equal(p, q)
        assert torch.equal(x.hidden, y.hidden)
        assert x.finish_reasons == y.finish_reasons
        assert np.array_equal(x.priors, y.priors)
        assert x.discarded_tokens == y.discarded_tokens


STEPS = [[ALPHABET.index(c) for c in s] for s in ("ab\n", "abc\n", "ad\n", "b\n", "bb\n", "ba\n")]


@pytest.mark.parametrize("temperature", [0.0, 0.7, 3.0])
@pytest.mark.parametrize("constrained", [False, True], ids=["free", "allowed_steps"])
def test_dedup_gives_the_same_expansions_as_every_row(model, temperature, constrained, monkeypatch):
    sampling = SamplingParams(temperature=temperature)
    allowed = STEPS if constrained else None
    plain = make_engine(model, num_pages=256, dedup_rows=False)
    deduped = make_engine(model, num_pages=256)
    assert deduped.dedup_rows and not plain.dedup_rows
    a = _three_levels(plain, PROMPTS, sampling, allowed, distinct=temperature > 0)
    shared_calls = []  # rows of a group draw from one logits row unless a per-row mask applies
    real = ops.sample_shared
    monkeypatch.setattr(ops, "sample_shared", lambda *a, **kw: (shared_calls.append(a[1].numel()), real(*a, **kw))[1])
    b = _three_levels(deduped, PROMPTS, sampling, allowed, distinct=temperature > 0)
    assert bool(shared_calls) != constrained
    _assert_same(a, b)
    assert plain.stats.decode_rows_shared == 0
    assert deduped.stats.decode_rows_shared > 0  # siblings really shared rows
    assert deduped.stats.tokens_decoded == plain.stats.tokens_decoded
    assert deduped.stats.model_calls == plain.stats.model_calls


@pytest.mark.parametrize("mode", ["cut-plan", "all-rows", "all-rows-perturbed"])
def test_a_step_through_an_attention_plan_keeps_only_equal_rows_together(model, monkeypatch, mode):
    """A plan's items depend on the pages rows share, so rows with the same keys can round
    differently. With the native CPU kernel ("cut-plan") the first rows attend through the plan
    cut down to them, after rows whose items differ left their groups. With another attention
    implementation ("all-rows") every row attends, and rows whose hidden state or K/V then differ
    from their group's first row's leave the group; with "all-rows-perturbed", row 1 of every
    planned step gets another hidden state (in both engines), as another rounding would give
    it. Here the first step of every expand call goes through a plan."""
    from ponder.kv_store import KVStore

    perturb = mode == "all-rows-perturbed"
    if mode != "cut-plan":
        monkeypatch.setattr(KVStore, "_native_plan_attention", lambda self: False)
    marks = []  # per forward: "P" plan, "g" row groups, "." neither; "|" starts an expand call
    real = model.forward

    def spy(*args, decode_plan=None, row_groups=None, **kw):
        marks.append("P" if decode_plan is not None else "g" if row_groups is not None else ".")
        out = real(*args, decode_plan=decode_plan, row_groups=row_groups, **kw)
        if perturb and decode_plan is not None and out.shape[0] > 1:
            out[1] *= 1.01
        return out

    monkeypatch.setattr(model, "forward", spy)
    sampling = SamplingParams(temperature=0.3)
    prompt = ["what is 3+4? think step by step, then answer.\n" * 3]
    results = []
    for dedup in (False, True):
        eng = make_engine(model, num_pages=256, dedup_rows=dedup)
        expand, decode_step = eng.expand, eng.page_table.decode_step

        def expand_marked(*args, **kw):
            marks.append("|")
            return expand(*args, **kw)

        def plan_first_step_only(seqs, tokens, min_saving, **kw):
            return decode_step(seqs, tokens, 0 if marks[-1] == "|" else -1, **kw)

        monkeypatch.setattr(eng, "expand", expand_marked)
        monkeypatch.setattr(eng.page_table, "decode_step", plan_first_step_only)
        marks.clear()
        results.append(_three_levels(eng, prompt, sampling))
    _assert_same(*results)
    calls = "".join(marks).split("|")[1:]
    assert all(c.startswith("P") for c in calls)
    assert any(c.startswith("Pg") for c in calls)  # equal rows stay grouped after the plan step
    assert eng.stats.decode_rows_shared > 0


def test_rows_apart_finds_any_differing_bit():
    from ponder.kv_store import rows_apart

    torch.manual_seed(0)
    L, P, S, Hk, D, C = 3, 4, 4, 2, 5, 7
    kv = torch.randn(L, 2, P, S, Hk, D)
    slots = np.array([1, 6, 9, 14, 3])  # five rows, their K/V slots (page * S + offset)
    flat = kv.view(L, 2, P * S, Hk, D)
    flat[:, :, 6] = flat[:, :, 1]  # rows 0, 1, 3 form a group with equal K/V; rows 2, 4 another
    flat[:, :, 14] = flat[:, :, 1]
    flat[:, :, 3] = flat[:, :, 9]
    hidden = torch.randn(5, C)
    hidden[1] = hidden[3] = hidden[0]
    hidden[4] = hidden[2]
    groups = (np.array([0, 2]), np.array([0, 0, 1, 0, 1]))
    assert rows_apart(hidden, kv, slots, groups).tolist() == []
    h = hidden.clone()
    h[3, 6] = torch.nextafter(h[3, 6], torch.tensor(9.0))  # one ulp
    assert rows_apart(h, kv, slots, groups).tolist() == [3]
    for layer, kind in ((0, 0), (2, 1)):  # a K in the first layer, a V in the last
        k = kv.clone()
        k.view(L, 2, P * S, Hk, D)[layer, kind, 3, 1, 4] += 1e-6
        assert rows_apart(hidden, k, slots, groups).tolist() == [4]
    h = hidden.clone()
    h[[0, 1], 2] = float("nan")  # NaN never equals itself; a group's first row always stays
    assert rows_apart(h, kv, slots, groups).tolist() == [1, 3]


def test_dedup_rows_option_is_checked(model):
    class NoGroups(torch.nn.Module):  # the model interface without row_groups
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        @property
        def kv_bytes_per_token(self):
            return self.inner.kv_bytes_per_token

        def allocate_kv_cache(self, *a, **k):
            return self.inner.allocate_kv_cache(*a, **k)

        def logits(self, hidden):
            return self.inner.logits(hidden)

        def forward(self, *args, decode_plan=None, **kw):
            return self.inner(*args, decode_plan=decode_plan, **kw)

    wrapped = NoGroups(model)
    assert not make_engine(wrapped).dedup_rows  # default: on only where the model can
    with pytest.raises(TypeError, match="dedup_rows=True needs a model whose forward takes row_groups"):
        make_engine(wrapped, dedup_rows=True)
    with pytest.raises(TypeError, match="dedup_rows must be None, True or False, got 'yes'"):
        make_engine(model, dedup_rows="yes")
    # the wrapped model still expands, row by row
    eng = make_engine(wrapped)
    exp = eng.expand(eng.prefill(PROMPTS[:1]), 3, stop=STOP, sampling=SamplingParams(temperature=0.0))
    assert exp.tokens[0].tolist() == exp.tokens[1].tolist() and eng.stats.decode_rows_shared == 0


def test_distinct_count_matches_np_unique():
    rng = np.random.default_rng(0)
    cases = [np.zeros(0, np.int32), np.array([7], np.int32), np.array([[3, 3], [1, 3]], np.int32),
             rng.integers(0, 40, size=500).astype(np.int32), np.arange(100, dtype=np.int64)[::-1]]
    for a in cases:
        assert kv_store._distinct_count(a) == np.unique(a).size
