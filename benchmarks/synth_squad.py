"""`ragtune synth` on SQuAD part A's paragraphs, then the comparison on what it wrote.

1. The 1,048 paragraphs become the knowledge base (one document per paragraph, MiniLM, milvus-lite).
2. `ragtune synth` with the bundled SmolLM2-135M (onnx backend) on ``--chunks`` paragraphs drawn
   with the seed: ``--per-chunk`` answers each, a question written for each, the checks, and the
   split into train / eval_seen (new questions on trained documents) / eval_unseen (documents that
   did not train). Prints generated / kept / dropped by each check and the share of kept answers
   found in their chunk.
3. A closed-book adapter trained on train.jsonl (the CPU preset, jobs/configs/train_cpu.yaml).
4. `ragtune compare` (base, rag, ft, hybrid) on eval_seen.jsonl and on eval_unseen.jsonl: two reports.

    .venv/bin/python benchmarks/synth_squad.py [--chunks 600] [--per-chunk 2]

The state lives in ``--home``; a stage whose output is there is not run again (delete it to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common import local_milvus, timed

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "dev-v1.1.part-a.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=600, help="paragraphs synth writes questions for")
    parser.add_argument("--per-chunk", type=int, default=2, help="answers picked per paragraph")
    parser.add_argument("--home", default=str(REPO / ".cache" / "bench-synth"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args()
    if not SQUAD.exists():
        sys.exit(f"{SQUAD} not found: this benchmark needs ../shared/data beside the repository")
    home = Path(args.home).resolve()
    os.environ["RAGTUNE_HOME"] = str(home)

    from ragtune.config import load_config
    from ragtune.data.synth import STATS_FILE, run_synth
    from ragtune.eval.compare import run_compare
    from ragtune.ingest import run_ingest
    from ragtune.store import VectorStore
    from ragtune.train import run_train

    stages: dict[str, float] = {}
    synthesized = home / "synth"
    adapter = home / "adapters" / "synth-closed-book"
    with local_milvus() as port:
        common = [f"milvus.local_port={port}", "milvus.collection=squad_part_a", f"ingest.sources=[{SQUAD}]",
                  "generator.backend=onnx", f"synth.output_dir={synthesized}", f"synth.max_chunks={args.chunks}",
                  f"synth.questions_per_chunk={args.per_chunk}", "synth.cpus_per_actor=2", *args.set]
        cfg = load_config(REPO / "jobs" / "configs" / "train_cpu.yaml", [
            *common, f"prepare.inputs=[{synthesized / 'train.jsonl'}]", "prepare.eval_holdout=0",
            "train.run_name=synth-closed-book", f"train.output_dir={adapter}"])
        store = VectorStore(cfg.milvus)
        if not store.exists():
            timed(stages, "ingest", lambda: run_ingest(cfg))
        store.close()
        if not (synthesized / STATS_FILE).exists():
            timed(stages, "synth", lambda: run_synth(cfg, progress=print))
        stats = json.loads((synthesized / STATS_FILE).read_text())
        if not (adapter / "training_report.json").exists():
            timed(stages, "train", lambda: run_train(cfg))
        reports = {}
        for split in ("eval_seen", "eval_unseen"):
            out = home / f"report_{split}"
            if not (out / "report.json").exists():
                compare = load_config(None, [*common, f"compare.questions={synthesized / f'{split}.jsonl'}",
                                             "compare.sample=null", f"compare.adapter={adapter}",
                                             f"compare.output_dir={out}", "compare.cpus_per_actor=2"])
                timed(stages, f"compare_{split}", lambda: run_compare(compare))
            reports[split] = json.loads((out / "report.json").read_text())
    print(json.dumps({
        "synth": {k: stats[k] for k in ("chunks", "generated", "kept", "dropped", "kept_answers_in_chunk", "questions",
                                        "documents", "seconds")},
        "stages_s": stages,
        "compare": {split: {"questions": r["questions"],
                            "arms": {arm: {m: [v["mean"], v.get("low"), v.get("high")] for m, v in a["metrics"].items()
                                           if m in ("exact_match", "f1", "semantic", "hit_at_k")}
                                     for arm, a in r["arms"].items()},
                            "recommendation": r["recommendation"]["headline"]}
                    for split, r in reports.items()},
        "reports": [str(home / f"report_{split}") for split in reports],
        "command": f"{sys.executable} benchmarks/synth_squad.py --chunks {args.chunks} --per-chunk {args.per_chunk}"
                   + "".join(f" --set {o}" for o in args.set)}, indent=2))


if __name__ == "__main__":
    main()
