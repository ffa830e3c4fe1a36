"""Generation backends, same run: completion tokens/s of ``hf`` (transformers) and ``onnx`` (ONNX
Runtime GenAI) on the bundled SmolLM2-135M-Instruct, one request at a time and 8 concurrent
requests (8 coroutines on one backend, as a serving replica gets them), each without and with a
LoRA adapter of the quickstart's shape (r 16 on every projection; its weights are random: speed does
not depend on what an adapter learned — answer quality is the quickstart comparison's, BENCHMARKS.md).

Greedy, 128 new tokens per answer (the answer's own end ends it earlier), after one warm-up
answer; each figure is the median of ``--repeats`` runs. The last line is the ratio the backend
work is judged by: onnx over hf, one request at a time, with the adapter.

    .venv/bin/python benchmarks/generation_backends.py [--repeats 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["Explain in a few sentences why the sky is blue and why sunsets are red.",
           "Write a short paragraph about how to care for headphones.",
           "Describe what a return policy of an online shop usually says.",
           "Explain what noise cancelling in headphones does and how it works.",
           "Give some advice for a customer whose order arrived damaged.",
           "Describe the steps of setting up a new wireless speaker.",
           "Explain the difference between a warranty and a guarantee.",
           "Write a few sentences on why battery life drops over the years."]


def _adapter(base_path: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path), LoraConfig(
        r=16, lora_alpha=32, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, weight in model.named_parameters():
        if "lora_" in name:
            weight.data *= 0.01  # a small update, like a trained one: the answers stay sentences
    model.save_pretrained(out)
    return out


async def _rate(backend, slot: str | None, concurrent: int, repeats: int) -> dict[str, float]:
    from ragtune.generation import SamplingParams

    params = SamplingParams(max_tokens=128)
    conversations = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(concurrent)]
    await backend.complete(conversations[0], params, slot)  # warm-up
    rates, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        done = await asyncio.gather(*(backend.complete(c, params, slot) for c in conversations))
        tokens = sum(c.completion_tokens for c in done)
        rates.append(tokens / (time.perf_counter() - started))
    return {"tokens_per_s": round(statistics.median(rates), 1), "completion_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ragtune.config import load_config
    from ragtune.generation import make_backend
    from ragtune.models import resolve

    adapter = _adapter(resolve("smollm2-135m-instruct").path, Path(tempfile.mkdtemp()) / "adapter")
    results: dict[str, dict] = {}
    for name in ("hf", "onnx"):
        started = time.perf_counter()
        backend = make_backend(load_config(overrides=[f"generator.backend={name}"]).generator)
        asyncio.run(backend.load_adapter("adapter", adapter))
        results[name] = {"load_and_convert_s": round(time.perf_counter() - started, 1)}
        for label, slot in (("base", None), ("adapter", "adapter")):
            for concurrent in (1, 8):
                results[name][f"{label} x{concurrent}"] = asyncio.run(_rate(backend, slot, concurrent, args.repeats))
                print(name, label, f"x{concurrent}", results[name][f"{label} x{concurrent}"], flush=True)
        backend.close()
        del backend

    summary = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "results": results}
    print("| backend | load (+ convert) s | base x1 | base x8 | adapter x1 | adapter x8 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['load_and_convert_s']} | " + " | ".join(
            str(r[k]["tokens_per_s"]) for k in ("base x1", "base x8", "adapter x1", "adapter x8")) + " |")
    ratio = results["onnx"]["adapter x1"]["tokens_per_s"] / results["hf"]["adapter x1"]["tokens_per_s"]
    summary["fast_over_hf_adapter_x1"] = round(ratio, 2)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    print(f"fast/hf tokens/s ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
