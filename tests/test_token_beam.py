"""Token-level beam search against transformers' generate on the same tiny random weights, plus
the KV side: forks instead of prefix copies, one forward per step, every page returned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ponder import ops
from ponder.engine import Engine
from ponder.models import load_hf
from ponder.page_table import KVCacheFull
from ponder.search.token_beam import TokenBeamConfig, TokenBeamOutput, token_beam_search

transformers = pytest.importorskip("transformers")

# A 32-token vocabulary makes the random model put real mass on EOS: some beams end early.
VOCAB = 32
EOS = 3
SECOND_EOS = 7
EOS_LOGIT = 2.5
PAGE_SIZE = 4  # smaller than the prompts, so forks share partial pages and copy-on-write happens
# Prompt lengths 1, 5 and 11: one inside a page, two ending mid-page after full pages.
PROMPTS = [[17], [5, 9, 2, 7, 30], [1, 2, 4, 8, 16, 31, 29, 25, 17, 1, 2]]
MAX_NEW = 10
# Each score sums <= 10 fp32 log-probs whose logits differ from transformers' by <= 1e-5 (the
# measured bound of tests/models/test_model_parity.py), times length**-lp <= 10: < 1e-4 absolute.
SCORE_TOL = dict(rtol=1e-5, atol=1e-4)

FAMILIES = {
    # GQA 4:2, untied head
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    # q/k/v biases, MQA 6:1, tied embeddings
    "qwen2": dict(model_type="qwen2", hidden_size=36, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=1, tie_word_embeddings=True),
}


def _save_tiny(family: str, path, seed: int = 0):
    kw = dict(FAMILIES[family])
    cfg = transformers.AutoConfig.for_model(kw.pop("model_type"), vocab_size=VOCAB, max_position_embeddings=64,
                                            eos_token_id=EOS, bos_token_id=None, pad_token_id=None,
                                            attn_implementation="eager", **kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # std 0.3 instead of 0.02: peaked next-token distributions, so beams diverge and EOS wins sometimes
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.3 * noise)
        # Tilt the output rows of EOS and SECOND_EOS toward the mean final hidden state, which
        # lifts their logits by about EOS_LOGIT: they are among the top few tokens at many steps,
        # so beams end at all lengths and several candidates of a step can end at once.
        sample = torch.randint(0, VOCAB, (8, 12), generator=gen)
        mean = model.model(sample).last_hidden_state.mean(dim=(0, 1))
        model.get_output_embeddings().weight[[EOS, SECOND_EOS]] += EOS_LOGIT * mean / mean.dot(mean)
    model.save_pretrained(str(path))
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(transformers model, ponder model) of one family, through a save_pretrained directory."""
    path = tmp_path_factory.mktemp(request.param)
    hf = _save_tiny(request.param, path)
    return hf, load_hf(path)


def _engine(model, num_pages=256, **kw):
    return Engine(model, num_pages=num_pages, page_size=PAGE_SIZE, **kw)


def hf_generate(hf, prompt, cfg: TokenBeamConfig, eos=None):
    """transformers' result for ``prompt`` alone: (new-token lists best first, scores)."""
    kw = {} if eos is None else dict(eos_token_id=list(eos))
    out = hf.generate(torch.tensor([prompt]), num_beams=cfg.num_beams, do_sample=False,
                      max_new_tokens=cfg.max_new_tokens, length_penalty=cfg.length_penalty,
                      early_stopping=cfg.early_stopping, num_return_sequences=cfg.num_return_sequences,
                      output_scores=True, return_dict_in_generate=True, pad_token_id=EOS, **kw)
    new = out.sequences[:, len(prompt):]
    if cfg.num_beams == 1:  # greedy: no padding in a batch of one; score from the step log-probs
        toks = new[0].tolist()
        logp = sum(float(torch.log_softmax(s[0], -1)[t]) for s, t in zip(out.scores, toks))
        return [toks], np.array([logp / len(toks) ** cfg.length_penalty])
    lengths = (out.beam_indices != -1).sum(dim=1).tolist()  # -1 marks steps after a hypothesis ended
    return [new[j, :lengths[j]].tolist() for j in range(len(lengths))], out.sequences_scores.numpy()


def assert_matches(out: TokenBeamOutput, ref):
    seqs, scores = ref
    assert [s.tolist() for s in out.sequences] == seqs
    assert all(s.dtype == np.int32 for s in out.sequences)
    np.testing.assert_allclose(out.sequence_scores, scores, **SCORE_TOL)


def assert_all_pages_returned(eng):
    st = eng.page_table.stats()
    assert st["used"] == 0 and st["num_seqs"] == 0
    assert st["free"] + st["evictable"] == st["num_pages"]


CASES = [  # num_beams, length_penalty, early_stopping, num_return_sequences
    (1, 1.0, False, 1),
    (1, 0.5, True, 1),
    (1, 2.0, "never", 1),  # beam search with W=1 would go on past the first EOS; greedy stops
    (2, 0.0, True, 2),
    (3, -1.0, False, 2),
    (4, 1.0, False, 3),
    (4, 2.0, "never", 2),
    (4, -0.5, True, 4),
    (4, 0.0, "never", 1),
    (4, 1.0, "never", 4),
]


@pytest.mark.parametrize("W,lp,es,r", CASES)
def test_matches_transformers(pair, W, lp, es, r):
    hf, model = pair
    cfg = TokenBeamConfig(num_beams=W, max_new_tokens=MAX_NEW, length_penalty=lp, early_stopping=es,
                          num_return_sequences=r)
    eng = _engine(model)
    outs = token_beam_search(eng, PROMPTS, cfg)
    assert len(outs) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, outs):
        assert len(out.sequences) == r
        assert_matches(out, hf_generate(hf, prompt, cfg))
        assert (np.diff(out.sequence_scores) <= 0).all()  # best first
    assert_all_pages_returned(eng)


def test_eos_ends_beams_early(pair):
    hf, model = pair
    cfg = TokenBeamConfig(num_beams=4, max_new_tokens=MAX_NEW, early_stopping=True, num_return_sequences=4)
    outs = token_beam_search(_engine(model), PROMPTS, cfg)
    ended = [s for o in outs for s in o.sequences if len(s) < MAX_NEW]
    assert ended and all(s[-1] == EOS for s in ended)
    assert all(EOS not in s[:-1].tolist() for o in outs for s in o.sequences)
    # with early_stopping=True a prompt stops once 4 hypotheses ended, before the last step
    assert min(o.stats.model_calls for o in outs) < MAX_NEW
    for prompt, out in zip(PROMPTS, outs):
        assert_matches(out, hf_generate(hf, prompt, cfg))


@pytest.mark.parametrize("W", [1, 2, 3])
def test_several_eos_tokens(pair, W):
    """Two EOS tokens widen the candidate set to 3 W per step, as in transformers. With both
    likely, often fewer than W of the best 2 W candidates go on; es="never" with lp > 0 keeps
    those prompts searching to the end, so a 2 W candidate set changes the results."""
    hf, model = pair
    eos = (EOS, SECOND_EOS)
    cfg = TokenBeamConfig(num_beams=W, max_new_tokens=14, length_penalty=2.0, early_stopping="never",
                          num_return_sequences=W, eos_token_ids=eos)
    outs = token_beam_search(_engine(model), PROMPTS, cfg)
    for prompt, out in zip(PROMPTS, outs):
        assert_matches(out, hf_generate(hf, prompt, cfg, eos=eos))


def test_prompts_are_independent(pair):
    """A prompt's result does not depend on what else is in the call, nor on its position."""
    _, model = pair
    cfg = TokenBeamConfig(num_beams=3, max_new_tokens=MAX_NEW, num_return_sequences=3)
    together = token_beam_search(_engine(model), PROMPTS[::-1], cfg)[::-1]
    for prompt, out in zip(PROMPTS, together):
        alone = token_beam_search(_engine(model), [prompt], cfg)[0]
        assert [s.tolist() for s in out.sequences] == [s.tolist() for s in alone.sequences]
        # identical rows of identical ops, only the batch around them differs
        np.testing.assert_allclose(out.sequence_scores, alone.sequence_scores, rtol=1e-6, atol=1e-6)


def test_one_forward_per_step_and_stats(pair, monkeypatch):
    _, model = pair
    copies = []
    real_copy = ops.copy_pages
    monkeypatch.setattr(ops, "copy_pages", lambda kv, src, dst, **kw: (copies.append(len(src)),
                                                                       real_copy(kv, src, dst, **kw)))
    eng = _engine(model)
    W = 4
    outs = token_beam_search(eng, PROMPTS, TokenBeamConfig(num_beams=W, max_new_tokens=MAX_NEW))
    # one prefill forward for all prompts, then one forward per step for every live beam of every prompt
    steps = max(o.stats.model_calls for o in outs) - 1
    assert eng.stats.model_calls == 1 + steps
    for o in outs:
        assert o.stats.tokens_decoded == W * (o.stats.model_calls - 1)
    assert eng.stats.tokens_decoded == sum(o.stats.tokens_decoded for o in outs)
    assert sum(copies) > 0  # forks of mid-page sequences copied their last page on write


def test_beams_share_the_prompt_pages(pair):
    _, model = pair
    prompt = list(range(VOCAB)) + list(range(8))  # 40 tokens = 10 full pages
    W, n = 4, 6
    eng = _engine(model)
    out = token_beam_search(eng, [prompt], TokenBeamConfig(num_beams=W, max_new_tokens=n))[0]
    prompt_pages = 10
    # each beam owns at most ceil(n / S) + 1 pages of its own; a prefix copy per beam would need 4 * 10
    assert prompt_pages < out.stats.kv_pages_peak <= prompt_pages + W * (math.ceil(n / PAGE_SIZE) + 1)
    assert eng.stats.pages_peak <= prompt_pages + W * (math.ceil(n / PAGE_SIZE) + 1)
    assert_all_pages_returned(eng)


def test_kv_cache_full_returns_every_page(pair):
    _, model = pair
    prompt = list(range(20))  # 5 pages; 4 beams need at least 4 more pages for their first token
    eng = _engine(model, num_pages=7)
    with pytest.raises(KVCacheFull, match="KV cache full"):
        token_beam_search(eng, [prompt], TokenBeamConfig(num_beams=4, max_new_tokens=MAX_NEW))
    assert_all_pages_returned(eng)
    # the engine is still usable: one beam of 20 + 3 fed tokens fits in 6 pages
    out = token_beam_search(eng, [prompt], TokenBeamConfig(num_beams=1, max_new_tokens=4))[0]
    assert 1 <= len(out.sequences[0]) <= 4
    assert_all_pages_returned(eng)


def test_progress_bar(pair, capsys):
    _, model = pair
    quiet = token_beam_search(_engine(model), PROMPTS, TokenBeamConfig(num_beams=2, max_new_tokens=4))
    assert "token beam search" not in capsys.readouterr().err
    shown = token_beam_search(_engine(model), PROMPTS, TokenBeamConfig(num_beams=2, max_new_tokens=4), progress=True)
    assert "token beam search" in capsys.readouterr().err
    assert [s.tolist() for o in quiet for s in o.sequences] == [s.tolist() for o in shown for s in o.sequences]


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_beams=0), "num_beams must be an int >= 1, got 0"),
    (dict(num_beams=2.0), "num_beams must be an int >= 1, got 2.0"),
    (dict(num_beams=True), "num_beams must be an int >= 1, got True"),
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1, got 0"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number, got nan"),
    (dict(length_penalty=float("inf")), "length_penalty must be a finite number, got inf"),
    (dict(length_penalty="1"), "length_penalty must be a finite number, got '1'"),
    (dict(early_stopping="always"), "early_stopping must be True, False or 'never', got 'always'"),
    (dict(early_stopping=1), "early_stopping must be True, False or 'never', got 1"),
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences must be in \[1, num_beams=2\], got 3"),
    (dict(num_return_sequences=0), "num_return_sequences must be an int >= 1, got 0"),
    (dict(eos_token_ids=(-1,)), "eos_token_ids must hold ints >= 0, got -1"),
    (dict(eos_token_ids=(3, 3)), r"eos_token_ids has duplicates: \(3, 3\)"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenBeamConfig(**kwargs)


def test_bad_config_types():
    with pytest.raises(TypeError, match="eos_token_ids must be a sequence of token ids or None, got int"):
        TokenBeamConfig(eos_token_ids=3)


def test_bad_call_arguments(pair):
    _, model = pair
    eng = _engine(model)
    ok = TokenBeamConfig(num_beams=2, max_new_tokens=4)
    with pytest.raises(TypeError, match="config must be a TokenBeamConfig, got dict"):
        token_beam_search(eng, PROMPTS, dict(num_beams=2))
    with pytest.raises(TypeError, match="engine must be a ponder.Engine, got DecoderLM"):
        token_beam_search(model, PROMPTS, ok)
    with pytest.raises(ValueError, match=r"eos_token_ids \[40\] are outside the vocabulary \[0, 32\)"):
        token_beam_search(eng, PROMPTS, TokenBeamConfig(eos_token_ids=(40,)))
    with pytest.raises(ValueError, match="num_beams=17 with 1 EOS tokens keeps 34 candidates per step, more than "
                                         r"the vocabulary \(32\); use num_beams <= 16"):
        token_beam_search(eng, PROMPTS, TokenBeamConfig(num_beams=17))
    with pytest.raises(ValueError, match=r"prompts\[1\] has 5 tokens and max_new_tokens=60: together more than "
                                         "the model's context of 64"):
        token_beam_search(eng, PROMPTS, TokenBeamConfig(num_beams=2, max_new_tokens=60))
    with pytest.raises(ValueError, match="prompts is empty"):
        token_beam_search(eng, [], ok)
    with pytest.raises(ValueError, match=r"prompts\[0\] has token ids outside \[0, 32\)"):
        token_beam_search(eng, [[1, 99]], ok)
    assert_all_pages_returned(eng)
    # after all of that the engine still searches, with the same result as a fresh one
    again = token_beam_search(eng, PROMPTS, ok)
    fresh = token_beam_search(_engine(model), PROMPTS, ok)
    assert [s.tolist() for o in again for s in o.sequences] == [s.tolist() for o in fresh for s in o.sequences]


@pytest.mark.gpu
def test_cuda_matches_cpu(pair):
    _, model = pair
    cfg = TokenBeamConfig(num_beams=4, max_new_tokens=MAX_NEW, length_penalty=0.5, num_return_sequences=2)
    on_cpu = token_beam_search(_engine(model), PROMPTS, cfg)
    eng = _engine(model.to("cuda"))
    try:
        on_gpu = token_beam_search(eng, PROMPTS, cfg)
    finally:
        model.to("cpu")  # the module-scoped model is shared with the CPU tests
    for a, b in zip(on_cpu, on_gpu):
        assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]
        # fp32 CUDA vs CPU matmuls (TF32 off by default for matmul) differ by summation order only
        np.testing.assert_allclose(a.sequence_scores, b.sequence_scores, **SCORE_TOL)
    assert_all_pages_returned(eng)
