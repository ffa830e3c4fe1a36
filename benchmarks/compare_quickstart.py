"""Freshness on the quickstart knowledge base: RAG stays current, fine-tuning goes stale, measured.

1. The Brightwave knowledge base (26 documents) is ingested into milvus-lite.
2. A closed-book adapter is trained on its Q/A pairs with the CPU preset (jobs/configs/train_cpu.yaml,
   20 questions held out by prepare) — it learns the facts as they were.
3. `ragtune compare` asks the held-out questions with base, rag, ft and hybrid, then runs the
   freshness experiment: the 5 questions whose facts the update set changes are asked, the 5 revised
   documents (quickstart/kb_updates) are ingested, and they are asked again.

    .venv/bin/python benchmarks/compare_quickstart.py

State lives in a fresh temporary RAGTUNE_HOME (the update mutates the collection). Prints the
freshness table, the verdict and the wall time of each stage.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "platform" / "ragtune" / "quickstart"


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ragtune-bench-fresh-"))
    os.environ["RAGTUNE_HOME"] = str(home)
    from ragtune.config import load_config
    from ragtune.data import output_dir
    from ragtune.eval.compare import run_compare
    from ragtune.ingest import run_ingest
    from ragtune.store.local import ensure_local_server, stop_local_server
    from ragtune.train import run_train

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = [f"milvus.local_port={port}", "milvus.collection=quickstart_freshness",
              f"ingest.sources=[{QUICKSTART / 'kb'}]", f"prepare.inputs=[{QUICKSTART / 'qa.jsonl'}]",
              *sys.argv[1:]]
    train = load_config(REPO / "jobs" / "configs" / "train_cpu.yaml", common)
    stages: dict[str, float] = {}
    ensure_local_server(port)
    try:
        for stage, step in (("ingest", lambda: run_ingest(train)), ("train", lambda: run_train(train))):
            started = time.perf_counter()
            step()
            stages[stage] = round(time.perf_counter() - started, 1)
        compare = load_config(None, [
            *common, f"compare.questions={output_dir(train) / 'eval.jsonl'}", "compare.sample=null",
            f"compare.adapter={train.train.output_dir or home / 'adapters' / train.train.run_name}",
            f"compare.freshness_documents={QUICKSTART / 'kb_updates'}",
            f"compare.freshness_questions={QUICKSTART / 'updates.jsonl'}", f"compare.output_dir={home / 'report'}"])
        started = time.perf_counter()
        report = run_compare(compare)
        stages["compare"] = round(time.perf_counter() - started, 1)
    finally:
        stop_local_server()
    summary = json.loads((report / "report.json").read_text())
    print(json.dumps({"report": str(report), "stages_s": stages, "questions": summary["questions"],
                      "freshness": {arm: {k: v for k, v in a.items() if k != "questions"}
                                    for arm, a in summary["freshness"]["arms"].items()},
                      "verdict": summary["verdict"],
                      "command": f"{sys.executable} benchmarks/compare_quickstart.py"}, indent=2))


if __name__ == "__main__":
    main()
