"""ModelConfig.from_hf: the supported Llama-family configs and the refusals."""

from __future__ import annotations

import pytest

from ponder.models import ModelConfig

# A config.json in the transformers 4 layout, shaped like Llama 3.1 8B.
LLAMA31_V4 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072, "hidden_act": "silu",
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192},
}
QWEN2 = {
    "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": 32768,
    "use_sliding_window": False, "max_window_layers": 21, "tie_word_embeddings": True, "hidden_act": "silu",
    "bos_token_id": 151643, "eos_token_id": 151645,
}


def test_llama31_v4_layout():
    cfg = ModelConfig.from_hf(LLAMA31_V4)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (32, 32, 8, 128)
    assert cfg.rope_theta == 500000.0 and cfg.max_position_embeddings == 131072
    assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert cfg.eos_token_id == (128001, 128008, 128009) and cfg.bos_token_id == 128000
    assert not cfg.attention_bias and not cfg.attention_out_bias and not cfg.tie_word_embeddings
    assert cfg.kv_dim == 1024


def test_transformers5_layout_reads_the_same():
    v5 = {k: v for k, v in LLAMA31_V4.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = dict(LLAMA31_V4["rope_scaling"], rope_theta=500000.0)
    assert ModelConfig.from_hf(v5) == ModelConfig.from_hf(LLAMA31_V4)


def test_legacy_type_key_and_default_scaling():
    linear = ModelConfig.from_hf(dict(LLAMA31_V4, rope_scaling={"type": "linear", "factor": 2}))
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    plain = ModelConfig.from_hf(dict(LLAMA31_V4, rope_scaling={"rope_type": "default"}))
    assert plain.rope_scaling is None


def test_qwen2_has_qkv_bias_only_and_ignores_an_unused_window():
    cfg = ModelConfig.from_hf(QWEN2)
    assert cfg.attention_bias and not cfg.attention_out_bias
    assert cfg.tie_word_embeddings and cfg.head_dim == 64
    assert cfg.max_position_embeddings == 32768


def test_llama_attention_bias_covers_the_output_projection():
    cfg = ModelConfig.from_hf(dict(LLAMA31_V4, attention_bias=True))
    assert cfg.attention_bias and cfg.attention_out_bias


def test_mistral_sliding_window_caps_positions():
    mistral = dict(LLAMA31_V4, model_type="mistral", rope_scaling=None, max_position_embeddings=32768,
                   sliding_window=4096)
    assert ModelConfig.from_hf(mistral).max_position_embeddings == 4096
    assert ModelConfig.from_hf(dict(mistral, sliding_window=None)).max_position_embeddings == 32768


def test_pretrained_config_object():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2Config(**{k: v for k, v in QWEN2.items() if k != "model_type"})
    assert ModelConfig.from_hf(hf) == ModelConfig.from_hf(QWEN2)


def test_to_hf_round_trips_through_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig.from_hf(LLAMA31_V4)
    d = cfg.to_hf()
    hf = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    assert ModelConfig.from_hf(hf) == cfg


@pytest.mark.parametrize("change, match", [
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"model_type": "qwen3"}, "model_type='qwen3'"),
    ({"hidden_act": "gelu"}, "hidden_act must be 'silu'"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"num_key_value_heads": 5}, r"num_heads \(32\) must be a multiple of num_kv_heads \(5\)"),
    ({"head_dim": 7}, "head_dim must be even"),
    ({"hidden_size": None}, "missing required key 'hidden_size'"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps must be > 0"),
])
def test_unsupported_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(dict(LLAMA31_V4, **change))


def test_not_a_config():
    with pytest.raises(TypeError, match="hf_config must be a dict or a PretrainedConfig, got list"):
        ModelConfig.from_hf([("model_type", "llama")])


def test_direct_construction_validates():
    with pytest.raises(ValueError, match="vocab_size must be a positive int, got 0"):
        ModelConfig(vocab_size=0, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1,
                    num_kv_heads=1, head_dim=8)


def test_bias_layout_must_exist_in_the_family():
    base = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                head_dim=8)
    with pytest.raises(ValueError, match=r"\(True, False\) is not a llama layout"):
        ModelConfig(**base, attention_bias=True, model_type="llama")
    with pytest.raises(ValueError, match=r"\(False, False\) is not a qwen2 layout"):
        ModelConfig(**base, model_type="qwen2")


def test_capped_mistral_window_does_not_come_back_on_reload():
    transformers = pytest.importorskip("transformers")
    mistral = dict(LLAMA31_V4, model_type="mistral", rope_scaling=None, max_position_embeddings=32768,
                   sliding_window=4096)
    cfg = ModelConfig.from_hf(mistral)
    d = cfg.to_hf()
    hf = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    assert hf.sliding_window is None and ModelConfig.from_hf(hf) == cfg
