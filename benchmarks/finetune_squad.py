"""Acceptance run: fine-tune SmolLM2-135M-Instruct with the CPU preset (2 workers, ZeRO-2) on SQuAD
QA pairs, then closed-book EM / token F1 of base vs adapter on the held-out questions.

    .venv/bin/python benchmarks/finetune_squad.py [--examples 400] [--epochs 2] [--out results.json]

The 200 evaluation questions are carved out by prepare (eval_holdout) from the same articles and
kept out of training by its leakage guard.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from ragtune.config import load_config
from ragtune.core.metrics import exact_match, token_f1
from ragtune.core.prompts import qa_messages
from ragtune.data import output_dir
from ragtune.generation import SamplingParams, make_backend
from ragtune.train import run_train

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "dev-v1.1.part-a.json"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--examples", type=int, default=400, help="train + validation rows")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--eval", type=int, default=200, help="held-out questions")
parser.add_argument("--out", type=Path, default=None)
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
args = parser.parse_args()
if not SQUAD.exists():
    sys.exit(f"{SQUAD} not found: this benchmark needs ../shared/data beside the repository")

cfg = load_config(Path(__file__).resolve().parents[1] / "jobs/configs/train_cpu.yaml", [
    f"prepare.inputs=[{SQUAD}]", f"prepare.max_examples={args.examples}", f"prepare.eval_holdout={args.eval}",
    f"train.epochs={args.epochs}", "train.learning_rate=2e-4",  # the figures' setting (the preset has 1e-3 now)
    "train.run_name=smollm2-squad-lora", *args.set])
started = time.monotonic()
result = run_train(cfg)
heldout = [json.loads(line) for line in open(output_dir(cfg) / "eval.jsonl")]
scores, replies = {}, {}
backend = make_backend(cfg.generator)
asyncio.run(backend.load_adapter("adapter", result.output_dir))
conversations = [qa_messages(q["question"], system=cfg.prepare.system_prompt) for q in heldout]
for arm, slot in (("base", None), ("adapter", "adapter")):
    t0 = time.monotonic()
    answers = replies[arm] = [c.text.strip() for start in range(0, len(conversations), 16) for c in asyncio.run(
        backend.generate(conversations[start:start + 16], SamplingParams(max_tokens=32), slot))]
    scores[arm] = {
        "exact_match": 100 * sum(exact_match(a, q["answers"]) for a, q in zip(answers, heldout)) / len(heldout),
        "token_f1": 100 * sum(token_f1(a, q["answers"]) for a, q in zip(answers, heldout)) / len(heldout),
        "generate_s": round(time.monotonic() - t0, 1),
        "samples": [{"question": q["question"], "gold": q["answers"][0], "answer": a} for q, a in zip(heldout[:5], answers[:5])],
    }
r = result.report
summary = {
    "train_rows": r["dataset"]["rows"], "steps": r["steps"], "first_loss": r["first_loss"], "final_loss": r["final_loss"],
    "validation": r["validation"], "tokens_per_second": r["tokens_per_second"], "train_wall_s": r["wall_seconds"],
    "heldout_questions": len(heldout), "closed_book": scores,
    "answers_that_differ": sum(a != b for a, b in zip(replies["base"], replies["adapter"])),
    "total_s": round(time.monotonic() - started, 1),
}
print(json.dumps(summary, indent=2))
if args.out:
    args.out.write_text(json.dumps(summary, indent=2))
