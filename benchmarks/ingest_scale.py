"""Ingest at scale: the driver's peak memory and the wall time per 1,000 documents as the corpus
grows (10,000 and 100,000 documents by default).

The encoder is a randomly initialised 1-layer BERT (dim 32) with MiniLM's tokenizer, built here, so
that embedding is not what the figures measure. The corpus is synthetic: BEIR-style corpus.jsonl
shards of 1,000 documents of about 80 words each (seeded). Each size runs ``run_ingest`` in its own
process — the driver, whose peak resident memory (VmHWM) is reported — with its own RAGTUNE_HOME,
milvus-lite server and local Ray cluster. After each ingest, the median time of a search with
write versions (``VectorStore.search``: the first time its documents are hit, and again) and of
the same search without them.

    .venv/bin/python benchmarks/ingest_scale.py [--sizes 10000 100000]
    PYTHONPATH=<other checkout>/platform .venv/bin/python benchmarks/ingest_scale.py   # another commit's code
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from common import free_port

DRIVER = """
import json, sys, time
from pathlib import Path
from ragtune.config import load_config
from ragtune.ingest import run_ingest
started = time.perf_counter()
summary = run_ingest(load_config(overrides=sys.argv[1:]))
wall = time.perf_counter() - started
peak = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
figures = {"documents": summary.documents, "chunks": summary.chunks_written, "rejected": summary.rejected,
           "wall_s": round(wall, 1), "driver_peak_rss_mib": round(peak / 1024)}
# What a read pays for write versions: VectorStore.search (the search, then the versions of the
# documents hit, unless already known whole) vs the same search alone (dense, 20 candidates for
# top 10): 50 queries, each variant in turn, then the same 50 again (the versions now known).
import random
from ragtune.store import VectorStore
from ragtune.store.collection import OUTPUT_FIELDS
cfg = load_config(overrides=sys.argv[1:])
store, rng = VectorStore(cfg.milvus), random.Random(0)
search = cfg.search.model_copy(update={"mode": "dense", "k": 10})
queries = [[[rng.gauss(0, 1) for _ in range(32)]] for _ in range(50)]
timings = {"versioned_search_first_ms": [], "versioned_search_again_ms": [], "plain_search_ms": []}
for name in ("versioned_search_first_ms", "versioned_search_again_ms"):
    for vector in queries:
        t = time.perf_counter(); store.search(vector, [""], search); timings[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        store._request("search", data=vector, anns_field="dense", limit=20, output_fields=OUTPUT_FIELDS,
                       search_params={"metric_type": "COSINE", "params": {"ef": 128}}, consistency_level="Strong")
        timings["plain_search_ms"].append(time.perf_counter() - t)
figures.update({k: round(1000 * sorted(v)[len(v) // 2], 1) for k, v in timings.items()})  # medians
print(json.dumps(figures))
"""
WORDS = [f"{a}{b}" for a in ("lumen", "quartz", "vela", "orbit", "delta", "mosaic", "fjord", "cinder")
         for b in ("", "s", "ing", "ed", "er", "ity", "ous", "ize")]


def tiny_encoder(out: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragtune.models import resolve

    raw = out / "raw"
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm").path)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(raw, safe_serialization=True)
    tokenizer.save_pretrained(raw)
    SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=128), Pooling(32)]).save(str(out / "encoder"))
    return out / "encoder"


def corpus(out: Path, documents: int) -> Path:
    rng = random.Random(documents)
    out.mkdir(parents=True)
    for shard in range(0, documents, 1000):
        with open(out / f"corpus-{shard // 1000:04d}.jsonl", "w") as fh:
            for i in range(shard, min(shard + 1000, documents)):
                text = " ".join(rng.choice(WORDS) for _ in range(80))
                fh.write(json.dumps({"_id": f"doc-{i}", "title": f"Document {i}", "text": text}) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragtune-bench-scale-"))
    encoder = tiny_encoder(work)
    results = []
    for size in args.sizes:
        home = work / f"home-{size}"
        env = {**os.environ, "RAGTUNE_HOME": str(home)}
        overrides = [f"milvus.local_port={free_port()}", "milvus.collection=scale", f"embedding.model={encoder}",
                     "embedding.batch_size=256", f"ingest.sources=[{corpus(work / f'corpus-{size}', size)}]",
                     "validation.max_reject_fraction=0"]
        try:
            done = subprocess.run([sys.executable, "-c", DRIVER, *overrides], env=env, capture_output=True, text=True,
                                  timeout=7200)
        finally:
            subprocess.run([sys.executable, "-c", "from ragtune.store.local import stop_local_server; stop_local_server()"],
                           env=env, capture_output=True)
        if done.returncode:
            raise SystemExit(f"ingest of {size} documents failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures["s_per_1000_documents"] = round(figures["wall_s"] / size * 1000, 2)
        results.append({"size": size, **figures})
        print(json.dumps(results[-1]), file=sys.stderr)
    first, last = results[0], results[-1]
    print(json.dumps({"results": results,
                      "driver_rss_growth": round(last["driver_peak_rss_mib"] / first["driver_peak_rss_mib"], 2),
                      "corpus_growth": last["size"] / first["size"], "cpus": os.cpu_count(), "python": platform.python_version(),
                      "command": f"{sys.executable} benchmarks/ingest_scale.py --sizes {' '.join(map(str, args.sizes))}"},
                     indent=1))


if __name__ == "__main__":
    main()
