"""Training tokens/s: ragtune (Ray Train, 2 workers × 1 thread, DeepSpeed ZeRO-2) against a plain
single-process PyTorch + PEFT loop (2 threads) on the same prepared rows, the same model, the same
global batch and the same number of optimizer steps, in the same run.

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--examples 400]

Both count non-padding tokens and time only the optimizer steps (no evaluation, no checkpoints).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from ragtune.config import load_config
from ragtune.data import ensure_prepared
from ragtune.models import resolve
from ragtune.train import run_train
from ragtune.train.lora import target_modules
from ragtune.train.loop import collate, cosine_with_warmup

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "dev-v1.1.part-a.json"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--examples", type=int, default=400)
args = parser.parse_args()
if not SQUAD.exists():
    sys.exit(f"{SQUAD} not found: this benchmark needs ../shared/data beside the repository")

run_dir = Path(tempfile.mkdtemp(prefix="ragtune-bench-"))  # a same-name run in the same storage would resume
cfg = load_config(Path(__file__).resolve().parents[1] / "jobs/configs/train_cpu.yaml", [
    f"prepare.inputs=[{SQUAD}]", f"prepare.max_examples={args.examples}", "prepare.eval_holdout=200",
    "train.run_name=throughput-bench", f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}",
    f"train.eval_every={args.steps}", "prepare.validation_fraction=0.02",
    f"train.storage_path={run_dir / 'runs'}", f"train.output_dir={run_dir / 'adapter'}"])
data = ensure_prepared(cfg)
t = cfg.train


def baseline() -> dict:
    """One process, 2 threads: the same micro-batches (8 rows) accumulated over the same global batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(t.seed)
    model_info = resolve(cfg.generator.model)
    model = AutoModelForCausalLM.from_pretrained(model_info.path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                                             target_modules=target_modules(t.lora, model_info), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(args.steps, int(t.warmup_ratio * args.steps)))
    rows = pq.read_table(data / "train").to_pydict()
    micro, accumulation = t.micro_batch_size, t.num_workers * t.gradient_accumulation_steps
    tokens, started = 0, time.perf_counter()
    for step in range(args.steps):
        for m in range(accumulation):
            start = ((step * accumulation + m) * micro) % (len(rows["input_ids"]) - micro)
            batch = collate({k: v[start:start + micro] for k, v in rows.items()}, torch.device("cpu"))
            (model(**batch).loss / accumulation).backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 2)}


base = baseline()
report = run_train(cfg).report
ours = {"tokens": report["tokens"], "seconds": report["train_seconds"], "tokens_per_second": report["tokens_per_second"]}
print(json.dumps({"steps": args.steps, "model": report["model"], "baseline_single_process": base,
                  "ragtune_2_workers_zero2": ours,
                  "ratio": round(ours["tokens_per_second"] / base["tokens_per_second"], 3)}, indent=2))
