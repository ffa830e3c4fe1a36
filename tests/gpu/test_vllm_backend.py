"""GPU tier (`pytest -m gpu`): generator.backend=vllm, the backend the Generator deployment runs on GPU
nodes, against the hf backend on the same model and prompts. Skipped without CUDA or vLLM (no CPU
build of vLLM exists for this project's CPU machines)."""

import asyncio

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def _adapter(base_path, out):
    """A LoRA adapter with non-zero weights on the attention projections (it changes the answers)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_vllm_backend_answers_streams_and_applies_adapters(tmp_path):
    from ragtune.config import load_config
    from ragtune.generation import Completion, SamplingParams
    from ragtune.models import resolve
    from ragtune.generation import make_backend

    cfg = load_config(overrides=["generator.backend=vllm", "generator.vllm.engine_kwargs={max_model_len: 2048, "
                                 "gpu_memory_utilization: 0.3, enforce_eager: true}"])
    adapter = _adapter(resolve(cfg.generator.model).path, tmp_path / "adapter")
    vllm = make_backend(cfg.generator)
    hf = make_backend(cfg.generator.model_copy(update={"backend": "hf", "vllm": type(cfg.generator.vllm)()}))
    greedy = SamplingParams(max_tokens=24)

    async def run():
        whole = await vllm.complete(QUESTION, greedy, None)
        pieces = [p async for p in vllm.stream(QUESTION, greedy, None)]
        await vllm.load_adapter("tuned#0", adapter)
        tuned = await vllm.complete(QUESTION, greedy, "tuned#0")
        return whole, pieces, tuned

    whole, pieces, tuned = asyncio.run(run())
    assert "Paris" in whole.text and whole.completion_tokens > 0 and whole.prompt_tokens > 10
    assert isinstance(pieces[-1], Completion) and "".join(p for p in pieces if isinstance(p, str)) == whole.text
    assert tuned.text != whole.text
    reference = asyncio.run(hf.complete(QUESTION, greedy, None))
    assert reference.prompt_tokens == whole.prompt_tokens  # same chat template, same tokens
