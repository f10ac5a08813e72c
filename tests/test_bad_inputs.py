"""Bad inputs to every public entry point: each row of tests/bad_input_cases.py must raise its
exception type with a message that matches its fragment (so it names the argument and the
value), and leave its target exactly as it was and still usable."""

import re

import numpy as np
import pytest
import torch
from bad_input_cases import CASES, FREED, RELEASED, STOP
from test_engine import make_engine, tiny_model

import ponder
from ponder.forest import Forest
from ponder.page_table import PageTable


@pytest.fixture(scope="module")
def model():
    # The tiny model's ops are far too small to split across threads; on a busy machine a second
    # intra-op thread made each forward 10-50x slower (measured 9 ms vs 0.1-1 s per expand).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_model()
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ targets: build, snapshot, use
def build_forest(_model):
    f = Forest()
    r0, r1 = f.add_root([1, 2]), f.add_root([3])
    kids = f.add_children([r0], [2], [0.6, 0.4], tokens=[4, 5], tokens_indptr=[0, 1, 2])
    f.add_children([kids[0]], [1], [1.0], tokens=[6], tokens_indptr=[0, 1], page_seqs=[7])
    f.release(int(kids[1]))
    f.add_children([r1], [1], [1.0], terminal=[True])
    f.backup([4], [0.5])
    assert (f.num_nodes, f.num_alive, RELEASED) == (6, 5, int(kids[1]))
    return f


def snapshot_forest(f):
    return {"sizes": (f.num_nodes, f.num_alive, f.num_tokens), **f.export()}


def use_forest(f):
    kid = f.add_children([0], [1], [0.5])
    assert f.select([0, 1], 2, 1.0, 1.0, 0.0).shape == (2, 2)
    assert f.path_tokens(int(kid[0])).tolist() == [1, 2]


def build_table(_model):
    t = PageTable(8, 4)
    a, _, _ = t.allocate([1, 2, 3, 4, 5, 6])
    t.fork(a)
    c, _, _ = t.allocate([7])
    t.free(c)
    assert c == FREED
    return t


def snapshot_table(t):
    live = t.live_seqs().tolist()
    return {"stats": t.stats(), "refcounts": t.refcounts(), "free": t.free_pages(), "evictable": t.evictable_pages(),
            "live": live, "pages": [t.pages(s).tolist() for s in live], "tokens": [t.num_tokens(s) for s in live]}


def use_table(t):
    s, _, _ = t.allocate([1, 2, 3, 4, 9])
    t.append([s, t.fork(s)], [1, 1], [1, 2])


def build_engine(model):
    e = make_engine(model, num_pages=32, page_size=4)
    e.prefill(["ab\n", "cd"])
    e.free(e.fork([0]))
    assert e.handles().tolist() == [0, 1]
    return e


# Page-table counters that a failed call may move without changing what any sequence holds: a
# search that ran rounds before failing leaves its freed pages in the prefix cache (free ->
# evictable) and raises the peak.
CACHE_HISTORY = ("free", "cached", "evictable", "peak_used", "prefix_queries", "prefix_hits")


def snapshot_engine(e):
    h = e.handles()
    pt = e.page_table
    st = pt.stats()
    live = pt.live_seqs()
    return {"stats": {k: v for k, v in st.items() if k not in CACHE_HISTORY}, "available": st["free"] + st["evictable"],
            "num_sequences": e.num_sequences, "handles": h, "has_kv": e.has_kv(h), "tokens": [e.tokens(int(s)) for s in h],
            "hidden": e.hidden(h), "refcounts": pt.refcounts(), "live": live, "pages": [pt.pages(s) for s in live.tolist()]}


def use_engine(e):
    exp = e.expand([0, 1], num_children=2, stop=STOP, seed=3)
    assert len(exp.children) == 4
    e.free(exp.children)


def build_kv(_model):
    torch.manual_seed(0)
    return torch.randn(2, 2, 4, 4, 2, 8)


def use_kv(kv):
    ops = ponder.ops
    ops.copy_pages(kv, torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32))
    torch.testing.assert_close(kv[:, :, 1], kv[:, :, 0])


TARGETS = {
    "forest": (build_forest, snapshot_forest, use_forest),
    "table": (build_table, snapshot_table, use_table),
    "engine": (build_engine, snapshot_engine, use_engine),
    "kv": (build_kv, lambda kv: {"kv": kv.clone()}, use_kv),
    "none": (lambda _model: None, lambda _: {}, lambda _: None),
}


def assert_same(before, after, where):
    assert before.keys() == after.keys(), where
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f"{where}: {key} changed"
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"{where}: {key} changed")
        elif isinstance(a, list) and a and isinstance(a[0], np.ndarray):
            assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), f"{where}: {key} changed"
        else:
            assert a == b, f"{where}: {key} changed: {a!r} -> {b!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, model):
    build, snapshot, use = TARGETS[case.target]
    obj = build(model)
    before = snapshot(obj)
    with pytest.raises(case.exc, match=case.match):
        case.call(obj)
    assert_same(before, snapshot(obj), case.id)
    use(obj)


def test_table_covers_every_entry_point():
    """At least 150 rows, and rows for every target and the entry points the suite is about."""
    assert len(CASES) >= 150
    ids = " ".join(c.id for c in CASES)
    for name in ("Forest", "select", "add_children", "backup", "release", "top_k", "allocate", "fork", "append", "free",
                 "decode_step", "expand", "decode", "prefill", "evict", "score_continuations", "extend", "hidden", "tokens", "has_kv",
                 "search", "scorer", "verifier", "constraint", "token_beam_search", "StepStop", "SamplingParams",
                 "Budget", "MCTSConfig", "BeamConfig", "BestOfNConfig", "TokenBeamConfig", "Aggregation", "TokenPairPRM",
                 "Verifier", "StepConstraint", "ModelConfig", "DecoderLM", "load", "save_hf", "rms_norm", "rotary",
                 "copy_pages", "append_kv", "paged_attention", "sample", "value_score"):
        assert name in ids or name.lower() in ids, name


def test_evict_minus_one_keeps_the_last_sequence(model):
    """numpy would read handle -1 as the last one; the engine must refuse it and drop nothing."""
    e = build_engine(model)
    last = int(e.handles()[-1])
    with pytest.raises(ValueError, match=r"sequence handle -1 is unknown"):
        e.evict([-1])
    assert e.has_kv([last]).tolist() == [True]
    assert e.evict([last]) == 1


class PoisonedScorer:
    """Scores 0.5 for the children of every prompt but [1, 2]; when a call includes children of
    [1, 2] it answers ``answer(mask of those children)``."""

    def __init__(self, answer):
        self.answer = answer

    def score(self, policy, expansion):
        mine = np.array([policy.tokens(int(p))[:2].tolist() == [1, 2] for p in expansion.parents])
        return self.answer(mine) if mine.any() else np.full(mine.size, 0.5)


@pytest.mark.parametrize("answer, fragment", [
    (lambda mine: np.zeros(mine.size + 1), r"scorer PoisonedScorer failed for problem 0: ValueError: .* shape"),
    (lambda mine: np.where(mine, np.nan, 0.5), r"scorer PoisonedScorer failed for problem 0: ValueError: .* returned nan"),
    (lambda mine: np.where(mine, 1.5, 0.5), r"scorer PoisonedScorer failed for problem 0: ValueError: .* returned 1.5"),
    (lambda mine: "abc", r"scorer PoisonedScorer failed for problem 0: TypeError: .* returned str"),
])
def test_isolated_scorer_failure_fails_only_its_problem(model, answer, fragment):
    """With on_error="isolate" a scorer answering garbage for one problem fails that problem (its
    result carries the error), the other problem finishes, and releasing both frees every page."""
    e = build_engine(model)
    before = snapshot_engine(e)
    results = ponder.search([[1, 2], [3, 4]], e, scorer=PoisonedScorer(answer), budget=ponder.Budget(max_iterations=2),
                            stop=STOP, num_children=2, progress=False)
    assert results[0].stop_reason == "error"
    assert re.search(fragment, results[0].error), results[0].error
    assert results[1].stop_reason == "max_iterations" and results[1].error is None
    for r in results:
        r.release()
    assert_same(before, snapshot_engine(e), "after release")
