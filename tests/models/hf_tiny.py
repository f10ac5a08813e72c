"""Tiny random-weight ``transformers`` models (the parity oracle) and their saved checkpoints."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

# Odd, non-power-of-two sizes; explicit head_dim != hidden / heads where the family allows it.
CASES = {
    # GQA 6:2, untied, head_dim 10 while hidden / heads = 7
    "llama_gqa_untied": dict(model_type="llama", vocab_size=101, hidden_size=42, intermediate_size=70,
                             num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=10,
                             tie_word_embeddings=False),
    # MHA, tied embeddings, Llama 3.1 rope scaling with a short original context so all three
    # frequency bands (kept, interpolated, slowed) occur at head_dim 12
    "llama_tied_llama3": dict(model_type="llama", vocab_size=97, hidden_size=36, intermediate_size=50,
                              num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3, head_dim=12,
                              tie_word_embeddings=True, rope_theta=5000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    # q/k/v biases, MQA 6:1, untied; saved in several shards
    "qwen2_bias_mqa": dict(model_type="qwen2", vocab_size=89, hidden_size=60, intermediate_size=46,
                           num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=1,
                           tie_word_embeddings=False, shard=True),
    # q/k/v biases, GQA 4:2, tied, linear rope scaling
    "qwen2_bias_tied": dict(model_type="qwen2", vocab_size=83, hidden_size=40, intermediate_size=58,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # Mistral: Llama math without windowing (sliding_window unset)
    "mistral_gqa": dict(model_type="mistral", vocab_size=79, hidden_size=48, intermediate_size=66,
                        num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=6,
                        tie_word_embeddings=False, sliding_window=None),
}


def hf_config(case: str):
    kw = dict(CASES[case])
    kw.pop("shard", None)
    model_type = kw.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, max_position_embeddings=256,
                                             attn_implementation="eager", **kw)


def tiny_hf_model(case: str, seed: int = 0):
    """A fp32 ``*ForCausalLM`` whose every weight is random, biases and norm weights included
    (transformers initialises those to 0 and 1, which would hide a loader that drops them).
    Scales are chosen so logits span a few units, not the near-zero logits of a 0.02 init."""
    model = transformers.AutoModelForCausalLM.from_config(hf_config(case)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)
    return model


def save_tiny(case: str, path, seed: int = 0):
    """Save a tiny model with ``save_pretrained`` (safetensors; sharded for ``shard`` cases)."""
    model = tiny_hf_model(case, seed)
    kwargs = {"max_shard_size": "20KB"} if CASES[case].get("shard") else {}
    model.save_pretrained(str(path), **kwargs)
    return model


def hf_logits(model, tokens) -> torch.Tensor:
    """``[len(tokens), V]`` fp32 logits of ``model`` on one full sequence."""
    with torch.no_grad():
        return model(torch.tensor([list(tokens)])).logits[0].float()
