"""transformers' own model for a GGUF file, the reference of the real-weight tests."""

import os

import torch
import transformers


def transformers_model(path: str, names_from):
    """transformers' own model for the GGUF. ``from_pretrained(gguf_file=...)`` needs accelerate,
    which ponder does not depend on; without it, follow the same steps by hand: transformers'
    GGUF utilities parse the metadata into a config and dequantize and rename the tensors.
    ``names_from`` (a ModelConfig) only shapes the meta-device skeleton whose parameter names
    transformers maps GGUF names onto; the reference model's config is transformers' parse."""
    directory, name = os.path.split(path)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, attn_implementation="eager", dtype=torch.float32).eval()
    except ValueError as exc:
        if "accelerate" not in str(exc):
            raise
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    def config_of(d):
        d = dict(d)
        return transformers.AutoConfig.for_model(d.pop("model_type"), **d)

    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config_of(names_from.to_hf()))
    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)
    model = transformers.AutoModelForCausalLM.from_config(config_of(parsed["config"]),
                                                          attn_implementation="eager").eval()
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    model.tie_weights()
    return model
