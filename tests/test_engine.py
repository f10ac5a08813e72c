"""Engine: batched expansion on the shared paged KV cache, checked against plain full-sequence
recomputation with the same model (no paging, no forks, no copy-on-write)."""

import numpy as np
import pytest
import torch

from ponder.engine import Engine, SamplingParams, StepStop
from ponder.models import DecoderLM, ModelConfig
from ponder.ops import reference
from ponder.page_table import KVCacheFull
from ponder.scoring import ValueHead

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,;:!?\n0123456789+-*/=()ABCDEFGHIJKLMN"
NEWLINE = ALPHABET.index("\n")
EOS = 0


class CharTokenizer:
    def encode(self, text):
        return [ALPHABET.index(c) for c in text]

    def decode(self, ids):
        return "".join(ALPHABET[int(i)] for i in ids)


def tiny_model(seed=0, vocab=len(ALPHABET), layers=2, heads=4, kv_heads=2, head_dim=8, max_pos=256, value_head=True):
    cfg = ModelConfig(vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=48, num_layers=layers,
                      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, max_position_embeddings=max_pos,
                      eos_token_id=EOS)
    torch.manual_seed(seed)
    # std 0.3 (instead of 0.02) makes the random model's next-token distributions peaked enough
    # that steps end at newlines within a few tokens, like a real step-structured policy.
    model = DecoderLM(cfg, value_head=value_head, init_std=0.3)
    model.eval()
    return model


def full_hidden(model, tokens):
    """Last-position hidden state of ``tokens`` by one plain prefill into a private cache."""
    n = len(tokens)
    S = 16
    num_pages = (n + S - 1) // S
    kv = model.allocate_kv_cache(num_pages, S)
    with torch.inference_mode():
        h = model(torch.tensor(tokens, dtype=torch.int64), torch.arange(n), kv, torch.arange(n),
                  torch.arange(num_pages, dtype=torch.int32)[None], torch.tensor([n], dtype=torch.int32),
                  torch.tensor([0, n], dtype=torch.int32))
    return h[-1:]


def reference_step(model, path, parent, child_index, seed, stop, sampling, tok=CharTokenizer()):
    """Sample one step token by token, recomputing the whole sequence each time."""
    seq = list(path)
    out, lps = [], []
    while True:
        logits = model.logits(full_hidden(model, seq))
        key = torch.tensor([[seed, parent, child_index, len(seq)]], dtype=torch.int64)
        t, lp = reference.sample(logits, key, torch.tensor([sampling.temperature], dtype=torch.float32),
                                 torch.tensor([sampling.top_k], dtype=torch.int32),
                                 torch.tensor([sampling.top_p], dtype=torch.float32))
        t = int(t)
        out.append(t)
        lps.append(float(lp))
        seq.append(t)
        if t == EOS:
            return out, lps, "eos"
        if any(s in tok.decode(out) for s in stop.strings) or t in stop.token_ids:
            return out, lps, "stop"
        if len(out) >= stop.max_step_tokens:
            return out, lps, "length"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def make_engine(model, num_pages=64, page_size=4, **kw):
    return Engine(model, CharTokenizer(), num_pages=num_pages, page_size=page_size, **kw)


PROMPTS = ["what is 3+4?\n", "solve: 7*6=\nfirst ", "a"]
STOP = StepStop(strings=("\n",), max_step_tokens=12)


def test_expand_matches_full_recomputation(model):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS)
    sampling = SamplingParams(temperature=1.0)
    exp = eng.expand(roots, num_children=3, stop=STOP, sampling=sampling, seed=7)
    assert len(exp.children) == 9
    assert len(set(tuple(t) for t in exp.tokens)) > 3  # sampling actually branches
    tok = CharTokenizer()
    for i, (p, ch) in enumerate(zip(exp.parents.tolist(), exp.children.tolist())):
        path = eng.tokens(p).tolist()
        ref_tokens, ref_lps, reason = reference_step(model, path, p, i % 3, 7, STOP, sampling)
        assert exp.tokens[i].tolist() == ref_tokens
        # fp32 paged vs one-shot attention differ only in summation order: ~1e-6 relative
        np.testing.assert_allclose(exp.logprobs[i], ref_lps, rtol=1e-4, atol=1e-4)
        assert exp.finish_reasons[i] == reason
        assert eng.tokens(ch).tolist() == path + ref_tokens
        # the stored hidden state is the one at the step's last token
        torch.testing.assert_close(exp.hidden[i], full_hidden(model, path + ref_tokens)[0], rtol=1e-4, atol=1e-5)
        if reason == "stop":
            assert tok.decode(ref_tokens).endswith("\n")


def test_second_level_expansion_and_priors(model):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS[:2])
    first = eng.expand(roots, num_children=2, stop=STOP, seed=1)
    live = [c for c, t in zip(first.children.tolist(), first.terminal.tolist()) if not t]
    second = eng.expand(live, num_children=2, stop=STOP, seed=1)
    for i, (p, ch) in enumerate(zip(second.parents.tolist(), second.children.tolist())):
        path = eng.tokens(p).tolist()
        ref_tokens, _, _ = reference_step(model, path, p, i % 2, 1, STOP, SamplingParams())
        assert second.tokens[i].tolist() == ref_tokens
    priors = second.priors
    for p in set(second.parents.tolist()):
        np.testing.assert_allclose(priors[second.parents == p].sum(), 1.0, rtol=1e-5)


def test_batch_composition_does_not_change_a_branch(model):
    together = make_engine(model)
    rs = together.prefill(PROMPTS)
    b = together.expand(rs[::-1], num_children=[1, 3, 2], stop=STOP, seed=3)
    # sampling keys use the handle, so the lone run keeps PROMPTS[1] at handle 1 as well
    same_id = make_engine(model)
    same_id.prefill([PROMPTS[0]])
    r1 = same_id.prefill([PROMPTS[1]])
    c = same_id.expand(r1, num_children=2, stop=STOP, seed=3)
    mine = [t.tolist() for p, t in zip(b.parents.tolist(), b.tokens) if p == int(rs[1])]
    assert mine[:2] == [t.tolist() for t in c.tokens]


def test_greedy_children_are_identical(model):
    eng = make_engine(model)
    roots = eng.prefill([PROMPTS[0]])
    exp = eng.expand(roots, num_children=3, stop=STOP, sampling=SamplingParams(temperature=0.0))
    assert exp.tokens[0].tolist() == exp.tokens[1].tolist() == exp.tokens[2].tolist()


def test_branches_finish_independently_and_kv_is_shared(model):
    eng = make_engine(model, num_pages=256, page_size=4)
    prompt = list(range(1, 41))  # 40 tokens = 10 full pages
    roots = eng.prefill([prompt])
    stop = StepStop(strings=(), max_step_tokens=9, stop_on_eos=False)
    exp = eng.expand(roots, num_children=8, stop=stop, seed=0)
    assert all(len(t) == 9 for t in exp.tokens)
    st = eng.kv_stats()
    # prefix once (10 pages) + per branch ceil(9/4) = 3 own pages; never 8 * (10 + 3)
    assert st["used"] == 10 + 8 * 3
    assert eng.stats.tokens_prefilled == 40
    assert eng.stats.tokens_decoded == 8 * 9

    lengths = StepStop(strings=("\n",), max_step_tokens=30)
    eng2 = make_engine(model, num_pages=256)
    r2 = eng2.prefill(PROMPTS)
    e2 = eng2.expand(r2, num_children=4, stop=lengths, seed=5)
    # every branch fed exactly its own tokens: a finished branch never waits on a slow sibling
    assert eng2.stats.tokens_decoded == sum(len(t) for t in e2.tokens)
    assert len({len(t) for t in e2.tokens}) > 1


def test_eviction_and_reprefill_give_identical_results(model):
    stop = StepStop(strings=("\n",), max_step_tokens=10)
    big = make_engine(model, num_pages=512)
    small = make_engine(model, num_pages=40)  # peak need with 512 pages is 67 (measured)
    results = []
    for eng in (big, small):
        roots = eng.prefill(PROMPTS)
        frontier = list(roots)
        levels = []
        for _ in range(3):
            exp = eng.expand(frontier, num_children=2, stop=stop, seed=11)
            levels.append([t.tolist() for t in exp.tokens])
            frontier = [c for c, t in zip(exp.children.tolist(), exp.terminal.tolist()) if not t][:4]
        results.append(levels)
    assert results[0] == results[1]
    assert small.stats.evicted_sequences > 0 and big.stats.evicted_sequences == 0
    # expand sequences whose KV was evicted: they are re-prefilled from their tokens
    evicted = [h for h in small.handles().tolist() if not small.has_kv([h])[0]]
    assert evicted
    a = big.expand(evicted[:3], num_children=2, stop=stop, seed=12)
    b = small.expand(evicted[:3], num_children=2, stop=stop, seed=12)
    assert small.stats.reprefilled_sequences >= 1
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
    torch.testing.assert_close(a.hidden, b.hidden, rtol=1e-4, atol=1e-5)  # fp32, batch order only


def test_kv_cache_full_when_nothing_can_be_evicted(model):
    eng = make_engine(model, num_pages=12, page_size=4)
    roots = eng.prefill([list(range(1, 30))])  # 8 pages for the prompt
    stop = StepStop(strings=(), max_step_tokens=40, stop_on_eos=False)
    before = eng.page_table.stats()
    with pytest.raises(KVCacheFull, match="12 pages"):
        eng.expand(roots, num_children=4, stop=stop)
    # nothing lost: no children, the pool as before (the root itself is protected while it is
    # expanded)
    assert eng.num_sequences == 1
    assert eng.page_table.stats()["used"] == before["used"]
    exp = eng.expand(roots, num_children=1, stop=StepStop(strings=(), max_step_tokens=3, stop_on_eos=False))
    assert len(exp.tokens[0]) == 3


def test_value_head_scores_each_child(model):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS[:1])
    exp = eng.expand(roots, num_children=2, stop=STOP)
    assert exp.values is None  # the engine leaves scoring to the scorer
    scores = ValueHead().score(eng, exp)  # one fused ops.value_score call
    assert scores.shape == (2,)
    # fp32: the fused op and the model's own head differ in summation order only (~1e-7)
    np.testing.assert_allclose(scores, model.value(exp.hidden).float().numpy(), rtol=1e-5, atol=1e-6)
    assert np.all((scores > 0) & (scores < 1))


def test_free_returns_pages(model):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS)
    exp = eng.expand(roots, num_children=2, stop=STOP)
    eng.free(exp.children)
    eng.free(roots)
    assert eng.num_sequences == 0
    st = eng.page_table.stats()
    assert st["used"] == 0 and st["free"] + st["evictable"] == st["num_pages"]


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda e, r: e.prefill([]), ValueError, "prompts is empty"),
        (lambda e, r: e.prefill([[]]), ValueError, "prompts\\[0\\] is empty"),
        (lambda e, r: e.prefill([list(range(1, 60)) * 5]), ValueError, "context is 256"),
        (lambda e, r: e.prefill([[999]]), ValueError, rf"outside \[0, {len(ALPHABET)}\)"),
        (lambda e, r: e.expand([12345], 1), ValueError, "handle 12345 is unknown"),
        (lambda e, r: e.expand(r, 0), ValueError, "num_children must be integers >= 1"),
        (lambda e, r: e.expand(r, 1, stop=StepStop(strings=("",))), ValueError, "non-empty"),
        (lambda e, r: e.expand([], 1), ValueError, "seqs is empty"),
        (lambda e, r: e.expand(r, 1, seed=-1), ValueError, "seed must be"),
        (lambda e, r: SamplingParams(top_p=0.0), ValueError, "top_p"),
    ],
)
def test_bad_input_is_refused_and_engine_stays_usable(model, call, exc, match):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS[:1])
    with pytest.raises(exc, match=match):
        call(eng, roots)
    exp = eng.expand(roots, num_children=1, stop=STOP)
    assert len(exp.children) == 1


class TemplatedTokenizer(CharTokenizer):
    """A chat template that wraps the user's text as "(" + text + ")\n"."""

    chat_template = "(...)"

    def apply_chat_template(self, messages, add_generation_prompt=False):
        assert add_generation_prompt and messages[-1]["role"] == "user"
        return {"input_ids": self.encode("(" + messages[-1]["content"] + ")\n")}


@pytest.mark.parametrize("chat_template,expected", [(True, "(abc)\n"), (False, "abc")])
def test_str_prompts_use_the_chat_template_unless_switched_off(model, chat_template, expected):
    eng = Engine(model, TemplatedTokenizer(), num_pages=64, page_size=4, chat_template=chat_template)
    (root,) = eng.prefill(["abc"])
    assert CharTokenizer().decode(eng.tokens(root).tolist()) == expected
    (ids,) = eng.prefill([CharTokenizer().encode("abc")])  # token ids are taken as they are
    assert CharTokenizer().decode(eng.tokens(ids).tolist()) == "abc"


def test_shared_prefix_decode_matches_per_branch_decode(model, monkeypatch):
    """Decode through the attention plan (each shared segment read once) gives the per-branch
    path's tokens; forced on here, since these short prompts save fewer reads than the engine's
    threshold for using it."""
    from ponder import kv_store

    monkeypatch.setattr(kv_store, "SHARED_PREFIX_MIN_SAVING", 0)
    calls = []  # forwards that got a decode plan: every layer then runs shared_prefix_attention
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: (calls.append(k.get("decode_plan") is not None),
                                                           real(*a, **k))[1])
    out = {}
    for mode in ("shared_prefix", "paged"):
        eng = make_engine(model, decode_attention=mode)
        roots = eng.prefill(PROMPTS)
        first = eng.expand(roots, 3, stop=STOP, seed=4)
        second = eng.expand(first.children[~first.terminal][:4], 2, stop=STOP, seed=4)
        out[mode] = (first, second)
    assert any(calls)  # the shared engine's decode steps ran through a plan
    for a, b in zip(out["shared_prefix"], out["paged"]):
        assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
        # fp32: the log-sum-exp merge of segments vs one softmax differ in summation order only
        torch.testing.assert_close(a.hidden, b.hidden, rtol=1e-4, atol=1e-5)
