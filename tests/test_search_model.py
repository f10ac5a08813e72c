"""Every search algorithm end to end on a tiny random-weight model, determinism across batches,
and the scorers reading real hidden states."""

import numpy as np
import pytest
import torch

import ponder
from ponder import Budget, StepStop, TokenPairPRM
from ponder.search import STOP_REASONS
from test_engine import PROMPTS, CharTokenizer, full_hidden, tiny_model

STOP = StepStop(strings=("\n",), max_step_tokens=6)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def engine(model, pages=256):
    return ponder.Engine(model, CharTokenizer(), num_pages=pages, page_size=4)


def tree_signature(r):
    return r.nodes["tokens"], r.nodes["visits"], r.nodes["parent"], r.answer


@pytest.mark.parametrize("algorithm,opts", [
    ("mcts", dict(num_children=2, leaves_per_tree=2, budget=Budget(max_expansions=4))),
    ("beam_search", dict(width=2, expansion=2, max_steps=2)),
    ("best_of_n", dict(n=3, max_steps=2)),
])
def test_same_tree_alone_or_in_a_batch(model, algorithm, opts):
    alone = ponder.search([PROMPTS[1]], engine(model), algorithm=algorithm, stop=STOP, seed=5, progress=False, **opts)
    batch = ponder.search(PROMPTS, engine(model), algorithm=algorithm, stop=STOP, seed=5, progress=False, **opts)
    assert tree_signature(alone[0]) == tree_signature(batch[1])
    assert alone[0].stats["tokens_generated"] == batch[1].stats["tokens_generated"] > 0


def test_all_algorithms_with_value_head_and_verifier(model):
    eng = engine(model)
    ver = ponder.Verifier(lambda i, text: None if "\n" not in text else (text.count("a") > 0))
    for algo, opts in (("mcts", dict(budget=Budget(max_expansions=3), num_children=2)),
                       ("beam_search", dict(width=2, expansion=2, max_steps=2)),
                       ("best_of_n", dict(n=2, max_steps=2, selection="weighted_vote"))):
        rs = ponder.search(PROMPTS[:2], eng, algorithm=algo, stop=STOP, verifier=ver, progress=False, **opts)
        for r in rs:
            assert r.stop_reason in STOP_REASONS
            assert r.path[0] == 0 and r.answer == "".join(r.nodes["text"][i] for i in r.path[1:])
            assert r.stats["model_calls"] > 0
    assert eng.page_table.stats()["used"] > 0


def test_token_pair_prm_readouts(model):
    eng = engine(model)
    good, bad = 5, 9
    [root] = eng.prefill([PROMPTS[0]])
    exp = eng.expand([root], 2, stop=STOP)
    w = (model.embed if model.lm_head is None else model.lm_head).detach()
    direct = torch.sigmoid(exp.hidden.float() @ (w[good] - w[bad]).float()).numpy()
    np.testing.assert_allclose(TokenPairPRM(good, bad).score(eng, exp), direct, rtol=1e-6)
    # with a step tag the readout sits on the tag token, fed on throwaway forks of each child
    tagged = TokenPairPRM(good, bad, step_tag="!").score(eng, exp)
    for i, ch in enumerate(exp.children.tolist()):
        seq = eng.tokens(ch).tolist() + CharTokenizer().encode("!")
        h = full_hidden(model, seq)[0]
        np.testing.assert_allclose(tagged[i], torch.sigmoid(h @ (w[good] - w[bad])).item(), rtol=1e-4)
    used = eng.page_table.stats()["used"]
    TokenPairPRM(good, bad, step_tag="!").score(eng, exp)
    assert eng.page_table.stats()["used"] == used  # the forks were freed


def test_token_pair_prm_with_a_separate_scorer_model(model):
    prm_model = tiny_model(seed=1, value_head=False)
    prm_engine = ponder.Engine(prm_model, CharTokenizer(), num_pages=128, page_size=4)
    prm = TokenPairPRM(3, 4, step_tag="!", engine=prm_engine)
    [r] = ponder.beam_search([PROMPTS[0]], engine(model), scorer=prm, width=2, expansion=2, max_steps=2,
                             stop=STOP, progress=False)
    w = (prm_model.embed if prm_model.lm_head is None else prm_model.lm_head).detach()
    text = PROMPTS[0]
    node = r.path[1]
    seq = CharTokenizer().encode(text + r.nodes["text"][node] + "!")
    expected = torch.sigmoid(full_hidden(prm_model, seq)[0] @ (w[3] - w[4])).item()
    np.testing.assert_allclose(r.nodes["reward"][node], expected, rtol=1e-4)


def test_mirrored_scorer_kv_goes_with_the_policy_nodes(model):
    """The separate scorer's sequences follow the policy's: pruned beams and terminal nodes give
    back their scorer KV as well, and releasing a result frees every scorer sequence."""
    prm_engine = ponder.Engine(tiny_model(seed=1, value_head=False), CharTokenizer(), num_pages=256, page_size=4)
    policy = engine(model)
    prm = TokenPairPRM(3, 4, step_tag="!", engine=prm_engine)
    results = ponder.beam_search(PROMPTS[:2], policy, scorer=prm, width=2, expansion=3, max_steps=3, stop=STOP,
                                 progress=False)
    # every scorer sequence mirrors a live policy sequence, and the scorer keeps KV only where
    # the policy does (a beam pruned or expanded, or a terminal node, lost both)
    mirrored = {h: prm.mirror[h] for h in policy.handles().tolist()}
    assert sorted(mirrored.values()) == sorted(prm_engine.handles().tolist())
    for h, m in mirrored.items():
        assert prm_engine.has_kv([m])[0] <= policy.has_kv([h])[0]
    for r in results:
        r.release()
    assert policy.num_sequences == 0 and prm_engine.num_sequences == 0
    assert prm_engine.page_table.stats()["used"] == 0 and policy.page_table.stats()["used"] == 0
    with pytest.raises(ValueError, match="resumed"):
        results[0].resume(Budget(max_iterations=1))


@pytest.mark.parametrize("algorithm,opts", [
    ("mcts", dict(num_children=4, budget=Budget(max_expansions=6))),
    ("beam_search", dict(width=2, expansion=4, max_steps=2)),
])
def test_distinct_children_and_their_token_count(model, algorithm, opts):
    """Greedy decoding draws the same step every time: with distinct=True a node keeps one
    child per different step, and the dropped repeats still count as generated tokens."""
    greedy = ponder.SamplingParams(temperature=0.0)
    eng = engine(model)
    (r,) = ponder.search([PROMPTS[0]], eng, algorithm=algorithm, stop=STOP, sampling=greedy, distinct=True,
                         progress=False, **opts)
    parents = r.nodes["parent"]
    for node in range(len(parents)):
        kids = [tuple(r.nodes["tokens"][c]) for c in range(len(parents)) if parents[c] == node]
        assert len(kids) == len(set(kids)) <= 1  # greedy: one distinct step per node
    def draws(parent):  # children asked for at each expansion of parent
        if algorithm == "mcts":
            return opts["num_children"]
        return opts["width"] * opts["expansion"] if parent == 0 else opts["expansion"]

    # each node is expanded once, into `draws` copies of its one greedy step
    expected = sum(len(r.nodes["tokens"][c]) * draws(parents[c]) for c in range(1, len(parents)))
    assert eng.stats.extra["duplicate_children"] > 0
    assert r.stats["tokens_generated"] == expected
    (plain,) = ponder.search([PROMPTS[0]], engine(model), algorithm=algorithm, stop=STOP, sampling=greedy,
                             progress=False, **opts)
    assert len(plain.nodes["parent"]) > len(parents)  # without distinct the repeats become nodes


def test_mcts_refill_widens_where_the_search_is_stuck(model):
    """Steps are single tokens and every path ends after two steps as a failure. Without refill
    MCTS stops once every leaf is terminal; with refill it draws new steps at the ancestors of
    the failed leaves."""
    two_steps = ponder.Verifier(lambda i, text: None if len(text) < 2 else False)
    stop = StepStop(max_step_tokens=1)
    kw = dict(algorithm="mcts", stop=stop, verifier=two_steps, distinct=True, progress=False, num_children=2)
    (plain,) = ponder.search([PROMPTS[0]], engine(model), budget=Budget(max_expansions=12), **kw)
    assert plain.stop_reason == "exhausted"
    (refilled,) = ponder.search([PROMPTS[0]], engine(model), budget=Budget(max_expansions=12), refill=True, **kw)
    assert refilled.stop_reason == "max_expansions" and refilled.stats["expansions"] == 12
    root_kids = lambda r: sum(1 for p in r.nodes["parent"] if p == 0)  # noqa: E731
    assert root_kids(refilled) > root_kids(plain)
    # greedy draws repeat themselves: refills add nothing, so the nodes saturate and the search ends
    (greedy,) = ponder.search([PROMPTS[0]], engine(model), budget=Budget(max_expansions=50), refill=True,
                              sampling=ponder.SamplingParams(temperature=0.0), **kw)
    assert greedy.stop_reason == "exhausted"
    assert greedy.stats["expansions"] == 4  # root, child, then one fruitless refill each
    # a node whose children already hold refill_coverage of the policy's mass is not refilled
    (covered,) = ponder.search([PROMPTS[0]], engine(model), budget=Budget(max_expansions=12), refill=True,
                               refill_coverage=1e-9, **kw)
    assert covered.stop_reason == "exhausted"
    assert covered.stats["expansions"] == plain.stats["expansions"]


def test_problems_join_a_live_session_and_can_be_cancelled(model):
    """Session.add mid-search: the newcomer joins the next batched round and is searched exactly
    as it would be alone; Session.cancel ends one problem and frees its KV."""
    from ponder.search.mcts import MCTS, MCTSConfig
    from ponder.scoring import ValueHead

    eng = engine(model)
    session = MCTS(eng, ValueHead(), MCTSConfig(num_children=2), stop=STOP, seed=3, progress=False)
    budget = Budget(max_expansions=4)
    session.start(PROMPTS[:1], budget)
    session.step()
    (late,) = session.add(PROMPTS[1:2], budget)
    (gone,) = session.add(PROMPTS[2:3], budget)
    assert late.index == 1 and gone.index == 2
    calls = eng.stats.model_calls
    session.step()
    # one batched expansion covered all three trees: at most one forward per step token
    assert eng.stats.model_calls - calls <= STOP.max_step_tokens + 1
    session.cancel(gone)
    assert gone.stop_reason == "cancelled" and not session.forest.is_alive(gone.root)
    session.run()
    [alone] = ponder.mcts(PROMPTS[1:2], engine(model), budget=budget, num_children=2, stop=STOP, seed=3,
                          progress=False)
    assert session.result(late).nodes["tokens"] == alone.nodes["tokens"]
    for t in session.trees[:2]:
        session.release(t)
    assert eng.num_sequences == 0 and eng.page_table.stats()["used"] == 0
