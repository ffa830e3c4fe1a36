"""Encoder backends on the SciFact corpus: chunks/s and dense nDCG@10 of torch vs onnx, same run.

The corpus is chunked once as ingest chunks it (``ragtune.ingest.pipeline.index_files``: chunks of
at most 254 tokens led by the title). Each backend then encodes every chunk and every test query
with the same batch size and threads, one backend after the other in this process (the export to
ONNX, done once per node, is timed apart). Each query ranks documents by their best chunk, by exact
cosine over all chunks, so the two nDCG@10 figures differ only by the vectors.

    .venv/bin/python benchmarks/encoder_backends.py --beir ../shared/data/beir/scifact
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def chunk_corpus(corpus: str) -> list[dict]:
    from ragtune.config import load_config
    from ragtune.embedding import encoder_info
    from ragtune.ingest.pipeline import index_files
    from ragtune.ingest.sources import expand_sources

    cfg = load_config(overrides=[f"ingest.sources=[{corpus}]"])
    files = [{"uri": f.uri, "rel": f.rel, "size": f.size} for f in expand_sources(cfg.ingest.sources)]
    rows = index_files(files, cfg, encoder_info(cfg.embedding.model).max_tokens, lambda ids: {})
    return [r for r in rows if r["kind"] == "chunk"]


def ndcg10(chunk_docs: np.ndarray, chunk_vectors: np.ndarray, query_vectors: np.ndarray, qids: list[str],
           qrels: dict[str, dict[str, int]]) -> float:
    from ragtune.core.metrics import dedupe_keep_order, ndcg_at_k

    scores = query_vectors @ chunk_vectors.T
    total = 0.0
    for row, qid in zip(scores, qids):
        best = np.argsort(-row)[:200]
        total += ndcg_at_k(dedupe_keep_order(list(chunk_docs[best]))[:10], qrels[qid], 10)
    return total / len(qids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", required=True, help="a BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--variants", nargs="+", default=["torch", "onnx-int8"],
                        choices=["torch", "onnx-fp32", "onnx-int8"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every usable CPU)")
    args = parser.parse_args()
    from ragtune.runtime import usable_cpus

    args.threads = args.threads or usable_cpus()
    os.environ.setdefault("RAGTUNE_HOME", tempfile.mkdtemp(prefix="encoder-bench-"))
    from ragtune.config import EmbeddingConfig
    from ragtune.embedding import load_encoder
    from ragtune.eval.retrieval import load_beir

    dataset = load_beir(args.beir)
    qids = list(dataset.queries)
    chunks = chunk_corpus(str(dataset.corpus))
    texts, docs = [c["text"] for c in chunks], np.array([c["doc_id"] for c in chunks])
    print(f"{len(chunks)} chunks of {len(set(docs))} documents, {len(qids)} queries", flush=True)
    results = []
    for variant in args.variants:
        backend, _, precision = variant.partition("-")
        config = EmbeddingConfig(backend=backend, onnx_precision=precision or None)
        started = time.perf_counter()
        encoder = load_encoder(config, args.threads)
        load_s = time.perf_counter() - started
        encoder.encode(texts[:config.batch_size])  # warm-up
        started = time.perf_counter()
        vectors = encoder.encode(texts)
        encode_s = time.perf_counter() - started
        score = ndcg10(docs, vectors, encoder.encode([dataset.queries[q] for q in qids]), qids, dataset.qrels)
        results.append({"variant": variant, "load_s": round(load_s, 1), "encode_s": round(encode_s, 1),
                        "chunks_per_s": round(len(texts) / encode_s, 1), "ndcg_at_10": round(score, 4)})
        print(json.dumps(results[-1]), flush=True)
        del encoder
    base = results[0]
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
                      "chunks": len(texts), "results": results}))
    for r in results[1:]:
        print(f"{r['variant']}/{base['variant']}: chunks/s ratio {r['chunks_per_s'] / base['chunks_per_s']:.2f}, "
              f"nDCG@10 difference {r['ndcg_at_10'] - base['ndcg_at_10']:+.4f}")


if __name__ == "__main__":
    main()
