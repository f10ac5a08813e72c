"""ponder's GGUF reader and load_gguf on small files written with the gguf package's writer:
bit-identical to gguf's de-quantisation and to transformers' GGUF loading (the previous
loader), and clear errors for broken files and unsupported quantizations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ponder.models import ModelConfig, load_gguf
from ponder.models import gguf_file
from ponder.models.gguf_file import GGUFFile, dequantize
from ponder.models.weights import hf_to_ponder

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize  # noqa: E402

C, I, H, HK, D, VOCAB, LAYERS = 64, 96, 4, 2, 16, 70, 2


def _raw(x: np.ndarray, kind: str) -> np.ndarray:
    return {"F32": x, "F16": x.astype(np.float16)}.get(kind) if kind in ("F32", "F16") else gguf_quantize(x, Q[kind])


@pytest.mark.parametrize("kind", gguf_file.NATIVE_TYPES)
@pytest.mark.parametrize("shape", [(1, 32), (3, 96), (17, 160)])
def test_dequantize_is_bit_identical_to_gguf(kind, shape):
    rng = np.random.default_rng(len(shape) + shape[0])
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (scale 0)
    x[-1, -1] = -70000.0 if kind == "BF16" else x[-1, -1]  # beyond fp16 range, fine in bf16
    raw = np.ascontiguousarray(_raw(x, kind))
    expected = gguf_dequantize(raw, Q[kind])
    got = dequantize(raw.view(np.uint8).reshape(-1), kind, shape)
    assert got.dtype == np.float32 and got.shape == shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def _write(path, arch="llama", kinds=("Q4_1", "Q8_0", "Q4_0", "Q5_0", "Q5_1", "F16", "BF16", "F32"), name="tiny", tied=True,
           vocab_key=True, extra=None):
    """A tiny Llama / Qwen2 GGUF; the weight matrices cycle through ``kinds``."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(128)
    w.add_block_count(LAYERS)
    w.add_embedding_length(C)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(HK)
    w.add_rope_dimension_count(D)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if vocab_key:
        w.add_vocab_size(VOCAB)
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    cycle = iter(kinds * 100)

    def matrix(tensor_name, rows, cols):
        x = (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)
        kind = next(cycle)
        if kind in ("F32", "F16"):
            w.add_tensor(tensor_name, _raw(x, kind))
        else:
            w.add_tensor(tensor_name, gguf_quantize(x, Q[kind]), raw_dtype=Q[kind])

    def vector(tensor_name, n):
        w.add_tensor(tensor_name, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", VOCAB, C)
    if not tied:
        matrix("output.weight", VOCAB, C)
    vector("output_norm.weight", C)
    for i in range(LAYERS):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", C)
        vector(p + "ffn_norm.weight", C)
        for n, rows in (("attn_q", H * D), ("attn_k", HK * D), ("attn_v", HK * D)):
            matrix(p + n + ".weight", rows, C)
            if arch == "qwen2":
                vector(p + n + ".bias", rows)
        matrix(p + "attn_output.weight", C, H * D)
        matrix(p + "ffn_gate.weight", I, C)
        matrix(p + "ffn_up.weight", I, C)
        matrix(p + "ffn_down.weight", C, I)
    for tensor_name, (data, kind) in (extra or {}).items():
        w.add_tensor(tensor_name, data, raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _previous_loader(path):
    """The loader ponder used before its own reader: transformers parses and de-quantizes."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    hf_config = transformers.AutoConfig.for_model(meta.pop("model_type"), **meta)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(hf_config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    cfg = ModelConfig.from_hf(hf_config)
    return cfg, hf_to_ponder(cfg, tensors.keys(), tensors.__getitem__, torch.float32)


@pytest.mark.parametrize("arch,tied,vocab_key", [("llama", True, True), ("llama", False, False), ("qwen2", True, True)])
def test_load_gguf_equals_transformers_parse(tmp_path, arch, tied, vocab_key):
    pytest.importorskip("transformers")
    path = _write(tmp_path / "m.gguf", arch=arch, tied=tied, vocab_key=vocab_key)
    cfg, expected = _previous_loader(path)
    model = load_gguf(path)
    assert model.config == cfg and model.config.model_type == arch
    assert model.state_dict().keys() == expected.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_llama_file_named_mistral_is_a_mistral_model(tmp_path):
    """llama.cpp writes Mistral as architecture llama; transformers tells them apart by name
    (and then fails to map the tensors), ponder loads it as the same weights."""
    llama = load_gguf(_write(tmp_path / "l.gguf"))
    mistral = load_gguf(_write(tmp_path / "m.gguf", name="Mistral-Tiny"))
    assert mistral.config.model_type == "mistral"
    assert mistral.config == ModelConfig(**dict(llama.config.to_dict(), model_type="mistral"))
    for k, v in llama.state_dict().items():
        assert torch.equal(v, mistral.state_dict()[k]), k


def test_header_fields(tmp_path):
    gf = GGUFFile(_write(tmp_path / "m.gguf"))
    assert gf.version == 3 and gf.field("general.architecture") == "llama"
    assert gf.field("llama.block_count") == LAYERS and gf.field("llama.rope.freq_base") == 50000.0
    assert gf.field("tokenizer.ggml.tokens") == gguf_file.SkippedStrings(VOCAB)
    info = gf.tensors["blk.1.ffn_down.weight"]
    assert info.shape == (C, I) and info.type_name in gguf_file.NATIVE_TYPES


def _expect_error(path, *patterns):
    with pytest.raises(ValueError) as err:
        load_gguf(path)
    for pattern in (str(path),) + patterns:
        assert pattern in str(err.value), (pattern, str(err.value))


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    good = _write(tmp_path / "m.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[: len(good) - 100])
    _expect_error(cut, "truncated GGUF file", "needs bytes")
    cut.write_bytes(good[:600])  # inside the metadata
    _expect_error(cut, "truncated or corrupt GGUF header")
    cut.write_bytes(good[:10])
    _expect_error(cut, "not a GGUF file")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + good[4:])
    _expect_error(bad, "not a GGUF file (magic b'GGML'")
    bad.write_bytes(good[:4] + (7).to_bytes(4, "little") + good[8:])
    _expect_error(bad, "unsupported GGUF version 7")


def test_unsupported_quantization_names_tensor_and_type(tmp_path, monkeypatch):
    k_quant = np.zeros((2, 144), dtype=np.uint8)  # two Q4_K blocks of zeros
    q8_k = np.zeros((2, 292), dtype=np.uint8)  # gguf has no Q8_K de-quantizer either
    path = _write(tmp_path / "m.gguf", extra={"blk.0.extra_k.weight": (k_quant, "Q4_K")})
    gf = GGUFFile(path)
    assert np.array_equal(gf.dequantize("blk.0.extra_k.weight"), np.zeros((2, 256), np.float32))  # via gguf
    monkeypatch.setattr(gguf_file, "_gguf_dequantizer", lambda: None)  # as without the gguf package
    with pytest.raises(ValueError, match=r"tensor 'blk.0.extra_k.weight' has quantization type Q4_K.*pip install gguf"):
        gf.dequantize("blk.0.extra_k.weight")
    monkeypatch.undo()
    gf = GGUFFile(_write(tmp_path / "q8k.gguf", extra={"blk.0.extra_k.weight": (q8_k, "Q8_K")}))
    with pytest.raises(ValueError, match=r"tensor 'blk.0.extra_k.weight' has unsupported quantization type Q8_K"):
        gf.dequantize("blk.0.extra_k.weight")


def test_unknown_tensor_and_architecture(tmp_path):
    path = _write(tmp_path / "m.gguf", extra={"blk.0.mystery.weight": (np.zeros((2, 144), np.uint8), "Q4_K")})
    _expect_error(path, "GGUF tensor 'blk.0.mystery.weight' has no meaning for a Llama-family model")
    path = _write(tmp_path / "g.gguf", arch="gemma")
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'gemma'"):
        load_gguf(path)
