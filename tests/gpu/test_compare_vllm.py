"""GPU tier (`pytest -m gpu`): `ragtune compare` on generator.backend=vllm runs through Ray Data
LLM's vLLM processor, the ft arm's adapter loaded per row; skipped without CUDA or vLLM."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_compare_base_and_ft_through_ray_data_llm(tmp_path, ray_cluster):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.config import load_config
    from ragtune.eval.compare import run_compare
    from ragtune.models import resolve

    base = resolve("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapters" / "tuned")
    questions = tmp_path / "qa.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in
                                 [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4")]))
    cfg = load_config(overrides=[
        "generator.backend=vllm", "generator.vllm.engine_kwargs={max_model_len: 2048, gpu_memory_utilization: 0.3}",
        f"compare.questions={questions}", "compare.arms=[base, ft]", f"compare.adapter={tmp_path / 'adapters' / 'tuned'}",
        "compare.gpus_per_actor=1", f"compare.output_dir={tmp_path / 'report'}"])
    report = json.loads((run_compare(cfg) / "report.json").read_text())
    assert report["backend"] == "vllm" and report["questions"] == 2 and set(report["arms"]) == {"base", "ft"}
    answers = [json.loads(line) for line in (tmp_path / "report" / "answers.jsonl").read_text().splitlines()]
    assert all(a["text"] for a in answers) and any("Paris" in a["text"] for a in answers if a["arm"] == "base")
