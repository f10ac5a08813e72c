"""Native Llama-family decoder on ponder's paged KV cache, its value head and its loaders.

``load(path)`` reads a Hugging Face checkpoint directory or a GGUF file into a
:class:`DecoderLM`; ``DecoderLM.forward`` runs a flattened ragged batch against the paged KV
cache and returns final hidden states, from which ``logits`` and ``value`` read only the rows
that need them.
"""

from ponder.models.config import ModelConfig
from ponder.models.llama import DecoderLM
from ponder.models.loaders import (
    find_smollm2_gguf,
    load,
    load_gguf,
    load_hf,
    load_tokenizer,
    save_hf,
    save_value_head,
)
from ponder.models.value_head import ValueHeadModule

__all__ = [
    "DecoderLM",
    "ModelConfig",
    "ValueHeadModule",
    "find_smollm2_gguf",
    "load",
    "load_gguf",
    "load_hf",
    "load_tokenizer",
    "save_hf",
    "save_value_head",
]
