"""``with_context``: k retrieved passages per example — the gold passage with probability p, the
rest distractors — so that an adapter learns to answer from context (the hybrid arm)."""

from __future__ import annotations

import json
import random

import numpy as np

from ragtune.config import RagtuneConfig
from ragtune.core.documents import sha256_hex
from ragtune.data.render import ChatRenderer

_CANDIDATES_PER_PASSAGE = 4


class ContextRetriever:
    """A Ray Data actor: embeds the questions of a batch and searches the collection once per batch."""

    def __init__(self, cfg: RagtuneConfig):
        from ragtune.embedding import load_encoder
        from ragtune.store import VectorStore

        self.cfg = cfg
        self.encoder = load_encoder(cfg.embedding)
        self.store = VectorStore(cfg.milvus)
        self.store.check_model(self.encoder.name, self.encoder.dim)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        questions = [str(q) for q in batch["question"]]
        k = self.cfg.prepare.context_k
        hits = self.store.search(self.encoder.encode(questions), questions, self.cfg.search,
                                 k=k * _CANDIDATES_PER_PASSAGE)
        passages = []
        for i, found in enumerate(hits):
            gold_doc, gold_text = str(batch["doc_id"][i]), str(batch["context"][i])
            if not gold_text and gold_doc:
                gold_text = next((h.text for h in found if h.doc_id == gold_doc), "") or self._best_chunk(gold_doc, questions[i])
            distractors = [h.text for h in found if h.doc_id != gold_doc and h.text.strip() != gold_text.strip()]
            passages.append(json.dumps(choose_passages(gold_text, distractors, k, self.cfg.prepare.gold_probability,
                                                       f"{self.cfg.prepare.seed}:{batch['id'][i]}"), ensure_ascii=False))
        return {**batch, "passages": np.asarray(passages, dtype=object)}

    def _best_chunk(self, doc_id: str, question: str) -> str:
        found = self.store.search(self.encoder.encode([question]), [question], self.cfg.search, k=1,
                                  filter=f"doc_id == {json.dumps(doc_id)}")[0]
        return found[0].text if found else ""


class ContextChatRenderer:
    """Retrieval and rendering in one Ray Data actor: two actor pools would each hold a CPU, and on a
    2-CPU node nothing would be left for the tasks that feed them."""

    def __init__(self, cfg: RagtuneConfig, *render_args):
        self.retrieve = ContextRetriever(cfg)
        self.render = ChatRenderer(*render_args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.render(self.retrieve(batch))


def choose_passages(gold: str, distractors: list[str], k: int, gold_probability: float, seed: str) -> list[str]:
    """k passages: the gold one (when there is one) with probability ``gold_probability`` at a random
    position, the others the best-ranked distractors; deterministic in ``seed``."""
    rng = random.Random(int(sha256_hex(seed)[:16], 16))
    with_gold = bool(gold) and rng.random() < gold_probability
    chosen = distractors[: k - 1] if with_gold else distractors[:k]
    if with_gold:
        chosen.insert(rng.randrange(len(chosen) + 1), gold)
    return chosen
