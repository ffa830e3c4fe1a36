"""The GPU check: ragtune's training step (DeepSpeed + PEFT LoRA, ``ragtune.train.loop.build_engine``)
on one GPU without Ray, on a randomly initialised ~1.1B-parameter Llama-style model (no weights
needed), with the figures BENCHMARKS.md records:

- bf16 LoRA training tokens/s and MFU under ZeRO-2 and ZeRO-3 (world size 1);
- the ZeRO-3 adapter export: the gathered LoRA state dict is not empty, and the adapter saved from it,
  reloaded onto the same base weights, gives the trained engine's logits;
- ``generate`` throughput of the base model with a LoRA adapter (PEFT), batched.

    python benchmarks/gpu_check.py --out results/            # on the GPU machine, under 8 minutes
    python benchmarks/gpu_check.py --tiny --device cpu        # the same code on CPU in seconds (default-tier test)

It needs torch, transformers, peft, deepspeed and ragtune's light dependencies (pydantic, pyyaml,
numpy) — no Ray: benchmarks/gpu_bundle.sh packs what a GPU machine without network lacks.
MFU counts 6·N FLOPs per token (N: all parameters), the usual convention; LoRA skips the frozen
weights' gradients, so the hardware does about 4·N.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # a checkout, installed or not

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}  # dense


def llama_config(tiny: bool, vocab: int = 32000):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    # TinyLlama-1.1B's shape
    return LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096)


def random_model(tiny: bool, device, out: Path) -> Path:
    """A randomly initialised model saved as safetensors (seed 0): what every run loads, the way
    `ragtune train` loads a base model (from_pretrained, partitioned under ZeRO-3)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = out / ("random-llama-tiny" if tiny else "random-llama-1.1b")
    if not (path / "model.safetensors").exists() and not any(path.glob("model-*.safetensors")):
        torch.manual_seed(0)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        AutoModelForCausalLM.from_config(llama_config(tiny), dtype=dtype).save_pretrained(path, safe_serialization=True)
    return path


def host_peak_gib() -> float | None:
    """This process's peak resident memory so far (Linux VmHWM)."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return None


def run_config(model: Path, stage: int, tiny: bool, device, offload_param: bool = False, micro_batch: int | None = None,
               live_parameters: int | None = None):
    from ragtune.config import validate_config

    bf16 = device.type == "cuda"
    live = {"stage3_max_live_parameters": live_parameters, "stage3_max_reuse_distance": live_parameters} \
        if live_parameters is not None else {}
    return validate_config({"generator": {"model": str(model)}, "train": {
        "micro_batch_size": micro_batch or (1 if tiny else 8), "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
        "warmup_ratio": 0, "precision": "bf16" if bf16 else "fp32", "gradient_checkpointing": not tiny,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "deepspeed": {"stage": stage, "offload_param": offload_param, **live},
    }}, "gpu_check")


def init_process_group(device) -> None:
    """World size 1 (or the RANK/WORLD_SIZE a launcher set): what Ray Train does for its workers."""
    import deepspeed

    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)


def random_batch(cfg, config, seq: int, device, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (cfg.train.micro_batch_size, seq), generator=g)
    return {"input_ids": ids.to(device), "labels": ids.clone().to(device),
            "attention_mask": torch.ones_like(ids).to(device)}


def train(model: Path, stage: int, tiny: bool, device, steps: int, warmup: int, seq: int, offload_param: bool = False,
          micro_batch: int | None = None, live_parameters: int | None = None):
    """(engine, its config, the model's config, figures) after ``warmup`` + ``steps`` optimizer steps."""
    import torch

    from ragtune.train.lora import DEFAULT_TARGETS
    from ragtune.train.loop import build_engine, skip_cpu_shm_comm, train_step

    if device.type == "cpu":
        skip_cpu_shm_comm()
    cfg = run_config(model, stage, tiny, device, offload_param, micro_batch, live_parameters)
    config = llama_config(tiny)
    torch.manual_seed(0)  # the same LoRA initialisation in every run
    engine, _ = build_engine(cfg, DEFAULT_TARGETS["llama"], device.type == "cuda", device, warmup + steps)
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters())
    loaded_peak = host_peak_gib()
    losses = []
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
        losses.append(float(train_step(engine, random_batch(cfg, config, seq, device, seed=i)).detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = steps * cfg.train.micro_batch_size * seq
    figures = {"zero_stage": stage, "offload_param": offload_param, "parameters": n_params, "seq_len": seq,
               "micro_batch": cfg.train.micro_batch_size, "steps": steps, "seconds": round(seconds, 3),
               "tokens_per_s": round(tokens / seconds, 1), "loss_first": losses[0], "loss_last": losses[-1],
               "host_peak_gib_after_load": loaded_peak, "host_peak_gib": host_peak_gib()}
    if device.type == "cuda":
        figures["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            figures["mfu"] = round(6 * n_params * tokens / seconds / (peak * 1e12), 4)
    return engine, cfg, config, figures


def export_check(engine, cfg, config, device, out: Path) -> tuple[dict, object]:
    """The ZeRO-3 export as `ragtune train` does it (adapter_state gathers the shards), reloaded onto
    the same random base weights with PEFT: its logits must be the engine's. Returns the figures and
    the reloaded model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ragtune.train.loop import adapter_state

    probe = random_batch(cfg, config, 64, device, seed=10**6)["input_ids"][:1]
    state = adapter_state(engine)
    engine.eval()
    with torch.no_grad():
        trained = engine(input_ids=probe).logits.float()
    adapter_dir = out / "zero3-adapter"
    engine.module.save_pretrained(adapter_dir, state_dict=state, safe_serialization=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(cfg.generator.model, dtype=dtype).to(device)
    reloaded = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=probe).logits.float()
    diff = float((logits - trained).abs().max())
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    return {"tensors": len(state), "empty_tensors": sum(1 for v in state.values() if v.numel() == 0),
            "lora_b_nonzero": bool(lora_b) and max(float(v.abs().max()) for v in lora_b) > 0,
            "max_abs_logit_diff": diff, "logit_scale": float(trained.abs().max()),
            "equal": diff <= (0.05 if device.type == "cuda" else 1e-3) * max(1.0, float(trained.abs().max()))}, reloaded


def generate(model, config, device, batch: int, new_tokens: int) -> dict:
    import torch

    prompts = torch.randint(0, config.vocab_size, (batch, 64), generator=torch.Generator().manual_seed(1)).to(device)
    model.generation_config.pad_token_id = 0
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    model.generate(prompts[:1], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompts, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    produced = (out.shape[1] - prompts.shape[1]) * batch
    return {"batch": batch, "new_tokens": new_tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(produced / seconds, 1), "with_lora_adapter": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")))
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, 2 steps: checks the code, not the GPU")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu (and --tiny) to check the code")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    init_process_group(device)
    steps, warmup, seq = (2, 1, 32) if args.tiny else (10, 3, 2048)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "model": "random Llama " + ("tiny" if args.tiny else "1.1B (TinyLlama shape)")}
    model = random_model(args.tiny, device, args.out)
    for stage in (2, 3):
        engine, cfg, config, figures = train(model, stage, args.tiny, device, steps, warmup, seq)
        results[f"zero{stage}"] = figures
        print(json.dumps({f"zero{stage}": figures}), flush=True)
        if stage == 3:
            results["zero3_export"], reloaded = export_check(engine, cfg, config, device, args.out)
            print(json.dumps({"zero3_export": results["zero3_export"]}), flush=True)
            results["generate"] = generate(reloaded, config, device, batch=2 if args.tiny else 16,
                                           new_tokens=8 if args.tiny else 128)
            print(json.dumps({"generate": results["generate"]}), flush=True)
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    ok = results["zero3_export"]["equal"] and not results["zero3_export"]["empty_tensors"]
    print(f"wrote {args.out / 'gpu_check.json'}; ZeRO-3 export {'reloads equal' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
