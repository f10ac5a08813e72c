"""ValueHeadModule math, its place on DecoderLM, and its safetensors round trips."""

from __future__ import annotations

import pytest
import torch

from hf_tiny import save_tiny
from ponder.models import DecoderLM, ModelConfig, ValueHeadModule, load_hf, save_hf, save_value_head

CFG = ModelConfig(vocab_size=31, hidden_size=20, intermediate_size=26, num_layers=1, num_heads=2,
                  num_kv_heads=1, head_dim=10, max_position_embeddings=32, rms_norm_eps=1e-5)


def _trained(head: ValueHeadModule, seed: int = 0) -> ValueHeadModule:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return head


def test_value_is_sigmoid_of_a_projection_of_the_normed_state():
    head = _trained(ValueHeadModule(20, eps=1e-5))
    h = torch.randn(3, 20, generator=torch.Generator().manual_seed(1)) * 5
    hd = h.double()
    normed = hd / torch.sqrt(hd.pow(2).mean(-1, keepdim=True) + 1e-5) * head.norm_weight.double()
    expected = torch.sigmoid(normed @ head.weight.double() + head.bias.double())
    # fp32 against a float64 oracle on 20-wide dot products of O(5) terms: ~1e-6 relative
    torch.testing.assert_close(head(h).double(), expected, rtol=1e-5, atol=1e-6)
    assert head(h).dtype == torch.float32 and head(h).shape == (3,)


def test_fresh_head_is_neutral_and_rows_are_independent():
    model = DecoderLM(CFG, value_head=True)
    h = torch.randn(4, 20)
    assert torch.equal(model.value(h), torch.full((4,), 0.5))
    _trained(model.value_head)
    assert torch.equal(model.value(h)[2:3], model.value(h[2:3]))


def test_bf16_trunk_gives_fp32_values():
    model = DecoderLM(CFG, dtype=torch.bfloat16, value_head=True)
    _trained(model.value_head)
    out = model.value(torch.randn(2, 20).to(torch.bfloat16))
    assert out.dtype == torch.float32 and ((out > 0) & (out < 1)).all()


def test_bad_hidden_and_bad_construction():
    head = ValueHeadModule(20, eps=1e-5)
    with pytest.raises(ValueError, match=r"hidden must have shape \[B, 20\], got \(20,\)"):
        head(torch.zeros(20))
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        ValueHeadModule(0, eps=1e-5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ValueHeadModule(4, eps=0.0)


def test_value_head_round_trips_inside_the_weights_file(tmp_path):
    model = DecoderLM(CFG, value_head=True)
    _trained(model.value_head)
    save_hf(model, tmp_path)
    again = load_hf(tmp_path)
    assert again.value_head is not None
    h = torch.randn(5, 20)
    assert torch.equal(again.value(h), model.value(h))


def test_value_head_file_next_to_a_transformers_checkpoint(tmp_path):
    save_tiny("qwen2_bias_tied", tmp_path)
    plain = load_hf(tmp_path)
    assert plain.value_head is None
    head = _trained(plain.attach_value_head(), seed=3)
    save_value_head(plain, tmp_path)
    assert (tmp_path / "value_head.safetensors").is_file()
    again = load_hf(tmp_path)
    h = torch.randn(2, plain.config.hidden_size)
    assert torch.equal(again.value(h), head(h))


def test_partial_value_head_is_refused(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    save_tiny("llama_gqa_untied", tmp_path)
    safetensors_torch.save_file({"value_head.weight": torch.zeros(42)}, str(tmp_path / "value_head.safetensors"))
    with pytest.raises(ValueError, match=r"missing 2 tensor\(s\) .*value_head.bias"):
        load_hf(tmp_path)


def test_save_value_head_needs_a_head(tmp_path):
    with pytest.raises(ValueError, match="with a value head attached"):
        save_value_head(DecoderLM(CFG), tmp_path)
