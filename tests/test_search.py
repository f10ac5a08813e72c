"""Search algorithms: golden trees with a deterministic fake policy, budgets, results, bad input."""

import json

import numpy as np
import pytest

import ponder
from fake_policy import FakePolicy
from ponder import Budget, Verifier


def by_path(fake, result):
    """{index path: node index in result.nodes} for a FakePolicy search result (child j of a
    node holds the single token j + 1)."""
    paths = [()]
    for i in range(1, len(result.nodes["parent"])):
        paths.append(paths[result.nodes["parent"][i]] + (result.nodes["tokens"][i][0] - 1,))
    return {p: i for i, p in enumerate(paths)}


def test_mcts_golden_tree():
    fake = FakePolicy(by_index=(0.2, 0.8))
    [r] = ponder.mcts(["1"], fake, budget=Budget(max_iterations=4), num_children=2, c_puct=0.0, progress=False)
    idx = by_path(fake, r)
    visits = {p: r.nodes["visits"][i] for p, i in idx.items()}
    # Hand-traced with c_puct = 0 (greedy on Q): round 1 expands the root, rounds 2-3 follow the
    # 0.8 child down, round 4 selects the terminal 0.8 leaf and backs its score up again.
    assert visits == {(): 7, (0,): 1, (1,): 6, (1, 0): 1, (1, 1): 4, (1, 1, 0): 1, (1, 1, 1): 2}
    assert r.answer == "222" and r.answer_tokens == [2, 2, 2]
    assert r.stop_reason == "max_iterations"
    assert r.stats["expansions"] == 3 and r.stats["iterations"] == 4
    np.testing.assert_allclose(r.nodes["value"][idx[(1,)]], 3.6 / 6, rtol=1e-6)
    np.testing.assert_allclose(r.nodes["value"][idx[()]], 3.8 / 7, rtol=1e-6)


def test_mcts_virtual_loss_spreads_leaves_in_one_round():
    fake = FakePolicy(by_index=(0.2, 0.8))
    ponder.mcts(["1"], fake, budget=Budget(max_iterations=2), num_children=2, leaves_per_tree=2, c_puct=0.0,
                virtual_loss=1.0, progress=False)
    root, a0, a1 = 0, 1, 2  # engine handles: the prompt, then the root's two children
    # round 1: the second descent meets the pending root and stops; round 2: the first descent
    # takes the 0.8 child, whose virtual loss then makes Q = (0.8 - 1) / 2 < 0.2, so the second
    # descent takes the other child: both are expanded in one batched call.
    assert fake.expanded == [[root], [a1, a0]]


def test_beam_search_golden_tree_and_pruning():
    fake = FakePolicy(by_index=(0.1, 0.9, 0.5, 0.3))
    [r] = ponder.beam_search(["1"], fake, width=2, expansion=2, aggregation="min", progress=False)
    idx = by_path(fake, r)
    # round 1: 4 children, keep (1,) 0.9 and (2,) 0.5; round 2: each gets (.,0)=0.1 and (.,1)=0.9,
    # keep min-aggregated (1,1)=0.9 and (2,1)=0.5; round 3 completes 4 terminal paths.
    assert [fake.index_path(n) for n in fake.expanded[1]] == [(1,), (2,)]
    assert [fake.index_path(n) for n in fake.expanded[2]] == [(1, 1), (2, 1)]
    assert r.answer_tokens == [2, 2, 2]
    np.testing.assert_allclose(r.score, 0.9, rtol=1e-6)
    assert r.stop_reason == "exhausted"
    evicted = {fake.index_path(n) for n in fake.evicted}
    assert {(0,), (3,), (1, 0), (2, 0)} <= evicted  # pruned candidates gave their KV back
    assert idx[(1, 1, 1)] in r.path


def test_dvts_keeps_independent_subtrees():
    fake = FakePolicy(by_index=(0.9, 0.8, 0.1, 0.2))
    [r] = ponder.beam_search(["1"], fake, width=1, expansion=2, num_subtrees=2, progress=False)
    # the root's 4 children form 2 subtrees {(0,), (1,)} and {(2,), (3,)}; each keeps its best
    assert [fake.index_path(n) for n in fake.expanded[1]] == [(0,), (3,)]


@pytest.mark.parametrize("selection,expected", [("score", "1"), ("vote", "3"), ("weighted_vote", "1")])
def test_best_of_n_selection(selection, expected):
    fake = FakePolicy(by_index=(0.9, 0.1, 0.2, 0.3), max_depth=1)
    [r] = ponder.best_of_n(["1"], fake, n=4, selection=selection, progress=False,
                           answer_fn=lambda text: "A" if text in ("2", "3") else text)
    # chains "1" .9, "2" .1, "3" .2, "4" .3; vote: "A" (= "2", "3") wins 2:1:1 -> its best chain "3"
    assert r.answer == expected


def test_best_of_n_chains_run_to_the_end():
    fake = FakePolicy(by_index=(0.5,), max_depth=3)
    [r] = ponder.best_of_n(["1"], fake, n=3, progress=False)
    assert r.stop_reason == "exhausted" and r.stats["tokens_generated"] == 3 * 3
    assert [len(x) for x in fake.expanded] == [1, 3, 3]


@pytest.mark.parametrize(
    "budget,reason",
    [
        (Budget(max_iterations=2), "max_iterations"),
        (Budget(max_expansions=2, max_iterations=50), "max_expansions"),
        (Budget(max_tokens=3, max_iterations=50), "max_tokens"),
        (Budget(max_seconds=1e-9), "max_seconds"),
        (Budget(max_iterations=50, converge_tol=0.0, converge_patience=2), "converged"),
    ],
)
def test_each_budget_criterion_stops_with_its_reason(budget, reason):
    # equal scores keep the root value fixed, so only the answer can move (convergence case)
    fake = FakePolicy(by_index=(0.5, 0.5), max_depth=2) if reason == "converged" else FakePolicy(max_depth=6)
    [r] = ponder.mcts(["1"], fake, budget=budget, num_children=2, c_puct=0.0, progress=False)
    assert r.stop_reason == reason
    if reason == "max_expansions":
        assert r.stats["expansions"] == 2
    if reason == "max_tokens":
        assert r.stats["tokens_generated"] == 4  # 2 tokens per round; stops once >= 3


def test_kv_bytes_budget():
    fake = FakePolicy()
    fake.kv_stats = lambda: {"kv_bytes_in_use": 10_000, "kv_bytes_peak": 10_000, "tokens_prefilled": 0}
    [r] = ponder.mcts(["1"], fake, budget=Budget(max_iterations=9, max_kv_bytes=4096), num_children=2, progress=False)
    assert r.stop_reason == "max_kv_bytes" and r.stats["iterations"] == 1


def test_stop_on_verified_and_exhausted():
    fake = FakePolicy(by_index=(0.2, 0.8), max_depth=5)
    ver = Verifier(lambda i, text: True if text.endswith("22") else None)
    [r] = ponder.mcts(["1"], fake, budget=Budget(max_iterations=20, stop_on_verified=True), verifier=ver,
                      num_children=2, c_puct=0.0, progress=False)
    assert r.stop_reason == "verified" and r.verified and r.answer == "22"
    fake2 = FakePolicy(max_depth=1)
    [r2] = ponder.mcts(["1"], fake2, budget=Budget(max_iterations=20), num_children=2, progress=False)
    assert r2.stop_reason == "exhausted"


def test_resume_continues_the_same_tree():
    fake = FakePolicy(by_index=(0.2, 0.8), max_depth=6)
    [r] = ponder.mcts(["1"], fake, budget=Budget(max_iterations=2), num_children=2, c_puct=0.0, progress=False)
    r2 = r.resume(Budget(max_iterations=3))
    assert r2.nodes["visits"][0] > r.nodes["visits"][0]
    assert len(r2.nodes["parent"]) > len(r.nodes["parent"])
    assert r2.score >= r.score
    assert r2.stats["iterations"] == 3


def test_json_round_trip_dot_and_training_examples():
    fake = FakePolicy(by_index=(0.2, 0.8))
    [r] = ponder.mcts(["1"], fake, budget=Budget(max_iterations=4), num_children=2, c_puct=0.0, progress=False)
    back = ponder.SearchResult.from_json(r.to_json())
    assert back.to_json() == r.to_json() and back.nodes == r.nodes and back.path == r.path
    with pytest.raises(ValueError, match="only a live search can be resumed"):
        back.resume(Budget(max_iterations=1))
    with pytest.raises(ValueError, match="missing"):
        ponder.SearchResult.from_json(json.dumps({"answer": "x"}))
    dot = r.to_dot()
    assert dot.startswith("digraph") and dot.count("->") == len(r.nodes["parent"]) - 1
    ex = r.training_examples()
    root_target = [p for p in ex["policy"] if p["prefix"] == "1"][0]
    np.testing.assert_allclose(root_target["target"], [1 / 7, 6 / 7])
    assert any(p["chosen"] == "2" and p["rejected"] == "1" for p in ex["preferences"])
    assert len(ex["values"]) == 6


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(prompts=[]), ValueError, "prompts is empty"),
        (dict(algorithm="beam_search", width=0), ValueError, "width must be an int >= 1"),
        (dict(num_children=0), ValueError, r"num_children must be an int in \[1, 65536\]"),
        (dict(algorithm="bfs"), ValueError, "unknown algorithm"),
        (dict(config=ponder.MCTSConfig(), num_children=2), ValueError, "conflicting options"),
        (dict(width=2), TypeError, "unknown option"),
        (dict(budget=None), ValueError, "mcts needs a budget"),
        (dict(aggregation="median"), ValueError, "aggregation mode"),
        (dict(aggregation=ponder.Aggregation("min"), token_cost=0.1), ValueError, "conflicting options"),
        (dict(seed=-3), ValueError, "seed must be"),
        (dict(refill=1), ValueError, "refill must be a bool"),
        (dict(refill_coverage=0.0), ValueError, "refill_coverage must lie in"),
        (dict(constraint="digits"), TypeError, "constraint must be callable"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(prompts=["1"], algorithm="mcts", budget=Budget(max_iterations=1), progress=False)
    args.update(kwargs)
    prompts = args.pop("prompts")
    with pytest.raises(exc, match=match):
        ponder.search(prompts, FakePolicy(), **args)


def test_budget_that_can_never_stop_is_refused():
    with pytest.raises(ValueError, match="can never stop"):
        Budget(converge_tol=0.01, converge_patience=3, stop_on_verified=True)
    with pytest.raises(ValueError, match="go together"):
        Budget(max_iterations=3, converge_tol=0.1)


def test_root_dirichlet_noise_is_seeded_and_keeps_a_distribution():
    def priors(seed):
        fake = FakePolicy(by_index=(0.5,), max_depth=4)
        [r] = ponder.mcts(["12"], fake, budget=Budget(max_iterations=1), num_children=4, dirichlet_alpha=0.3,
                          dirichlet_eps=0.5, seed=seed, progress=False)
        return np.asarray(r.nodes["prior"])[np.asarray(r.nodes["parent"]) == 0]

    p0 = priors(0)
    np.testing.assert_allclose(p0.sum(), 1.0, rtol=1e-5)
    assert not np.allclose(p0, 0.25)  # the fake's priors are uniform; the noise moved them
    np.testing.assert_array_equal(p0, priors(0))
    assert not np.array_equal(p0, priors(1))
