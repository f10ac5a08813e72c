"""Name and layout mapping between Hugging Face Llama-family state dicts and :class:`DecoderLM`.

Hugging Face keeps q/k/v and gate/up as separate matrices; ponder stores them fused (one
matmul each). Both directions check every shape against the config so a checkpoint of the
wrong size fails here with the key named, not deep inside a matmul.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping

import torch

from ponder.models.config import ModelConfig

VALUE_HEAD_KEYS = ("value_head.norm_weight", "value_head.weight", "value_head.bias")
# Buffers some older checkpoints carry; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

Getter = Callable[[str], torch.Tensor]


def _hf_prefix(keys: Iterable[str]) -> str:
    keys = set(keys)
    if "model.embed_tokens.weight" in keys:
        return "model."
    if "embed_tokens.weight" in keys:
        return ""
    raise ValueError("checkpoint has no 'model.embed_tokens.weight' (nor 'embed_tokens.weight'): "
                     "not a Llama-family causal LM state dict")


def _expected_shapes(cfg: ModelConfig, prefix: str) -> Dict[str, tuple]:
    C, I, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    shapes = {f"{prefix}embed_tokens.weight": (cfg.vocab_size, C), f"{prefix}norm.weight": (C,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
    for i in range(cfg.num_layers):
        p = f"{prefix}layers.{i}."
        shapes[p + "input_layernorm.weight"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        for name, rows in (("q", cfg.num_heads * D), ("k", cfg.kv_dim), ("v", cfg.kv_dim)):
            shapes[p + f"self_attn.{name}_proj.weight"] = (rows, C)
            if cfg.attention_bias:
                shapes[p + f"self_attn.{name}_proj.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (C, cfg.num_heads * D)
        if cfg.attention_out_bias:
            shapes[p + "self_attn.o_proj.bias"] = (C,)
        shapes[p + "mlp.gate_proj.weight"] = (I, C)
        shapes[p + "mlp.up_proj.weight"] = (I, C)
        shapes[p + "mlp.down_proj.weight"] = (C, I)
    return shapes


def hf_to_ponder(cfg: ModelConfig, keys: Iterable[str], get: Getter, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> Dict[str, torch.Tensor]:
    """Build a :class:`DecoderLM` state dict from Hugging Face tensor names.

    keys: every tensor name the checkpoint holds; get(name) returns that tensor (read lazily so
    a sharded checkpoint is never held twice in memory). Missing keys, unexpected keys and
    shape mismatches raise ``ValueError`` naming the key. ``value_head.*`` keys, when all
    present, become the value head's weights.
    """
    keys = set(keys)
    prefix = _hf_prefix(keys)
    shapes = _expected_shapes(cfg, prefix)
    has_value_head = any(k.startswith("value_head.") for k in keys)
    if has_value_head:
        C = cfg.hidden_size
        shapes.update(zip(VALUE_HEAD_KEYS, ((C,), (C,), (1,))))
    missing = sorted(k for k in shapes if k not in keys)
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s) for this config, e.g. {missing[:4]}")
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(k for k in keys - shapes.keys() - optional if not k.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} tensor(s) this config does not use, e.g. "
                         f"{unexpected[:4]} (model_type={cfg.model_type!r})")

    def fetch(key: str) -> torch.Tensor:
        t = get(key)
        if tuple(t.shape) != shapes[key]:
            raise ValueError(f"tensor {key!r} has shape {tuple(t.shape)}, expected {shapes[key]} from the config")
        return t.to(device=device, dtype=dtype)

    out = {"embed": fetch(f"{prefix}embed_tokens.weight"), "norm": fetch(f"{prefix}norm.weight")}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = fetch("lm_head.weight")
    for i in range(cfg.num_layers):
        p, q = f"{prefix}layers.{i}.", f"layers.{i}."
        out[q + "attn_norm"] = fetch(p + "input_layernorm.weight")
        out[q + "mlp_norm"] = fetch(p + "post_attention_layernorm.weight")
        out[q + "qkv_weight"] = torch.cat([fetch(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        if cfg.attention_bias:
            out[q + "qkv_bias"] = torch.cat([fetch(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        out[q + "o_weight"] = fetch(p + "self_attn.o_proj.weight")
        if cfg.attention_out_bias:
            out[q + "o_bias"] = fetch(p + "self_attn.o_proj.bias")
        out[q + "gate_up_weight"] = torch.cat([fetch(p + "mlp.gate_proj.weight"), fetch(p + "mlp.up_proj.weight")])
        out[q + "down_weight"] = fetch(p + "mlp.down_proj.weight")
    if has_value_head:
        out.update((k, fetch(k)) for k in VALUE_HEAD_KEYS)
    return out


def ponder_to_hf(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_ponder`: Hugging Face names, separate q/k/v and gate/up.

    Every returned tensor is contiguous and owns its storage (safetensors refuses shared views).
    """
    H, D, I = cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    splits = [H * D, cfg.kv_dim, cfg.kv_dim]
    out = {"model.embed_tokens.weight": state["embed"], "model.norm.weight": state["norm"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = state["lm_head"]
    for i in range(cfg.num_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[p + "input_layernorm.weight"] = state[q + "attn_norm"]
        out[p + "post_attention_layernorm.weight"] = state[q + "mlp_norm"]
        for n, w in zip("qkv", state[q + "qkv_weight"].split(splits)):
            out[p + f"self_attn.{n}_proj.weight"] = w
        if cfg.attention_bias:
            for n, b in zip("qkv", state[q + "qkv_bias"].split(splits)):
                out[p + f"self_attn.{n}_proj.bias"] = b
        out[p + "self_attn.o_proj.weight"] = state[q + "o_weight"]
        if cfg.attention_out_bias:
            out[p + "self_attn.o_proj.bias"] = state[q + "o_bias"]
        gate, up = state[q + "gate_up_weight"].split([I, I])
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        out[p + "mlp.down_proj.weight"] = state[q + "down_weight"]
    for k in VALUE_HEAD_KEYS:
        if k in state:
            out[k] = state[k]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# GGUF (llama.cpp) tensor names -> Hugging Face names, per layer and global.
_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def gguf_to_hf_name(name: str) -> str | None:
    """Hugging Face name of GGUF tensor ``name`` (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``), or ``None`` when it has no Llama-family meaning."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    if stem in _GGUF_GLOBAL:
        return f"{_GGUF_GLOBAL[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_LAYER:
        return f"model.layers.{int(parts[1])}.{_GGUF_LAYER[parts[2]]}.{suffix}"
    return None


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary row order of a Llama q or k projection (weight ``[num_heads * D]``
    or ``[num_heads * D, C]``).

    llama.cpp stores each head's rows as interleaved (even, odd) pairs for its GPT-J style
    rotation; Hugging Face Llama rotates the two halves of the head. Row ``2 * i + j`` of a head
    in the GGUF is row ``j * D / 2 + i`` in Hugging Face order.
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"cannot un-permute {rows} rotary rows over {num_heads} heads: "
                         "rows must be a multiple of 2 * heads")
    half = rows // num_heads // 2
    # [heads, D/2, 2, ...] -> [heads, 2, D/2, ...]
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
