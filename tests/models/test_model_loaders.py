"""load_hf / save_hf / load: files, sharding, round trips and the errors for broken checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from hf_tiny import hf_logits, save_tiny, transformers
from paged_batch import PagedSequences
from ponder.models import DecoderLM, ModelConfig, load, load_gguf, load_hf, save_hf

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture()
def checkpoint(tmp_path):
    save_tiny("llama_gqa_untied", tmp_path)
    return tmp_path


def _state(path):
    return safetensors_torch.load_file(str(path / "model.safetensors"))


def _prefill_logits(model, tokens):
    seqs = PagedSequences(num_pages=8, page_size=4)
    kv = model.allocate_kv_cache(8, 4)
    with torch.inference_mode():
        return model.logits(model(kv_cache=kv, **seqs.step([seqs.new()], [tokens])))


def test_sharded_and_single_file_checkpoints_load_identically(tmp_path):
    hf = save_tiny("llama_gqa_untied", tmp_path / "single")
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    shards = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) > 1
    a, b = load_hf(tmp_path / "single"), load_hf(tmp_path / "sharded")
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_fused_layout_keeps_the_hf_tensors(checkpoint):
    model = load_hf(checkpoint)
    state = _state(checkpoint)
    q, k, v = (state[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(model.layers[1].qkv_weight, torch.cat([q, k, v]))
    gate, up = state["model.layers.1.mlp.gate_proj.weight"], state["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(model.layers[1].gate_up_weight, torch.cat([gate, up]))
    assert torch.equal(model.lm_head, state["lm_head.weight"])


def test_bf16_load_and_load_dispatch(checkpoint):
    model = load(checkpoint, dtype=torch.bfloat16)
    assert isinstance(model, DecoderLM) and model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.cos_sin.dtype == torch.float32 and model.cos_sin.device.type == "cpu"


@pytest.mark.parametrize("tie", [False, True])
def test_save_hf_is_loadable_by_transformers_and_by_ponder(tmp_path, tie):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, hidden_size=24, intermediate_size=38, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=tie,
                      attention_bias=True, attention_out_bias=True, model_type="llama")
    model = DecoderLM(cfg, init_std=0.3)
    save_hf(model, tmp_path)
    again = load_hf(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    tokens = [5, 17, 60, 0, 33, 33, 2]
    # fp32 both sides, summation order only (see test_model_parity.FP32_TOL)
    torch.testing.assert_close(_prefill_logits(model, tokens), hf_logits(hf, tokens), atol=1e-4, rtol=1e-5)


def test_missing_files(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="must be a checkpoint directory"):
        load_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        load_hf(tmp_path / "empty")
    (checkpoint / "model.safetensors").rename(checkpoint / "weights.bin")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors or model.safetensors.index.json .*weights.bin"):
        load_hf(checkpoint)


def test_missing_shard(tmp_path):
    save_tiny("qwen2_bias_mqa", tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / victim).unlink()
    with pytest.raises(FileNotFoundError, match=f"shard '{victim}' listed in model.safetensors.index.json is missing"):
        load_hf(tmp_path)


def test_missing_unexpected_and_misshapen_tensors(checkpoint):
    state = _state(checkpoint)
    broken = dict(state)
    del broken["model.layers.2.mlp.up_proj.weight"]
    safetensors_torch.save_file(broken, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\) .*model.layers.2.mlp.up_proj.weight"):
        load_hf(checkpoint)
    safetensors_torch.save_file(dict(state, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(10)}),
                                str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 tensor\(s\) this config does not use, .*q_norm"):
        load_hf(checkpoint)
    safetensors_torch.save_file(state, str(checkpoint / "model.safetensors"))
    cfg = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=72)))
    with pytest.raises(ValueError, match=r"has shape \(70, 42\), expected \(72, 42\) from the config"):
        load_hf(checkpoint)


def test_unsupported_architecture_in_config_json(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(dict(cfg, model_type="gemma")))
    with pytest.raises(ValueError, match="unsupported architecture: model_type='gemma'"):
        load_hf(checkpoint)


def test_bad_dtype(checkpoint):
    with pytest.raises(TypeError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16, got torch.int8"):
        load_hf(checkpoint, dtype=torch.int8)


def test_load_rejects_other_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory or .gguf file"):
        load(tmp_path / "model.bin")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="must be a checkpoint directory or a .gguf file"):
        load(tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        load_gguf(tmp_path / "absent.gguf")


def test_corrupt_files_name_the_file(checkpoint):
    config = checkpoint / "config.json"
    good = config.read_text()
    config.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match=rf"{config}: corrupt or truncated JSON"):
        load_hf(checkpoint)
    config.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{config}: expected a JSON object, got list"):
        load_hf(checkpoint)
    config.write_text(good)
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 64])
    with pytest.raises(ValueError, match=rf"{weights}: corrupt or truncated safetensors file"):
        load_hf(checkpoint)
    weights.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ValueError, match=rf"{weights}: corrupt or truncated safetensors file"):
        load_hf(checkpoint)


def test_corrupt_shard_index_names_the_file(tmp_path):
    save_tiny("qwen2_bias_mqa", tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(index.read_text()[:-20])
    with pytest.raises(ValueError, match=rf"{index}: corrupt or truncated JSON"):
        load_hf(tmp_path)
