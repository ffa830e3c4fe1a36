"""Real-data retrieval quality: SciFact (BEIR) test split against its published nDCG@10.

Published: all-MiniLM-L6-v2 dense 0.6451 (MTEB), BM25 0.665 (BEIR) / 0.679 (Anserini flat).
Takes about 12 minutes on 2 cores (embedding ~10k chunks). Run with `pytest -m slow`.
"""

import pytest

from tests.conftest import SHARED_DATA

SCIFACT = SHARED_DATA / "beir" / "scifact"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.skipif(not SCIFACT.exists(), reason=f"{SCIFACT} not found: the shared data folder is absent"),
]


def test_scifact_dense_reproduces_and_hybrid_beats_both(rt_config):
    from ragtune.eval.retrieval import evaluate_retrieval, load_beir

    dataset = load_beir(SCIFACT)
    assert len(dataset.queries) == 300
    scores = {s.mode: s for s in evaluate_retrieval(rt_config, dataset, ["dense", "bm25", "hybrid"])}
    print({m: (round(s.ndcg_at_10, 4), round(s.recall_at_100, 4), round(s.mrr_at_10, 4)) for m, s in scores.items()})
    assert scores["dense"].ndcg_at_10 >= 0.640
    best_single = max(scores["dense"].ndcg_at_10, scores["bm25"].ndcg_at_10)
    assert scores["hybrid"].ndcg_at_10 >= best_single + 0.02
