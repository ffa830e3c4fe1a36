"""Ingest throughput: ragtune's Ray Data pipeline vs a single-process baseline, same run.

The baseline does the same work without Ray: the same per-file parsing and chunking
(``ragtune.ingest.pipeline.index_files``), the same encoder and batch size in one process,
and pymilvus upserts into a collection of the same schema. Each variant runs in its own
subprocess (peak memory = the summed RSS of its process tree, Ray workers included), against
one shared milvus-lite server. Prints a JSON result and the command that reproduces it.

    .venv/bin/python benchmarks/ingest_throughput.py --corpus ../shared/data/beir/scifact/corpus.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from common import local_milvus

VARIANT_CODE = {
    "ragtune": """
import json, sys, time
from ragtune.config import load_config
from ragtune.ingest import run_ingest
cfg = load_config(overrides=sys.argv[1:])
t = time.perf_counter()
s = run_ingest(cfg)
print(json.dumps({"wall_s": time.perf_counter() - t, "documents": s.documents, "chunks": s.chunks_written}))
""",
    "baseline": """
import json, sys, time
t = time.perf_counter()
import numpy as np
from ragtune.config import load_config
from ragtune.embedding import encoder_info, load_encoder
from ragtune.indexing import chunk_row
from ragtune.ingest.pipeline import index_files
from ragtune.ingest.sources import expand_sources
from ragtune.store import VectorStore
cfg = load_config(overrides=sys.argv[1:])
info = encoder_info(cfg.embedding.model)
store = VectorStore(cfg.milvus)
store.ensure(info.model.name, info.dim, cfg.milvus.bm25_stop_words)
encoder = load_encoder(cfg.embedding)
files = [{"uri": f.uri, "rel": f.rel, "size": f.size} for f in expand_sources(cfg.ingest.sources)]
rows = index_files(files, cfg, info.max_tokens, lambda ids: {})
chunks = [r for r in rows if r["kind"] == "chunk"]
written = 0
for start in range(0, len(chunks), 512):
    part = chunks[start:start + 512]
    vectors = encoder.encode([r["text"] for r in part])
    written += store.upsert([chunk_row(doc_id=r["doc_id"], chunk_index=r["chunk_index"], chunk_count=r["chunk_count"],
        text=r["text"], dense=v.tolist(), title=r["title"], source=r["source"], doc_hash=r["doc_hash"],
        metadata=json.loads(r["metadata"]), model_name=info.model.name, version=1, origin="ingest")
        for r, v in zip(part, vectors)])
store.flush()
print(json.dumps({"wall_s": time.perf_counter() - t, "documents": len({r["doc_id"] for r in chunks}), "chunks": written}))
""",
}


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_variant(name: str, overrides: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", VARIANT_CODE[name], *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(ps))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(process_wall_s=time.perf_counter() - started, peak_rss_mib=round(peak / 2**20))
    result["docs_per_s"] = result["documents"] / result["process_wall_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/beir/scifact/corpus.jsonl")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if not os.path.exists(args.corpus):
        raise SystemExit(f"{args.corpus} not found: run from the project root with ../shared/data beside it")

    home = tempfile.mkdtemp(prefix="ragtune-bench-")
    os.environ["RAGTUNE_HOME"] = home
    with local_milvus() as port:
        common = [f"milvus.local_port={port}", f"embedding.batch_size={args.batch_size}",
                  f"ingest.sources=[{os.path.abspath(args.corpus)}]"]
        results = {name: run_variant(name, [*common, f"milvus.collection=bench_{name}"])
                   for name in ("baseline", "ragtune")}
    ratio = results["ragtune"]["process_wall_s"] / results["baseline"]["process_wall_s"]
    print(json.dumps({
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "corpus": args.corpus, "batch_size": args.batch_size, **results,
        "wall_ratio_ragtune_over_baseline": round(ratio, 3),
        "command": f"{sys.executable} benchmarks/ingest_throughput.py --corpus {args.corpus} --batch-size {args.batch_size}",
    }, indent=2))


if __name__ == "__main__":
    main()
