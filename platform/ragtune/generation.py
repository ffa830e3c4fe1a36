"""Chat generation with an optional LoRA adapter — shared by evaluation and serving."""

from __future__ import annotations

from pathlib import Path

from ragtune.models import resolve


class Generator:
    """A causal LM with its chat template; greedy by default, batched with left padding."""

    def __init__(self, model_ref: str, adapter: str | Path | None = None, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ragtune.embedding import pick_device

        self.model_info = resolve(model_ref)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_info.path, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.model_info.path, dtype=dtype,
                                                     trust_remote_code=self.model_info.trust_remote_code)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(self.device).eval()

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 32,
                 batch_size: int = 16) -> list[str]:
        """The assistant's reply to each conversation (greedy decoding)."""
        import torch

        replies: list[str] = []
        for start in range(0, len(conversations), batch_size):
            prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                       for c in conversations[start:start + batch_size]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            replies += [t.strip() for t in self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                         skip_special_tokens=True)]
        return replies
