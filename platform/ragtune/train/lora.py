"""LoRA targets per architecture, checked against the model before any training starts."""

from __future__ import annotations

from ragtune.config import LoraConfig
from ragtune.models import ResolvedModel

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS = {
    **{arch: _LLAMA_LIKE for arch in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                      "olmo2", "granite")},
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


class LoraTargetError(ValueError):
    """The LoRA target modules do not exist in the model; the message lists those that do."""


def linear_module_names(model: ResolvedModel) -> set[str]:
    """Last name components of the model's Linear layers, from its config alone (meta device, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
    names = {name.rsplit(".", 1)[-1] for name, mod in skeleton.named_modules()
             if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"}
    return names - {"lm_head"}


def target_modules(cfg: LoraConfig, model: ResolvedModel) -> list[str]:
    """The configured targets, or the architecture's defaults; each must be a Linear layer of the model.

    Raises:
        LoraTargetError: a target is not in the model, or the architecture has no default.
    """
    from transformers import AutoConfig

    available = linear_module_names(model)
    arch = AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code).model_type
    targets = cfg.target_modules or DEFAULT_TARGETS.get(arch)
    if targets is None:
        raise LoraTargetError(f"no default LoRA targets for model type {arch!r}: set train.lora.target_modules "
                              f"to some of its linear layers: {', '.join(sorted(available))}")
    missing = [t for t in targets if t not in available]
    if missing:
        raise LoraTargetError(f"LoRA target(s) {', '.join(missing)} do not exist in {model.name}; set "
                              f"train.lora.target_modules to some of: {', '.join(sorted(available))}")
    return list(targets)
