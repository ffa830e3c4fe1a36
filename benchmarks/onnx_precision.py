"""Answer quality of the onnx backend's precisions against transformers (hf), same run, on the
bundled SmolLM2-135M-Instruct: token F1 of greedy answers (32 tokens) to the quickstart's 106
questions in two settings —

- reading: each question with its own document (its first 1,200 characters) and two other
  documents as passages, the rag prompt (how well the model reads);
- closed book with the quickstart adapter (``--adapter``, what ``make demo`` trains; it saw these
  questions): how much of what the adapter learned survives the precision (the adapter is merged
  into the base before conversion).

    .venv/bin/python benchmarks/onnx_precision.py --adapter ~/.ragtune/adapters/smollm2-quickstart-lora
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "platform" / "ragtune" / "quickstart"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--precisions", nargs="+", default=["int8", "int4"])
    args = parser.parse_args()

    from ragtune.config import load_config
    from ragtune.core.metrics import token_f1
    from ragtune.core.prompts import qa_messages
    from ragtune.generation import SamplingParams, make_backend

    docs = {str(p.relative_to(QUICKSTART / "kb")): p.read_text(errors="replace") for p in sorted((QUICKSTART / "kb").rglob("*"))
            if p.is_file()}
    rows = [json.loads(line) for line in (QUICKSTART / "qa.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    reading = [qa_messages(r["question"], [docs[r["doc_id"]][:1200]] + [docs[d][:600] for d in rng.sample(
        [d for d in docs if d != r["doc_id"]], 2)]) for r in rows]
    closed = [qa_messages(r["question"]) for r in rows]

    def f1(backend, conversations, slot=None) -> float:
        answers = []
        for start in range(0, len(conversations), 8):
            answers += asyncio.run(backend.generate(conversations[start:start + 8], SamplingParams(max_tokens=32), slot))
        return round(100 * sum(token_f1(a.text, [r["answer"]]) for a, r in zip(answers, rows)) / len(rows), 1)

    results = {}
    for name, overrides in [("hf", ["generator.backend=hf"]),
                            *((f"onnx {p}", ["generator.backend=onnx", f"generator.onnx.precision={p}"])
                              for p in args.precisions)]:
        backend = make_backend(load_config(overrides=overrides).generator)
        asyncio.run(backend.load_adapter("adapter", args.adapter))
        results[name] = {"reading_f1": f1(backend, reading), "closed_book_adapter_f1": f1(backend, closed, "adapter")}
        print(name, results[name], flush=True)
        backend.close()
    print("| backend | reading F1 (own document + 2 others) | closed book with the adapter F1 |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['reading_f1']} | {r['closed_book_adapter_f1']} |")


if __name__ == "__main__":
    main()
