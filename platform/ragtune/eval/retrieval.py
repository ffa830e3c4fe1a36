"""nDCG@10, Recall@100 and MRR@10 of ragtune's retrieval on a BEIR-format dataset."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ragtune.config import RagtuneConfig
from ragtune.core.metrics import dedupe_keep_order, mrr_at_k, ndcg_at_k, recall_at_k
from ragtune.embedding import load_encoder
from ragtune.ingest import run_ingest
from ragtune.store import VectorStore

_QUERY_BATCH = 64


@dataclass(frozen=True)
class BeirDataset:
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class RetrievalScores:
    mode: str
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    search_s: float


def load_beir(root: str | Path, split: str = "test") -> BeirDataset:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``; only judged queries are kept.

    Raises:
        FileNotFoundError: a required file is missing (the message names it).
    """
    root = Path(root)
    for needed in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / needed).exists():
            raise FileNotFoundError(f"{root / needed} is missing: a BEIR dataset has corpus.jsonl, queries.jsonl, qrels/{split}.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / f"{split}.tsv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = {}
    with open(root / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            if q["_id"] in qrels:
                queries[q["_id"]] = q["text"]
    return BeirDataset(root / "corpus.jsonl", queries, qrels)


def evaluate_retrieval(config: RagtuneConfig, dataset: BeirDataset, modes: list[str],
                       ingest: bool = True) -> list[RetrievalScores]:
    """Score each retrieval mode on the dataset's judged queries (ingesting the corpus first:
    an already-ingested, unchanged corpus is skipped by the manifest)."""
    if ingest:
        run_ingest(config.model_copy(update={"ingest": config.ingest.model_copy(update={"sources": [str(dataset.corpus)]})}))
    encoder = load_encoder(config.embedding)
    store = VectorStore(config.milvus)
    store.check_model(encoder.name, encoder.dim)
    ids = list(dataset.queries)
    texts = [dataset.queries[q] for q in ids]
    vectors = encoder.encode(texts)
    results = []
    for mode in modes:
        search_cfg = config.search.model_copy(update={"mode": mode})
        started = time.perf_counter()
        ranked: dict[str, list[str]] = {}
        for start in range(0, len(ids), _QUERY_BATCH):
            part = slice(start, start + _QUERY_BATCH)
            # several chunks may come from one document: fetch extra, keep each document's best
            hits = store.search(vectors[part], texts[part], search_cfg, k=200)
            for qid, qhits in zip(ids[part], hits):
                ranked[qid] = dedupe_keep_order([h.doc_id for h in qhits])[:100]
        elapsed = time.perf_counter() - started
        n = len(ids)
        results.append(RetrievalScores(
            mode=mode, queries=n, search_s=elapsed,
            ndcg_at_10=sum(ndcg_at_k(ranked[q], dataset.qrels[q], 10) for q in ids) / n,
            recall_at_100=sum(recall_at_k(ranked[q], dataset.qrels[q], 100) for q in ids) / n,
            mrr_at_10=sum(mrr_at_k(ranked[q], dataset.qrels[q], 10) for q in ids) / n,
        ))
    store.close()
    return results
