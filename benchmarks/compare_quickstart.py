"""Freshness on the quickstart knowledge base: RAG stays current, fine-tuning goes stale, measured.

1. The Brightwave knowledge base (26 documents) is ingested into milvus-lite.
2. A closed-book adapter is trained on its Q/A pairs with the CPU preset (jobs/configs/train_cpu.yaml,
   20 questions held out by prepare), for 10 epochs at learning rate 1e-3 so that it learns the facts
   as they were (the preset's 2 epochs leave a 135M model stating few facts of either kind).
3. `ragtune compare` asks the held-out questions with base, rag, ft and hybrid, then runs the
   freshness experiment: the 5 questions whose facts the update set changes are asked, the 5 revised
   documents (quickstart/kb_updates) are ingested, and they are asked again.

    .venv/bin/python benchmarks/compare_quickstart.py [KEY=VALUE overrides, e.g. train.epochs=2]

State lives in a fresh temporary RAGTUNE_HOME (the update mutates the collection). Prints the
freshness table, the verdict and the wall time of each stage.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from common import local_milvus, timed

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "platform" / "ragtune" / "quickstart"


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ragtune-bench-fresh-"))
    os.environ["RAGTUNE_HOME"] = str(home)
    from ragtune.config import load_config
    from ragtune.data import output_dir
    from ragtune.eval.compare import run_compare
    from ragtune.ingest import run_ingest
    from ragtune.train import run_train

    stages: dict[str, float] = {}
    with local_milvus() as port:
        common = [f"milvus.local_port={port}", "milvus.collection=quickstart_freshness",
                  f"ingest.sources=[{QUICKSTART / 'kb'}]", f"prepare.inputs=[{QUICKSTART / 'qa.jsonl'}]",
                  "train.epochs=10", "train.learning_rate=1e-3", *sys.argv[1:]]
        train = load_config(REPO / "jobs" / "configs" / "train_cpu.yaml", common)
        timed(stages, "ingest", lambda: run_ingest(train))
        adapter = timed(stages, "train", lambda: run_train(train)).output_dir
        compare = load_config(None, [
            *common, f"compare.questions={output_dir(train) / 'eval.jsonl'}", "compare.sample=null",
            f"compare.adapter={adapter}", f"compare.freshness_documents={QUICKSTART / 'kb_updates'}",
            f"compare.freshness_questions={QUICKSTART / 'updates.jsonl'}", f"compare.output_dir={home / 'report'}"])
        report = timed(stages, "compare", lambda: run_compare(compare))
    summary = json.loads((report / "report.json").read_text())
    print(json.dumps({"report": str(report), "stages_s": stages, "questions": summary["questions"],
                      "freshness": {arm: {k: v for k, v in a.items() if k != "questions"}
                                    for arm, a in summary["freshness"]["arms"].items()},
                      "verdict": summary["verdict"],
                      "command": " ".join([sys.executable, "benchmarks/compare_quickstart.py", *sys.argv[1:]])}, indent=2))


if __name__ == "__main__":
    main()
