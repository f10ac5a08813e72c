"""``ModelConfig``: the decoder hyper-parameters ponder's native runner understands.

Built from a Hugging Face config (a ``config.json`` dict or a ``PretrainedConfig``) of the Llama
family: ``llama`` (SmolLM is one), ``qwen2`` and ``mistral``. Anything the runner would compute
differently from ``transformers`` is refused here, with the offending key and value, instead of
producing wrong logits later.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}

# (q/k/v bias, output-projection bias) layouts each family has in transformers.
_BIASES = {"llama": {(False, False), (True, True)}, "qwen2": {(True, False)}, "mistral": {(False, False)}}

TokenIds = Union[int, Tuple[int, ...], None]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder (names follow ponder, not ``transformers``).

    ``rope_scaling`` is ``None`` for plain RoPE, otherwise a dict with ``rope_type`` ("linear"
    or "llama3") and that type's parameters under the names ``transformers`` uses.
    ``attention_bias`` adds biases to the q/k/v projections (Qwen2, or Llama with
    ``attention_bias=true``); ``attention_out_bias`` to the output projection (Llama only).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[Dict[str, Any]] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: TokenIds = None
    eos_token_id: TokenIds = None
    pad_token_id: TokenIds = None
    model_type: str = "llama"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not 0 < self.rms_norm_eps < math.inf:
            raise ValueError(f"rms_norm_eps must be > 0 and finite, got {self.rms_norm_eps!r}")
        if not 0 < self.rope_theta < math.inf:
            raise ValueError(f"rope_theta must be > 0 and finite, got {self.rope_theta!r}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SwiGLU MLP), got {self.hidden_act!r}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {self.model_type!r}")
        biases = (self.attention_bias, self.attention_out_bias)
        if biases not in _BIASES[self.model_type]:
            raise ValueError(f"(attention_bias, attention_out_bias) = {biases} is not a {self.model_type} layout; "
                             f"expected one of {sorted(_BIASES[self.model_type])}")
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", _check_rope_scaling(dict(self.rope_scaling)))

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, hf_config: Union[Mapping[str, Any], Any]) -> "ModelConfig":
        """Translate a Hugging Face config (dict from ``config.json`` or ``PretrainedConfig``).

        Reads both the ``transformers`` 5 layout (``rope_parameters`` holding ``rope_theta``)
        and the older one (top-level ``rope_theta`` plus ``rope_scaling``). A Mistral-style
        sliding window shorter than ``max_position_embeddings`` caps
        ``max_position_embeddings`` at the window: below it, windowed and full attention are
        the same computation, and ponder has no windowed attention.
        """
        if hasattr(hf_config, "to_dict") and not isinstance(hf_config, Mapping):
            hf_config = hf_config.to_dict()
        if not isinstance(hf_config, Mapping):
            raise TypeError(f"hf_config must be a dict or a PretrainedConfig, got {type(hf_config).__name__}")
        cfg = dict(hf_config)
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported architecture: model_type={model_type!r} "
                f"(architectures={cfg.get('architectures')!r}); supported are {SUPPORTED_MODEL_TYPES}"
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if cfg.get(key) is None:
                raise ValueError(f"hf_config is missing required key {key!r}")
        if cfg.get("mlp_bias"):
            raise ValueError("unsupported option mlp_bias=True: ponder's MLP has no biases")
        num_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
        theta, scaling = _rope_from_hf(cfg)
        max_pos = cfg.get("max_position_embeddings") or 2048
        window = _sliding_window(cfg, model_type)
        if window is not None and window < max_pos:
            logger.warning("sliding_window=%d < max_position_embeddings=%d: capping positions at %d",
                           window, max_pos, window)
            max_pos = window
        if model_type == "qwen2":
            qkv_bias, out_bias = True, False
        else:
            qkv_bias = out_bias = bool(cfg.get("attention_bias", False))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            attention_out_bias=out_bias,
            hidden_act=cfg.get("hidden_act", "silu"),
            bos_token_id=_token_ids(cfg.get("bos_token_id")),
            eos_token_id=_token_ids(cfg.get("eos_token_id")),
            pad_token_id=_token_ids(cfg.get("pad_token_id")),
            model_type=model_type,
        )

    def to_hf(self) -> Dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` loads into the same architecture."""
        rope: Dict[str, Any] = {"rope_type": "default"} if self.rope_scaling is None else dict(self.rope_scaling)
        rope["rope_theta"] = self.rope_theta
        out: Dict[str, Any] = {
            "model_type": self.model_type,
            "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                               "mistral": "MistralForCausalLM"}[self.model_type]],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act,
            "bos_token_id": _plain(self.bos_token_id),
            "eos_token_id": _plain(self.eos_token_id),
            "pad_token_id": _plain(self.pad_token_id),
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.attention_bias
        else:
            # max_position_embeddings is already capped at any window; none must apply on reload
            out["sliding_window"] = None
        return out


def _check_rope_scaling(scaling: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope scaling type {rope_type!r}; supported are {SUPPORTED_ROPE_TYPES}")
    factor = float(scaling.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise ValueError(f"unsupported option partial_rotary_factor={factor}: ponder rotates the whole head")
    if rope_type == "default":
        return None
    out: Dict[str, Any] = {"rope_type": rope_type}
    for key in _ROPE_KEYS[rope_type]:
        if scaling.get(key) is None:
            raise ValueError(f"rope scaling {rope_type!r} needs key {key!r}, got {scaling!r}")
        out[key] = float(scaling[key]) if key != "original_max_position_embeddings" else int(scaling[key])
    return out


def _rope_from_hf(cfg: Mapping[str, Any]) -> Tuple[float, Optional[Dict[str, Any]]]:
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping) and params:
        if not all(isinstance(v, (int, float, str, type(None))) for v in params.values()):
            raise ValueError(f"unsupported per-layer rope_parameters {dict(params)!r}")
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = dict(cfg.get("rope_scaling") or {})
    if "partial_rotary_factor" in cfg and "partial_rotary_factor" not in scaling:
        scaling["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    return float(theta), _check_rope_scaling(scaling)


def _sliding_window(cfg: Mapping[str, Any], model_type: str) -> Optional[int]:
    window = cfg.get("sliding_window")
    if window is None:
        return None
    if model_type == "qwen2":
        layer_types = cfg.get("layer_types") or ()
        if not cfg.get("use_sliding_window", False) and "sliding_attention" not in layer_types:
            return None
    return int(window)


def _token_ids(value: Any) -> TokenIds:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return None if value is None else int(value)


def _plain(value: TokenIds) -> Union[int, list, None]:
    return list(value) if isinstance(value, tuple) else value
