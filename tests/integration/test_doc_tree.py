"""A documentation tree of 373 pages — Sphinx reStructuredText, MyST Markdown and Jupyter notebooks,
written from the SQuAD part A paragraphs (tests/doctree.py) — ingests with no file rejected, every
page one document whose sections are chunked apart, and its questions find their page (BM25: the
tiny test encoder's vectors mean nothing; benchmarks/doc_tree.py measures every mode with MiniLM)."""

from __future__ import annotations

from collections import Counter

from ragtune.config import load_config
from ragtune.ingest import run_ingest
from ragtune.store import VectorStore
from tests.doctree import write_doc_tree


def test_a_documentation_tree_ingests_whole_and_its_questions_find_their_pages(rt_config, tmp_path, tiny_encoder,
                                                                               ray_cluster):
    questions = write_doc_tree(tmp_path / "docs")
    files = sorted(p for p in (tmp_path / "docs").rglob("*") if p.is_file())
    assert len(files) == 373 and Counter(p.suffix for p in files) == {".rst": 139, ".md": 118, ".ipynb": 116}
    config = load_config(overrides=[*(f"{k}={v}" for k, v in (("milvus.local_port", rt_config.milvus.local_port),
                                                                ("milvus.collection", rt_config.milvus.collection))),
                                    f"embedding.model={tiny_encoder}", f"ingest.sources=[{tmp_path / 'docs'}]"])
    summary = run_ingest(config, tmp_path / "report")
    assert (summary.documents, summary.rejected) == (373, 0)
    assert summary.chunks_written >= 1048  # a section per paragraph: no chunk spans two of them
    store = VectorStore(config.milvus)
    sample = questions[::10]
    hits = store.search(None, [q.text for q in sample], config.search.model_copy(update={"mode": "bm25"}), k=20)
    found = sum(q.page in list(dict.fromkeys(h.doc_id for h in qhits))[:4] for q, qhits in zip(sample, hits))
    assert found / len(sample) > 0.7, found / len(sample)
    store.close()
