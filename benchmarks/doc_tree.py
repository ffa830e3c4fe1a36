"""A real documentation tree, end to end: the 373 pages of tests/doctree.py (the SQuAD part A
paragraphs as a Sphinx project: reStructuredText, MyST Markdown, Jupyter notebooks) ingested by
ragtune with the bundled encoder; files rejected (by reason), then hit@4 of the source page for
every SQuAD question of those paragraphs, per search mode and per format of the page.

    .venv/bin/python benchmarks/doc_tree.py [--questions 5696]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from common import local_milvus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/doctree.py writes the tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=None, help="the first N questions (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("RAGTUNE_HOME", tempfile.mkdtemp(prefix="doc-tree-bench-"))
    from ragtune.config import load_config
    from ragtune.embedding import load_encoder
    from ragtune.ingest import run_ingest
    from ragtune.store import VectorStore
    from tests.doctree import write_doc_tree

    root = Path(tempfile.mkdtemp(prefix="doc-tree-"))
    questions = write_doc_tree(root)[:args.questions]
    files = [p for p in root.rglob("*") if p.is_file()]
    with local_milvus() as port:
        config = load_config(overrides=[f"milvus.local_port={port}", "milvus.collection=doc_tree",
                                        f"ingest.sources=[{root}]"])
        started = time.perf_counter()
        summary = run_ingest(config, root.parent / "doc-tree-report")
        ingest_s = time.perf_counter() - started
        rejected = Counter(json.loads(line)["reason"] for line in
                           (root.parent / "doc-tree-report" / "rejected.jsonl").read_text().splitlines() if line)
        encoder, store = load_encoder(config.embedding), VectorStore(config.milvus)
        texts = [q.text for q in questions]
        vectors = encoder.encode(texts)
        result = {"files": len(files), "formats": dict(Counter(p.suffix for p in files)), "documents": summary.documents,
                  "chunks": summary.chunks_written, "rejected": summary.rejected, "rejected_by_reason": dict(rejected),
                  "ingest_s": round(ingest_s, 1), "questions": len(questions), "hit_at_4": {}}
        for mode in ("dense", "bm25", "hybrid"):
            per_format: dict[str, list[bool]] = defaultdict(list)
            search = config.search.model_copy(update={"mode": mode})
            for start in range(0, len(questions), 64):
                part = slice(start, start + 64)
                for q, hits in zip(questions[part], store.search(vectors[part], texts[part], search, k=20)):
                    pages = list(dict.fromkeys(h.doc_id for h in hits))[:4]
                    per_format[Path(q.page).suffix].append(q.page in pages)
            every = [x for xs in per_format.values() for x in xs]
            result["hit_at_4"][mode] = {"all": round(sum(every) / len(every), 4),
                                        **{f: round(sum(xs) / len(xs), 4) for f, xs in sorted(per_format.items())}}
        store.close()
    print(json.dumps(result, indent=2))
    print(f"rejected for their format: {rejected.get('parse_error', 0)}; hit@4 (hybrid): {result['hit_at_4']['hybrid']['all']}")


if __name__ == "__main__":
    main()
